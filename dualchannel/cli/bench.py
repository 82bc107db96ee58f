"""``dualchannel bench``: measure the promises, write ``docs/benchmarks.md`` and raw JSON.

Each suite writes its own section; results accumulate in ``docs/benchmarks.json`` so a run
of one suite keeps the others' last figures, and the Markdown page is rebuilt from it.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SUITES = ("buffer", "ingest", "delivery", "idle", "centrifugo", "failover")
#: Suites that run only when named: ``chaos`` takes ~20 minutes and writes reliability.md.
EXPLICIT_SUITES = ("chaos",)

Progress = Callable[[str], None]


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
        help=f"which suites to run (default: all of {', '.join(SUITES)}); "
        "'chaos' runs only when named and writes reliability.md",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=20,
        help="runs of each chaos scenario (default 20; --quick uses 1)",
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
        "--soak",
        type=float,
        default=600.0,
        help="seconds of the failover suite's false-switch run with both channels healthy "
        "(default 600; --quick uses 15)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="run nothing: write benchmarks.md and its plots again from benchmarks.json",
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


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the servers a suite started are stopped too."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def run(args: argparse.Namespace) -> int:
    _exit_on_sigterm()
    known = (*SUITES, *EXPLICIT_SUITES)
    unknown = sorted(set(args.suites) - set(known))
    if unknown:
        _progress(f"error: unknown suite {', '.join(unknown)}; choose from {', '.join(known)}")
        return 2
    if args.suites == ["chaos"]:
        return _run_chaos(args)
    if "chaos" in args.suites:
        _progress("error: run 'chaos' on its own: dualchannel bench chaos")
        return 2
    suites = args.suites or list(SUITES)
    messages, repeats = (200_000, 1) if args.quick else (args.messages, args.repeats)
    out_dir: Path = args.output
    if not args.report:
        out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / "benchmarks.json"
    results: dict[str, Any] = {}
    if raw_path.exists():
        try:
            results = json.loads(raw_path.read_text())
        except json.JSONDecodeError:
            if args.report:
                _progress(f"error: {raw_path} is not valid JSON; run the suites again")
                return 2
            results = {}
    if args.report:
        if not results:
            _progress(f"error: no results in {raw_path}; run 'dualchannel bench' first")
            return 2
        _write_page(results, out_dir)
        return 0 if all(_met(suite, results[suite]) for suite in SUITES if suite in results) else 1
    ok = True
    for suite in SUITES:
        if suite not in suites:
            continue
        _progress(f"== {suite}")
        started = datetime.now(UTC)
        result = _runner(suite)(args, messages, repeats, _progress)
        result["machine"] = _machine()
        result["wall_s"] = round((datetime.now(UTC) - started).total_seconds(), 1)
        results[suite] = result
        ok &= _met(suite, result)
        # write after every suite, so a long run keeps what it measured
        raw_path.write_text(json.dumps(results, indent=2) + "\n")
    raw_path.write_text(json.dumps(results, indent=2) + "\n")
    _write_page(results, out_dir)
    return 0 if ok else 1


def _write_page(results: dict[str, Any], out_dir: Path) -> None:
    """``benchmarks.md`` and, when matplotlib is installed, its plots."""
    from ..bench.plots import plot_available, write_plots

    plots: dict[str, Path] = {}
    if plot_available():
        plots = write_plots(results, out_dir)
    else:
        _progress("plots skipped: matplotlib is missing (pip install 'dualchannel[bench]')")
    page = _markdown(results, {suite: path.name for suite, path in plots.items()})
    (out_dir / "benchmarks.md").write_text(page)
    written = ", ".join(str(path) for path in plots.values())
    _progress(f"wrote {out_dir / 'benchmarks.md'}" + (f" and {written}" if written else ""))
    print(page)


CHAOS_BEGIN = "<!-- chaos:begin"
CHAOS_END = "<!-- chaos:end -->"


def _run_chaos(args: argparse.Namespace) -> int:
    """Repeat every chaos scenario; rewrite the table in reliability.md between its markers."""
    from ..chaos.bench import chaos_markdown, run_chaos_bench

    runs = 1 if args.quick else args.runs
    out_dir: Path = args.output
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run_chaos_bench(runs, _progress)
    result["machine"] = _machine()
    (out_dir / "reliability.json").write_text(json.dumps(result, indent=2) + "\n")
    table = chaos_markdown(result)
    page = out_dir / "reliability.md"
    text = page.read_text() if page.exists() else "# Reliability under faults\n\n"
    begin = f"{CHAOS_BEGIN} (written by `dualchannel bench chaos`; edit outside these markers) -->"
    if CHAOS_BEGIN in text and CHAOS_END in text:
        head = text[: text.index(CHAOS_BEGIN)]
        tail = text[text.index(CHAOS_END) + len(CHAOS_END) :]
    else:
        head, tail = text.rstrip() + "\n\n", "\n"
    page.write_text(f"{head}{begin}\n{table.rstrip()}\n\n{CHAOS_END}{tail}")
    _progress(f"wrote {page} and {out_dir / 'reliability.json'}")
    print(table)
    failed = sum(s["failed_runs"] for s in result["scenarios"].values())
    return 0 if failed == 0 else 1


def _machine() -> dict[str, Any]:
    import os

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _runner(suite: str) -> Callable[[argparse.Namespace, int, int, Progress], dict[str, Any]]:
    def buffer(a: argparse.Namespace, messages: int, repeats: int, p: Progress) -> dict[str, Any]:
        from ..bench.buffer import run_buffer_bench

        return run_buffer_bench(messages=messages, repeats=repeats, progress=p)

    def ingest(a: argparse.Namespace, messages: int, repeats: int, p: Progress) -> dict[str, Any]:
        from ..bench.ingest import run_ingest_bench

        return run_ingest_bench(quick=a.quick, repeats=repeats, progress=p)

    def delivery(a: argparse.Namespace, messages: int, repeats: int, p: Progress) -> dict[str, Any]:
        from ..bench.delivery import run_delivery_bench

        return run_delivery_bench(quick=a.quick, repeats=repeats, progress=p)

    def idle(a: argparse.Namespace, messages: int, repeats: int, p: Progress) -> dict[str, Any]:
        from ..bench.idle import run_idle_bench

        return run_idle_bench(quick=a.quick, repeats=repeats, progress=p)

    def centrifugo(
        a: argparse.Namespace, messages: int, repeats: int, p: Progress
    ) -> dict[str, Any]:
        from ..bench.centrifugo import run_centrifugo_bench

        return run_centrifugo_bench(quick=a.quick, repeats=repeats, progress=p)

    def failover(a: argparse.Namespace, messages: int, repeats: int, p: Progress) -> dict[str, Any]:
        from ..bench.failover import run_failover_bench

        soak = 15.0 if a.quick else a.soak
        return run_failover_bench(quick=a.quick, soak=soak, progress=p)

    runners = {
        "buffer": buffer,
        "ingest": ingest,
        "delivery": delivery,
        "idle": idle,
        "centrifugo": centrifugo,
        "failover": failover,
    }
    return runners[suite]


def _met(suite: str, result: dict[str, Any]) -> bool:
    if suite == "buffer":
        return all(case["met"] for case in result["cases"].values())
    met = result.get("met")
    if isinstance(met, dict):
        return all(met.values())
    return met is not False


def _section(suite: str, result: dict[str, Any]) -> str:
    from ..bench import buffer, centrifugo, delivery, failover, idle, ingest

    render: dict[str, Callable[[dict[str, Any]], str]] = {
        "buffer": buffer.buffer_markdown,
        "ingest": ingest.ingest_markdown,
        "delivery": delivery.delivery_markdown,
        "idle": idle.idle_markdown,
        "centrifugo": centrifugo.centrifugo_markdown,
        "failover": failover.failover_markdown,
    }
    return render[suite](result)


def _markdown(results: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    parts = [
        "# Benchmarks",
        "",
        "Written by `dualchannel bench` (or `nox -s bench`); raw figures are in "
        "`benchmarks.json` beside this page. Machines here are noisy: figures are medians "
        "of repeated runs, and comparisons are measured side by side in one run.",
        "",
    ]
    for suite in SUITES:
        if suite not in results:
            continue
        result = results[suite]
        machine = result.get("machine", {})
        parts.append(_section(suite, result))
        if plots and suite in plots:
            parts.append(f"![{suite} plot]({plots[suite]})\n")
        mode = (
            " (quick smoke run: small sizes, not figures to quote)" if result.get("quick") else ""
        )
        parts.append(
            f"Measured {machine.get('at', '?')} on {machine.get('cpus', '?')} CPUs, "
            f"Python {machine.get('python', '?')}, in {result.get('wall_s', '?')} s{mode}.\n"
        )
    return "\n".join(parts)
