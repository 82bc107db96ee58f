"""``dualchannel bench chaos``: every chaos scenario, repeated, summed up in one table.

:func:`run_chaos_bench` runs each of :data:`~dualchannel.chaos.SCENARIOS` ``runs`` times
(round robin, so a noisy minute spreads over all scenarios instead of spoiling one) and
returns plain JSON-ready figures; :func:`chaos_markdown` renders them as the table of
``docs/reliability.md``. Percentiles are nearest-rank over every switch of every run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from .recorder import percentile
from .report import Report
from .scenarios import SCENARIOS, Scenario, run_scenario

__all__ = ["chaos_markdown", "run_chaos_bench"]

Progress = Callable[[str], None]


def run_chaos_bench(
    runs: int = 20,
    progress: Progress = print,
    *,
    scenarios: Sequence[str] | None = None,
    rate: float = 20.0,
) -> dict[str, Any]:
    """Run every scenario (or those named) ``runs`` times; return the figures.

    Blocking: starts its own event loop. A run that raises is counted as failed with its
    error, and the bench goes on.
    """
    if runs < 1:
        raise ValueError("runs must be at least 1")
    chosen = [SCENARIOS[name] for name in (scenarios or list(SCENARIOS))]
    reports: dict[str, list[Report]] = {s.name: [] for s in chosen}
    errors: dict[str, list[str]] = {s.name: [] for s in chosen}
    started = time.monotonic()

    async def bench() -> None:
        for index in range(1, runs + 1):
            for scenario in chosen:
                try:
                    report = await run_scenario(scenario, rate=rate)
                except Exception as exc:  # a broken run is a figure too
                    errors[scenario.name].append(f"{type(exc).__name__}: {exc}")
                    progress(f"chaos {scenario.name} run {index}/{runs}: ERROR {exc!r}")
                    continue
                reports[scenario.name].append(report)
                progress(f"chaos {scenario.name} run {index}/{runs}: {_line(report)}")

    anyio.run(bench, backend="asyncio")
    return {
        "runs": runs,
        "rate": rate,
        "seconds": round(time.monotonic() - started, 1),
        "scenarios": {s.name: _summary(s, reports[s.name], errors[s.name], runs) for s in chosen},
    }


def _line(report: Report) -> str:
    detection = ", ".join(f"{d:.0f}" for d in report.detection_ms) or "-"
    recovery = ", ".join(f"{r:.0f}" for r in report.recovery_ms) or "-"
    verdict = "ok" if report.ok else "NOT OK"
    return (
        f"{verdict}: sent {report.sent}, lost {report.lost}, "
        f"duplicates {report.duplicates_delivered}, detection ms {detection}, "
        f"recovery ms {recovery}"
    )


def _stats(values: list[float]) -> dict[str, Any]:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "n": len(values),
        "p50": rounded(percentile(values, 50)),
        "p99": rounded(percentile(values, 99)),
        "max": rounded(max(values, default=None)),
        "samples": [round(v, 1) for v in values],
    }


def _summary(
    scenario: Scenario, reports: list[Report], errors: list[str], runs: int
) -> dict[str, Any]:
    detection = [d for r in reports for d in r.detection_ms]
    recovery = [v for r in reports for v in r.recovery_ms]
    return {
        "title": scenario.title,
        "switch": scenario.switch,
        "runs": runs,
        "completed": len(reports),
        "failed_runs": runs - sum(1 for r in reports if r.ok),
        "messages": sum(r.sent for r in reports),
        "delivered": sum(r.delivered for r in reports),
        "lost": sum(r.lost for r in reports),
        "duplicates_delivered": sum(r.duplicates_delivered for r in reports),
        "out_of_order": sum(r.out_of_order for r in reports),
        "false_switches": sum(r.false_switches for r in reports),
        "audit_disagreements": sum(
            1 for r in reports if r.audit is not None and not r.audit.agrees
        ),
        "detection_ms": _stats(detection),
        "recovery_ms": _stats(recovery),
        "errors": errors,
        "notes": sorted({note for r in reports for note in r.notes}),
    }


def _triple(stats: dict[str, Any]) -> str:
    if not stats["n"]:
        return "-"
    return f"{stats['p50']:.0f} / {stats['p99']:.0f} / {stats['max']:.0f}"


def chaos_markdown(result: dict[str, Any]) -> str:
    """The ``docs/reliability.md`` table (and a key) for :func:`run_chaos_bench`'s result."""
    runs = result["runs"]
    lines = [
        f"## Chaos scenarios, {runs} run{'s' if runs != 1 else ''} each",
        "",
        f"Written by `dualchannel bench chaos` ({runs} run{'s' if runs != 1 else ''} of "
        f"each scenario, {result['rate']:g} messages/s, real livekit-server, relay and "
        "SQLite on loopback). Detection: switch away from the primary minus fault "
        "injection. Recovery: switch back to the primary minus the moment the fault was "
        "cleared. Times in ms as p50 / p99 / max over every switch of every run (nearest "
        "rank: with few runs, p99 is the max).",
        "",
        "| scenario | runs | messages | lost | duplicates delivered | failed runs "
        "| detection ms p50 / p99 / max | recovery ms p50 / p99 / max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["scenarios"].items():
        lines.append(
            f"| `{name}` | {row['runs']} | {row['messages']} | {row['lost']} "
            f"| {row['duplicates_delivered']} | {row['failed_runs']} "
            f"| {_triple(row['detection_ms'])} | {_triple(row['recovery_ms'])} |"
        )
    lines += ["", "Scenarios:", ""]
    for name, row in result["scenarios"].items():
        lines.append(f"- `{name}`: {row['title']}.")
    notes = [(name, note) for name, row in result["scenarios"].items() for note in row["notes"]] + [
        (name, error) for name, row in result["scenarios"].items() for error in row["errors"]
    ]
    if notes:
        lines += ["", "Notes from the runs:", ""]
        lines += [f"- `{name}`: {note}" for name, note in notes]
    return "\n".join(lines) + "\n"
