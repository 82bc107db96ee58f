"""``dualchannel bench``: measure the promises, write ``docs/benchmarks.md`` and raw JSON.

Each suite writes its own section; results accumulate in ``docs/benchmarks.json`` so a run
of one suite keeps the others' last figures, and the Markdown page is rebuilt from it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SUITES = ("buffer",)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run benchmarks and write docs/benchmarks.md",
        description="Measure dualchannel against its targets and write the results.",
    )
    parser.add_argument(
        "suites",
        nargs="*",
        metavar="SUITE",
        help=f"which suites to run (default: all): {', '.join(SUITES)}",
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=10_000_000,
        help="messages per buffer run (default: 10,000,000)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; medians reported")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes for a smoke run (200,000 messages, 1 run)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("docs"),
        help="folder for benchmarks.md and benchmarks.json (default: docs)",
    )
    parser.set_defaults(func=run)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        _progress(f"error: unknown suite {', '.join(unknown)}; choose from {', '.join(SUITES)}")
        return 2
    suites = args.suites or list(SUITES)
    messages, repeats = (200_000, 1) if args.quick else (args.messages, args.repeats)
    out_dir: Path = args.output
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / "benchmarks.json"
    results: dict[str, Any] = {}
    if raw_path.exists():
        try:
            results = json.loads(raw_path.read_text())
        except json.JSONDecodeError:
            results = {}
    ok = True
    if "buffer" in suites:
        from ..bench.buffer import run_buffer_bench

        result = run_buffer_bench(messages=messages, repeats=repeats, progress=_progress)
        result["machine"] = _machine()
        results["buffer"] = result
        ok &= all(case["met"] for case in result["cases"].values())
    raw_path.write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "benchmarks.md").write_text(_markdown(results))
    _progress(f"wrote {out_dir / 'benchmarks.md'} and {raw_path}")
    print(_markdown(results))
    return 0 if ok else 1


def _machine() -> dict[str, Any]:
    import os

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _markdown(results: dict[str, Any]) -> str:
    from ..bench.buffer import buffer_markdown

    parts = [
        "# Benchmarks",
        "",
        "Written by `dualchannel bench` (or `nox -s bench`); raw figures are in "
        "`benchmarks.json` beside this page. Machines here are noisy: figures are medians "
        "of repeated runs, and comparisons are measured side by side in one run.",
        "",
    ]
    if "buffer" in results:
        machine = results["buffer"].get("machine", {})
        parts.append(buffer_markdown(results["buffer"]))
        parts.append(
            f"Measured {machine.get('at', '?')} on {machine.get('cpus', '?')} CPUs, "
            f"Python {machine.get('python', '?')}.\n"
        )
    return "\n".join(parts)
