"""Open-loop load generation over keep-alive HTTP/1.1 connections, and latency summaries.

Open loop: request ``i`` is *due* at ``start + i / rate`` whatever happened to earlier
requests. A due request goes out on an idle connection, or on a new one while fewer than
``max_connections`` are open, or else waits in a backlog until a connection frees up.
Latency is measured from the moment the request was due, not from when it was written,
so a server that falls behind is charged for the queueing it causes (no coordinated
omission); the time from the write to the answer is kept too, as ``service``.

The generator records its own CPU time (``getrusage``) over each run: a generator that
used close to a whole core was possibly the bottleneck, and the run says so.
"""

from __future__ import annotations

import asyncio
import collections
import math
import resource
import statistics
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .http import HttpConnection, HttpError, open_connection

__all__ = [
    "LoadResult",
    "cpu_seconds",
    "median_of",
    "open_loop",
    "percentile",
    "raise_nofile",
    "run_async",
    "summarize",
]

T = TypeVar("T")

#: Makes request ``i``'s bytes (called right before it is written) and says how many
#: messages it carries.
RequestFactory = Callable[[int], tuple[bytes, int]]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; ``nan`` for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def summarize(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds."""
    return {
        "p50_ms": round(percentile(latencies_s, 50) * 1e3, 3),
        "p90_ms": round(percentile(latencies_s, 90) * 1e3, 3),
        "p99_ms": round(percentile(latencies_s, 99) * 1e3, 3),
        "max_ms": round(max(latencies_s) * 1e3, 3) if latencies_s else math.nan,
    }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(slots=True)
class LoadResult:
    offered_rate: float
    duration: float
    requests: int = 0
    messages_ok: int = 0
    requests_ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    generator_cpu: float = 0.0
    connections: int = 0
    max_backlog: int = 0

    def as_dict(self) -> dict[str, Any]:
        achieved = self.messages_ok / self.elapsed if self.elapsed > 0 else 0.0
        cpu_share = self.generator_cpu / self.elapsed if self.elapsed > 0 else 0.0
        total = self.requests or 1
        return {
            "offered_msg_s": self.offered_rate,
            "achieved_msg_s": round(achieved, 1),
            "requests": self.requests,
            "requests_ok": self.requests_ok,
            "success_rate": round(self.requests_ok / total, 5),
            "errors": dict(self.errors),
            "latency": summarize(self.latencies),
            "service": summarize(self.service),
            "elapsed_s": round(self.elapsed, 3),
            "connections": self.connections,
            "max_backlog": self.max_backlog,
            "generator_cpu_share": round(cpu_share, 3),
        }


async def open_loop(
    host: str,
    port: int,
    make_request: RequestFactory,
    *,
    rate: float,
    duration: float,
    messages_per_request: int = 1,
    max_connections: int = 256,
    drain_timeout: float = 10.0,
) -> LoadResult:
    """Offer ``rate`` messages per second for ``duration`` seconds; see the module docs."""
    loop = asyncio.get_running_loop()
    request_rate = rate / messages_per_request
    total = max(1, int(request_rate * duration))
    result = LoadResult(offered_rate=rate, duration=duration, requests=total)
    idle: list[HttpConnection] = []
    backlog: collections.deque[tuple[int, float]] = collections.deque()
    opened = 0
    pending = 0
    last_done = 0.0
    finished = asyncio.Event()

    def fail(kind: str) -> None:
        result.errors[kind] = result.errors.get(kind, 0) + 1

    def launch(conn: HttpConnection, index: int, due: float) -> None:
        nonlocal pending
        data, count = make_request(index)
        sent = time.perf_counter()
        try:
            future = conn.request(data)
        except HttpError:
            fail("closed")
            settle()
            return
        pending += 1
        future.add_done_callback(lambda f: done(conn, f, due, sent, count))

    def done(
        conn: HttpConnection,
        future: asyncio.Future[tuple[int, bytes]],
        due: float,
        sent: float,
        count: int,
    ) -> None:
        nonlocal pending, opened, last_done
        pending -= 1
        now = time.perf_counter()
        exc = future.exception()
        if exc is not None:
            fail(type(exc).__name__)
        else:
            status, _ = future.result()
            if status == 200:
                result.requests_ok += 1
                result.messages_ok += count
                result.latencies.append(now - due)
                result.service.append(now - sent)
            else:
                fail(str(status))
        last_done = now
        if not conn.closed:
            if backlog:
                index, next_due = backlog.popleft()
                launch(conn, index, next_due)
            else:
                idle.append(conn)
        else:
            opened -= 1
            if backlog and opened < max_connections:
                opened += 1
                spawn(*backlog.popleft())
        settle()

    settled = 0

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled >= total:
            finished.set()

    async def connect_and_launch(index: int, due: float) -> None:
        try:
            conn = await open_connection(host, port)
        except OSError:
            fail("connect")
            settle()
            return
        result.connections += 1
        every.append(conn)
        launch(conn, index, due)

    connect_tasks: set[asyncio.Task[None]] = set()
    every: list[HttpConnection] = []

    def spawn(index: int, due: float) -> None:
        task = loop.create_task(connect_and_launch(index, due))
        connect_tasks.add(task)
        task.add_done_callback(connect_tasks.discard)

    cpu_before = cpu_seconds()
    start = time.perf_counter()
    index = 0
    while index < total:
        now = time.perf_counter()
        due_count = min(total, int((now - start) * request_rate) + 1)
        while index < due_count:
            due = start + index / request_rate
            if idle:
                launch(idle.pop(), index, due)
            elif opened < max_connections:
                opened += 1
                spawn(index, due)
            else:
                backlog.append((index, due))
                result.max_backlog = max(result.max_backlog, len(backlog))
            index += 1
        if index < total:
            next_due = start + index / request_rate
            # at least a millisecond: shorter sleeps spin on the loop's timer resolution
            # and would steal the CPU the server under test needs
            await asyncio.sleep(max(0.001, next_due - time.perf_counter()))
    try:
        await asyncio.wait_for(finished.wait(), timeout=drain_timeout)
    except TimeoutError:
        fail("timeout")
    result.generator_cpu = cpu_seconds() - cpu_before
    result.elapsed = max(last_done, start + duration) - start
    for conn in every:
        conn.close()
    for task in connect_tasks:
        task.cancel()
    return result


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (it comes with ``uvicorn[standard]``)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(main)
    return uvloop.run(main)


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-files soft limit towards ``wanted``; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


def median_of(runs: Sequence[dict[str, Any]], path: str) -> float:
    """Median of a dotted field (``"latency.p99_ms"``) over runs."""
    values: list[float] = []
    for run in runs:
        value: Any = run
        for part in path.split("."):
            value = value[part]
        values.append(float(value))
    return statistics.median(values) if values else math.nan
