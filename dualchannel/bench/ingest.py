"""Benchmark: relay ingest with durable commits, against a naive relay, same load, same run.

Three parts, all from this process (the load generator) against servers in child processes
on loopback ports, so generator and server each have a core of their own:

1. **Generator ceiling** — the open-loop generator against ``servers.trivial`` (answers
   ``200 {}`` doing nothing), single-message POSTs at rising rates: the highest rate it
   reaches is its own limit. Every later run also records the generator's CPU share.
2. **Open-loop ingest** — offered 1k/2k/5k/10k messages/s, single-message POSTs and batches
   of :data:`BATCH`, against the relay (``dualchannel serve``, group commit) and the naive
   relay (``servers.naive``: one transaction and fsync per request), alternating, each
   point on a fresh server process and SQLite file. Messages spread round-robin over
   :data:`SESSIONS` sessions; the relay runs with ``--rate-limit`` :data:`RATE_LIMIT` so the
   per-session limiter is exercised but never refuses.
3. **The spec's load test** — 1,000 connections opened first, then one POST on each at
   once (1,000 sessions, one message each), in rounds: success rate and p99 per round.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..server.process import RelayProcess
from .http import HttpConnection, build_post, open_connection
from .loadgen import median_of, open_loop, raise_nofile, run_async, summarize
from .payload import batch_body, envelope_json
from .servers import ServerProcess

__all__ = [
    "BATCH",
    "RATE_LIMIT",
    "SESSIONS",
    "ingest_markdown",
    "measure_point",
    "run_ingest_bench",
    "serve",
]

BATCH = 20
SESSIONS = 200
RATE_LIMIT = "100000/minute"
TARGET_RATE = 5_000
TARGET_P99_MS = 20.0
SPEC_CONCURRENCY = 1_000
SPEC_TARGET_P99_MS = 200.0
PATH = "/api/transcription"

Progress = Callable[[str], None]


def _factory(host: str, batch: int, epoch: int) -> Callable[[int], tuple[bytes, int]]:
    def make(index: int) -> tuple[bytes, int]:
        session = f"ingest-{index % SESSIONS}"
        first = (index // SESSIONS) * batch + 1
        if batch == 1:
            body = envelope_json(session, epoch, first).encode()
        else:
            body = batch_body(session, epoch, first, batch)
        return build_post(host, PATH, body), batch

    return make


@contextmanager
def serve(variant: str, workdir: Path) -> Iterator[tuple[str, int, int]]:
    """Start ``relay`` or ``naive`` on a fresh database; yield ``(host, port, pid)``."""
    stamp = f"{variant}-{time.monotonic_ns()}"
    if variant == "relay":
        relay = RelayProcess(
            workdir / f"{stamp}.db", dev=True, extra_args=["--rate-limit", RATE_LIMIT]
        )
        with relay:
            yield relay.host, relay.port, relay.pid
    elif variant == "naive":
        server = ServerProcess.bench_server("naive", workdir, database=str(workdir / f"{stamp}.db"))
        with server:
            yield "127.0.0.1", server.port, server.pid
    elif variant == "trivial":
        server = ServerProcess.bench_server("trivial", workdir)
        with server:
            yield "127.0.0.1", server.port, server.pid
    else:  # pragma: no cover
        raise ValueError(variant)


async def measure_point(
    host: str,
    port: int,
    *,
    rate: float,
    batch: int,
    duration: float,
    make: Callable[[int], tuple[bytes, int]] | None = None,
) -> dict[str, Any]:
    """One open-loop point; ``make`` defaults to relay ingest requests."""
    if make is None:
        make = _factory(f"{host}:{port}", batch, time.time_ns() // 1_000_000)
    result = await open_loop(
        host,
        port,
        make,
        rate=rate,
        duration=duration,
        messages_per_request=batch,
        max_connections=256,
        drain_timeout=5.0,
    )
    return result.as_dict()


async def spec_load_test(host: str, port: int, *, concurrency: int, rounds: int) -> dict[str, Any]:
    """``concurrency`` connections, then one POST on each at the same moment, ``rounds`` times."""
    hostport = f"{host}:{port}"
    connections: list[HttpConnection] = []
    for start in range(0, concurrency, 100):
        connections += await asyncio.gather(
            *(open_connection(host, port) for _ in range(min(100, concurrency - start)))
        )
    per_round: list[dict[str, Any]] = []
    all_latencies: list[float] = []
    epoch = time.time_ns() // 1_000_000
    try:
        for round_no in range(rounds):
            bodies = [
                build_post(hostport, PATH, envelope_json(f"spec-{i}", epoch, round_no + 1).encode())
                for i in range(concurrency)
            ]
            fired = time.perf_counter()
            futures = [conn.request(body) for conn, body in zip(connections, bodies, strict=True)]
            latencies: list[float] = []

            def stamp(_: object, into: list[float] = latencies, at: float = fired) -> None:
                into.append(time.perf_counter() - at)

            for future in futures:
                future.add_done_callback(stamp)
            done, _pending = await asyncio.wait(futures, timeout=30.0)
            ok = sum(1 for f in done if f.exception() is None and f.result()[0] == 200)
            all_latencies += latencies
            per_round.append(
                {
                    "requests": concurrency,
                    "ok": ok,
                    "success_rate": ok / concurrency,
                    **summarize(latencies),
                }
            )
            await asyncio.sleep(0.5)
    finally:
        for conn in connections:
            conn.close()
    total_ok = sum(r["ok"] for r in per_round)
    p99 = statistics.median(r["p99_ms"] for r in per_round)
    success = total_ok / (concurrency * rounds)
    return {
        "concurrency": concurrency,
        "rounds": per_round,
        "success_rate": success,
        "p99_ms_median_round": p99,
        "latency_all": summarize(all_latencies),
        "target_p99_ms": SPEC_TARGET_P99_MS,
        "met": success == 1.0 and p99 < SPEC_TARGET_P99_MS,
    }


def run_ingest_bench(*, quick: bool, repeats: int, progress: Progress) -> dict[str, Any]:
    raise_nofile(8192)
    rates = [1_000, 5_000] if quick else [1_000, 2_000, 5_000, 10_000]
    duration = 1.0 if quick else 5.0
    repeats = 1 if quick else repeats
    gen_rates = [5_000, 10_000] if quick else [10_000, 20_000, 30_000, 40_000]
    out: dict[str, Any] = {
        "quick": quick,
        "repeats": repeats,
        "duration_s": duration,
        "batch": BATCH,
        "sessions": SESSIONS,
        "rate_limit": RATE_LIMIT,
        "generator": [],
        "points": {},
        "spec": {},
    }
    with tempfile.TemporaryDirectory(prefix="dualchannel-bench-") as tmp:
        workdir = Path(tmp)
        with serve("trivial", workdir) as (host, port, _pid):
            for rate in gen_rates:
                progress(f"ingest/generator: trivial server at {rate:,} req/s")
                point = run_async(measure_point(host, port, rate=rate, batch=1, duration=duration))
                out["generator"].append(point)
        for attempt in range(repeats):
            for batch in (1, BATCH):
                mode = "single" if batch == 1 else f"batch{batch}"
                for rate in rates:
                    for variant in ("relay", "naive"):
                        progress(
                            f"ingest: run {attempt + 1}/{repeats} {variant} {mode} {rate:,} msg/s"
                        )
                        with serve(variant, workdir) as (host, port, _pid):
                            point = run_async(
                                measure_point(host, port, rate=rate, batch=batch, duration=duration)
                            )
                        key = f"{variant}/{mode}/{rate}"
                        out["points"].setdefault(key, {"runs": []})["runs"].append(point)
                        progress(
                            f"  achieved {point['achieved_msg_s']:,.0f} msg/s, "
                            f"p99 {point['latency']['p99_ms']:.1f} ms, "
                            f"ok {point['success_rate']:.3f}, "
                            f"generator cpu {point['generator_cpu_share']:.2f}"
                        )
        for key, entry in out["points"].items():
            runs = entry["runs"]
            entry["median"] = {
                "achieved_msg_s": median_of(runs, "achieved_msg_s"),
                "p50_ms": median_of(runs, "latency.p50_ms"),
                "p99_ms": median_of(runs, "latency.p99_ms"),
                "service_p99_ms": median_of(runs, "service.p99_ms"),
                "success_rate": median_of(runs, "success_rate"),
                "generator_cpu_share": median_of(runs, "generator_cpu_share"),
            }
            variant, _mode, rate = key.split("/")
            m = entry["median"]
            entry["sustained"] = (
                m["achieved_msg_s"] >= 0.98 * float(rate) and m["success_rate"] == 1.0
            )
            entry["met"] = entry["sustained"] and m["p99_ms"] <= TARGET_P99_MS
        rounds = 1 if quick else 3
        for variant in ("relay", "naive"):
            progress(f"ingest/spec: {SPEC_CONCURRENCY} concurrent webhooks against {variant}")
            with serve(variant, workdir) as (host, port, _pid):
                out["spec"][variant] = run_async(
                    spec_load_test(host, port, concurrency=SPEC_CONCURRENCY, rounds=rounds)
                )
    out["targets"] = {
        "rate_msg_s": TARGET_RATE,
        "p99_ms": TARGET_P99_MS,
        "spec_p99_ms": SPEC_TARGET_P99_MS,
    }
    out["met"] = {
        mode: out["points"].get(f"relay/{mode}/{TARGET_RATE}", {}).get("met", False)
        for mode in ("single", f"batch{BATCH}")
    }
    out["met"]["spec"] = out["spec"]["relay"]["met"]
    return out


def _best_sustained(points: dict[str, Any], variant: str, mode: str) -> str:
    best = 0
    for key, entry in points.items():
        v, m, rate = key.split("/")
        if v == variant and m == mode and entry["met"]:
            best = max(best, int(rate))
    return f"{best:,}" if best else "none"


def ingest_markdown(result: dict[str, Any]) -> str:
    def yn(flag: bool) -> str:
        return "yes" if flag else "**no**"

    batch_mode = f"batch{result['batch']}"
    gen = result["generator"]
    gen_best = max((p["achieved_msg_s"] for p in gen), default=0.0)
    lines = [
        "## Relay ingest with durable commits",
        "",
        f"Open-loop load from a separate process over keep-alive HTTP/1.1 connections (at most "
        f"256); each point {result['duration_s']:g} s on a fresh server and SQLite file, median "
        f"of {result['repeats']} runs. Latency is from the moment a request was *due* to its "
        f"answer (queueing in the generator counts). Messages go round-robin to "
        f"{result['sessions']} sessions; batches hold {result['batch']} envelopes. The relay "
        f"runs with `--rate-limit {result['rate_limit']}`.",
        "",
        "**Naive relay** (`dualchannel/bench/servers.py`): same uvicorn, same envelope "
        "validation, same SQLite settings (WAL, `synchronous=FULL`) and rows (messages + one "
        "audit row per request), but one `BEGIN … COMMIT` (one fsync) per request under a "
        "lock; no group commit, rate limiter, metrics or SSE fan-out.",
        "",
        f"Target: ≥ {result['targets']['rate_msg_s']:,} messages/s sustained with p99 ≤ "
        f"{result['targets']['p99_ms']:g} ms. Met at 5,000 msg/s — single POSTs: "
        f"{yn(result['met']['single'])}; batches of {result['batch']}: "
        f"{yn(result['met'][batch_mode])}.",
        "",
        "| server | mode | offered msg/s | achieved msg/s | p50 ms | p99 ms | success | "
        "gen. CPU | target met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in result["points"].items():
        variant, mode, rate = key.split("/")
        m = entry["median"]
        lines.append(
            f"| {variant} | {mode} | {int(rate):,} | {m['achieved_msg_s']:,.0f} | "
            f"{m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['success_rate']:.3f} | "
            f"{m['generator_cpu_share']:.2f} | {yn(entry['met'])} |"
        )
    lines += [
        "",
        "Highest offered rate sustained within the p99 target: "
        + "; ".join(
            f"{v} {m}: {_best_sustained(result['points'], v, m)}"
            for v in ("relay", "naive")
            for m in ("single", f"batch{result['batch']}")
        )
        + ".",
        "",
        "### The spec's load test: 1,000 concurrent webhooks",
        "",
        f"{SPEC_CONCURRENCY:,} connections opened first, then one single-message POST on each "
        "at once (one session each); p99 is the median over rounds. Target: 100% success, "
        f"p99 < {result['targets']['spec_p99_ms']:g} ms.",
        "",
        "| server | rounds | success | p50 ms | p99 ms | max ms | target met |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, spec in result["spec"].items():
        lines.append(
            f"| {variant} | {len(spec['rounds'])} | {spec['success_rate']:.3f} | "
            f"{spec['latency_all']['p50_ms']:.1f} | {spec['p99_ms_median_round']:.1f} | "
            f"{spec['latency_all']['max_ms']:.1f} | {yn(spec['met'])} |"
        )
    lines += [
        "",
        "### Is the generator the bottleneck?",
        "",
        "The same generator against a server that answers `200 {}` doing no work "
        "(`servers.trivial`), single-message POSTs:",
        "",
        "| offered req/s | achieved req/s | p99 ms | generator CPU share |",
        "|---|---|---|---|",
    ]
    for p in gen:
        lines.append(
            f"| {p['offered_msg_s']:,.0f} | {p['achieved_msg_s']:,.0f} | "
            f"{p['latency']['p99_ms']:.1f} | {p['generator_cpu_share']:.2f} |"
        )
    lines += [
        "",
        f"It reaches {gen_best:,.0f} requests/s, above every request rate offered to the "
        "relays (batches need 1/20 of the requests); the `gen. CPU` column above is its share "
        "of one core during each run (1.00 would mean it was saturated).",
    ]
    return "\n".join(lines) + "\n"
