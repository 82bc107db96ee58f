"""Benchmark: POST-to-SSE delivery latency, from the publisher's send to a subscriber's read.

Subscribers (raw SSE readers in this process) connect to one session first; then single
messages are POSTed open-loop at a fixed rate. Each message carries its send time
(``time.monotonic_ns()`` taken as the body is built, right before the write), and each
subscriber computes ``receipt - send`` on the same clock for every message it reads. The
relay runs in its own process; this process is both publisher and subscribers.

The same code drives Centrifugo (see :mod:`.centrifugo`): a :class:`Target` says how to
publish and how to subscribe.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .http import StreamConnection, build_get, build_post, open_stream
from .ingest import Progress, serve
from .loadgen import cpu_seconds, median_of, open_loop, raise_nofile, run_async, summarize
from .payload import envelope_json, sent_times

__all__ = [
    "Target",
    "delivery_markdown",
    "measure_delivery",
    "relay_target",
    "run_delivery_bench",
]

TARGET_P99_MS = 10.0
SESSION = "deliver"


@dataclass(frozen=True, slots=True)
class Target:
    """How to publish one message and how to open one subscription on a server."""

    name: str
    host: str
    port: int
    publish: Callable[[int, int], bytes]  # (seq, epoch) -> request bytes
    subscribe: Callable[[], bytes]
    batch_publish: Callable[[int, int, int], bytes] | None = None  # (first, count, epoch)


def relay_target(host: str, port: int, session: str = SESSION) -> Target:
    hostport = f"{host}:{port}"

    def publish(seq: int, epoch: int) -> bytes:
        return build_post(
            hostport, "/api/transcription", envelope_json(session, epoch, seq).encode()
        )

    def subscribe() -> bytes:
        return build_get(
            hostport, f"/api/sessions/{session}/events", "Accept: text/event-stream\r\n"
        )

    return Target("relay", host, port, publish, subscribe)


@dataclass(slots=True)
class _Subscriber:
    latencies: list[float] = field(default_factory=list)
    tail: bytes = b""

    def on_body(self, data: bytes) -> None:
        now = time.monotonic_ns()
        data = self.tail + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self.tail = data
            return
        self.tail = data[cut + 1 :]
        for sent in sent_times(data[: cut + 1]):
            self.latencies.append((now - sent) / 1e9)


async def measure_delivery(
    target: Target, *, subscribers: int, rate: float, duration: float
) -> dict[str, Any]:
    """Connect ``subscribers``, POST at ``rate`` for ``duration`` s; latency summary."""
    subs = [_Subscriber() for _ in range(subscribers)]
    streams: list[StreamConnection] = []
    try:
        for start in range(0, subscribers, 50):
            streams += await asyncio.gather(
                *(
                    open_stream(target.host, target.port, target.subscribe(), sub.on_body)
                    for sub in subs[start : start + 50]
                )
            )
        statuses = await asyncio.wait_for(asyncio.gather(*(s.ready for s in streams)), 30.0)
        if any(status != 200 for status in statuses):
            raise RuntimeError(f"{target.name}: subscribe answered {sorted(set(statuses))}")
        await asyncio.sleep(0.5)  # let every stream finish its replay and go live
        epoch = time.time_ns() // 1_000_000
        cpu_before = cpu_seconds()
        load = await open_loop(
            target.host,
            target.port,
            lambda i: (target.publish(i + 1, epoch), 1),
            rate=rate,
            duration=duration,
            max_connections=64,
        )
        expected = load.requests_ok
        deadline = time.monotonic() + 5.0
        # a bounded poll of plain counters that protocol callbacks bump
        while time.monotonic() < deadline and any(  # noqa: ASYNC110
            len(s.latencies) < expected for s in subs
        ):
            await asyncio.sleep(0.05)
        cpu = cpu_seconds() - cpu_before
    finally:
        for stream in streams:
            stream.close()
    latencies = [value for sub in subs for value in sub.latencies]
    received = sum(min(len(s.latencies), expected) for s in subs)
    return {
        "server": target.name,
        "subscribers": subscribers,
        "rate_msg_s": rate,
        "duration_s": duration,
        "posted_ok": expected,
        "post_errors": load.errors,
        "delivered_fraction": round(received / max(1, expected * subscribers), 5),
        "latency": summarize(latencies),
        "post_latency": summarize(load.latencies),
        "generator_cpu_share": round(cpu / max(load.elapsed, 1e-9), 3),
    }


def delivery_markdown(result: dict[str, Any]) -> str:
    lines = [
        "## POST-to-SSE delivery latency",
        "",
        "One session; subscribers connect first, then single-message POSTs go out open-loop "
        "at a fixed rate. Latency is from the moment the POST body was built (its send time "
        "is inside the envelope) to the moment a subscriber read the SSE event, on one "
        f"clock in one process (the relay runs in another). Each case {result['duration_s']:g} "
        f"s, median of {result['repeats']} runs. Target: p99 ≤ {TARGET_P99_MS:g} ms.",
        "",
        "| subscribers | msg/s | events read | p50 ms | p99 ms | max ms | POST p99 ms | "
        "gen. CPU | target met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        m = case["median"]
        lines.append(
            f"| {case['subscribers']} | {case['rate_msg_s']:,.0f} | "
            f"{m['delivered_fraction']:.4f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | "
            f"{m['max_ms']:.1f} | {m['post_p99_ms']:.1f} | {m['generator_cpu_share']:.2f} | "
            f"{'yes' if case['met'] else '**no**'} |"
        )
    lines.append("")
    lines.append(
        "`events read` is the fraction of (messages x subscribers) that arrived; `gen. CPU` "
        "is this process's share of one core (publisher and all subscribers together)."
    )
    return "\n".join(lines) + "\n"


CASES = ((10, 1_000.0), (100, 100.0))


def _median_case(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "delivered_fraction": median_of(runs, "delivered_fraction"),
        "p50_ms": median_of(runs, "latency.p50_ms"),
        "p99_ms": median_of(runs, "latency.p99_ms"),
        "max_ms": median_of(runs, "latency.max_ms"),
        "post_p99_ms": median_of(runs, "post_latency.p99_ms"),
        "generator_cpu_share": median_of(runs, "generator_cpu_share"),
    }


def run_delivery_bench(*, quick: bool, repeats: int, progress: Progress) -> dict[str, Any]:
    raise_nofile(8192)
    duration = 1.0 if quick else 10.0
    repeats = 1 if quick else repeats
    out: dict[str, Any] = {"quick": quick, "repeats": repeats, "duration_s": duration, "cases": []}
    with tempfile.TemporaryDirectory(prefix="dualchannel-bench-") as tmp:
        for subscribers, rate in CASES:
            runs = []
            for attempt in range(repeats):
                progress(
                    f"delivery: run {attempt + 1}/{repeats}: {subscribers} subscribers, "
                    f"{rate:,.0f} msg/s"
                )
                with serve("relay", Path(tmp)) as (host, port, _pid):
                    run = run_async(
                        measure_delivery(
                            relay_target(host, port),
                            subscribers=subscribers,
                            rate=rate,
                            duration=duration,
                        )
                    )
                progress(
                    f"  p50 {run['latency']['p50_ms']:.1f} ms, p99 {run['latency']['p99_ms']:.1f}"
                    f" ms, read {run['delivered_fraction']:.4f}"
                )
                runs.append(run)
            median = _median_case(runs)
            out["cases"].append(
                {
                    "subscribers": subscribers,
                    "rate_msg_s": rate,
                    "runs": runs,
                    "median": median,
                    "met": median["p99_ms"] <= TARGET_P99_MS
                    and median["delivered_fraction"] == 1.0,
                }
            )
    out["target_p99_ms"] = TARGET_P99_MS
    out["met"] = all(case["met"] for case in out["cases"])
    return out
