"""Benchmark: what an idle SSE subscriber costs the relay in memory.

The relay runs in a child process; this process opens the connections (raising its own
open-files limit first, and the relay inherits the raised limit). The relay's resident
set (``VmRSS`` in ``/proc/<pid>/status``) is read after a warm-up connection has come and
gone (so lazy imports and first-use caches are already paid), then again with every
connection open, streaming and idle for a few heartbeats. Memory per connection is the
difference over the count. Sessions are spread: connection ``i`` watches ``idle-{i % 500}``.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .http import StreamConnection, build_get, open_stream
from .ingest import Progress, serve
from .loadgen import median_of, raise_nofile, run_async

__all__ = ["idle_markdown", "measure_idle", "rss_kib", "run_idle_bench"]

TARGET_KIB = 40.0
SESSIONS = 500


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def relay_subscribe(hostport: str) -> Callable[[int], bytes]:
    def request(index: int) -> bytes:
        return build_get(
            hostport,
            f"/api/sessions/idle-{index % SESSIONS}/events",
            "Accept: text/event-stream\r\n",
        )

    return request


async def _open(host: str, port: int, requests: list[bytes]) -> list[StreamConnection]:
    streams: list[StreamConnection] = []
    for start in range(0, len(requests), 100):
        streams += await asyncio.gather(
            *(open_stream(host, port, r, _discard) for r in requests[start : start + 100])
        )
    await asyncio.wait_for(asyncio.gather(*(s.ready for s in streams)), 60.0)
    return streams


def _discard(_: bytes) -> None:
    pass


async def measure_idle(
    host: str,
    port: int,
    pid: int,
    subscribe: Callable[[int], bytes],
    *,
    connections: int,
    settle: float,
) -> dict[str, Any]:
    warm = await _open(host, port, [subscribe(i) for i in range(10)])
    await asyncio.sleep(0.5)
    for stream in warm:
        stream.close()
    await asyncio.sleep(1.0)
    before = rss_kib(pid)
    streams: list[StreamConnection] = []
    try:
        streams = await _open(host, port, [subscribe(i) for i in range(connections)])
        statuses = {s.ready.result() for s in streams}
        await asyncio.sleep(settle)
        after = rss_kib(pid)
        alive = sum(1 for s in streams if not s.closed)
    finally:
        for stream in streams:
            stream.close()
    return {
        "connections": connections,
        "statuses": sorted(statuses),
        "alive_after_settle": alive,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": round((after - before) / connections, 2),
    }


def run_idle_bench(*, quick: bool, repeats: int, progress: Progress) -> dict[str, Any]:
    connections = 200 if quick else 2_000
    settle = 1.5 if quick else 5.0
    repeats = 1 if quick else repeats
    limit = raise_nofile(connections * 2 + 1_000)
    runs = []
    with tempfile.TemporaryDirectory(prefix="dualchannel-bench-") as tmp:
        for attempt in range(repeats):
            progress(f"idle: run {attempt + 1}/{repeats}: {connections:,} idle SSE connections")
            with serve("relay", Path(tmp)) as (host, port, pid):
                run = run_async(
                    measure_idle(
                        host,
                        port,
                        pid,
                        relay_subscribe(f"{host}:{port}"),
                        connections=connections,
                        settle=settle,
                    )
                )
            progress(f"  {run['kib_per_connection']:.1f} KiB per connection")
            runs.append(run)
    per = median_of(runs, "kib_per_connection")
    return {
        "quick": quick,
        "repeats": repeats,
        "connections": connections,
        "settle_s": settle,
        "nofile_limit": limit,
        "runs": runs,
        "kib_per_connection": per,
        "target_kib": TARGET_KIB,
        "met": per <= TARGET_KIB and all(r["alive_after_settle"] == connections for r in runs),
    }


def idle_markdown(result: dict[str, Any]) -> str:
    lines = [
        "## Idle SSE subscribers: relay memory per connection",
        "",
        f"{result['connections']:,} SSE connections from a separate process, spread over "
        f"{SESSIONS} sessions, left idle for {result['settle_s']:g} s (heartbeats flowing). "
        "Relay `VmRSS` read after a warm-up and again with all connections open; median of "
        f"{result['repeats']} runs. Target ≤ {result['target_kib']:g} KB per connection.",
        "",
        "| run | RSS before MiB | RSS after MiB | alive | KiB per connection |",
        "|---|---|---|---|---|",
    ]
    for i, run in enumerate(result["runs"], 1):
        lines.append(
            f"| {i} | {run['rss_before_kib'] / 1024:.1f} | {run['rss_after_kib'] / 1024:.1f} | "
            f"{run['alive_after_settle']:,} | {run['kib_per_connection']:.1f} |"
        )
    lines += [
        "",
        f"Median: **{result['kib_per_connection']:.1f} KiB** per connection — target "
        f"{'met' if result['met'] else '**not met**'}.",
    ]
    return "\n".join(lines) + "\n"
