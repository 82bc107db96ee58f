"""Benchmark: what one ``SequenceBuffer.push`` costs, and that memory stays flat.

Two cases, each over the same number of messages:

- ``in_order``: every message once, on one channel, in order (the healthy primary);
- ``both_channels``: every message twice, once per channel (both channels healthy: the
  second copy is the duplicate the buffer drops).

Envelopes are built in chunks outside the timed region (with ``model_construct``, since
validation is the wire's cost, not the buffer's), so the figure is the buffer alone. The
process's resident memory is sampled after each chunk: flat means nothing is kept per
delivered message.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..envelope import Channel, Envelope, MessageType, Priority
from ..protocol import SequenceBuffer

CHUNK = 100_000
_STAMP = datetime(2026, 12, 4, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class BufferResult:
    case: str
    messages: int
    pushes: int
    us_per_message: float
    us_per_push: float
    rss_start_mib: float
    rss_end_mib: float
    rss_max_mib: float
    target_us_per_message: float

    @property
    def met(self) -> bool:
        return self.us_per_message <= self.target_us_per_message


def _rss_mib() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _chunk(start: int, count: int) -> list[Envelope]:
    make = Envelope.model_construct
    return [
        make(
            type=MessageType.TRANSCRIPT,
            session_id="bench",
            epoch=1,
            seq=seq,
            timestamp=_STAMP,
            priority=Priority.NORMAL,
            data={},
        )
        for seq in range(start, start + count)
    ]


def _run(
    case: str,
    messages: int,
    channels: tuple[Channel, ...],
    target: float,
    progress: Callable[[str], None],
) -> BufferResult:
    buffer = SequenceBuffer()
    push = buffer.push
    elapsed = 0.0
    rss: list[float] = []
    gc.collect()
    rss_start = _rss_mib()
    sent = 0
    next_report = time.monotonic() + 2.0
    while sent < messages:
        count = min(CHUNK, messages - sent)
        envelopes = _chunk(sent + 1, count)
        started = time.perf_counter()
        for envelope in envelopes:
            for channel in channels:
                push(envelope, channel, 0.0)
        elapsed += time.perf_counter() - started
        sent += count
        del envelopes
        rss.append(_rss_mib())
        if time.monotonic() >= next_report:
            progress(f"  {case}: {sent:,}/{messages:,} messages, rss {rss[-1]:.1f} MiB")
            next_report = time.monotonic() + 2.0
    stats = buffer.stats()
    if stats.delivered != messages or stats.held:
        raise RuntimeError(f"buffer delivered {stats.delivered} of {messages}: bench is broken")
    pushes = messages * len(channels)
    return BufferResult(
        case=case,
        messages=messages,
        pushes=pushes,
        us_per_message=elapsed / messages * 1e6,
        us_per_push=elapsed / pushes * 1e6,
        rss_start_mib=rss_start,
        rss_end_mib=rss[-1],
        rss_max_mib=max(rss),
        target_us_per_message=target,
    )


def run_buffer_bench(
    *, messages: int, repeats: int, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Run both cases ``repeats`` times; report the median run of each."""
    cases = [
        ("in_order", (Channel.PRIMARY,), 2.0),
        ("both_channels", (Channel.PRIMARY, Channel.SECONDARY), 5.0),
    ]
    out: dict[str, Any] = {"messages": messages, "repeats": repeats, "cases": {}}
    for case, channels, target in cases:
        runs = []
        for attempt in range(repeats):
            progress(f"buffer/{case}: run {attempt + 1} of {repeats}")
            runs.append(_run(case, messages, channels, target, progress))
        median = statistics.median(r.us_per_message for r in runs)
        chosen = min(runs, key=lambda r: abs(r.us_per_message - median))
        out["cases"][case] = {
            **asdict(chosen),
            "met": chosen.met,
            "runs_us_per_message": [round(r.us_per_message, 3) for r in runs],
        }
    return out


def buffer_markdown(result: dict[str, Any]) -> str:
    lines = [
        "## SequenceBuffer cost per message",
        "",
        f"{result['messages']:,} messages per run, median of {result['repeats']} runs; "
        "memory is the process's resident set sampled every 100,000 messages.",
        "",
        "| case | µs per message | target | met | µs per push | RSS start → end (max) MiB |",
        "|---|---|---|---|---|---|",
    ]
    for case, r in result["cases"].items():
        lines.append(
            f"| {case} | {r['us_per_message']:.2f} | ≤ {r['target_us_per_message']:.0f} | "
            f"{'yes' if r['met'] else '**no**'} | {r['us_per_push']:.2f} | "
            f"{r['rss_start_mib']:.1f} → {r['rss_end_mib']:.1f} ({r['rss_max_mib']:.1f}) |"
        )
    return "\n".join(lines) + "\n"
