"""Benchmark: the relay side by side with Centrifugo v6.9.1, same generator, same run.

Centrifugo is built by ``scripts/install-centrifugo.sh`` (``go install``, pinned v6.9.1)
into ``~/.cache/dualchannel``; ``CENTRIFUGO_BINARY`` overrides the path. It runs on a
loopback port with a generated config: the HTTP API with a key, unidirectional SSE
(``uni_sse``) enabled, HMAC connection tokens whose ``channels`` claim subscribes the
connection server-side, and channel history (1,000 per channel, 300 s) so it keeps a
replayable log as the relay does — in memory: Centrifugo's answer to a publish does not
mean the message reached a disk, the relay's ``200`` does (one fsync per group commit).

Compared, alternating relay and Centrifugo for every point:

- ingest: open-loop offered rates, single publishes (``/api/publish``) and batches of
  :data:`~.ingest.BATCH` (``/api/batch``), spread over the same number of channels as the
  relay's sessions;
- delivery: the same subscriber counts and rates as :mod:`.delivery`, over ``uni_sse``;
- idle: server memory per idle SSE connection.

Reported as ratios relay / Centrifugo.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt

from .delivery import CASES, Target, measure_delivery, relay_target
from .http import build_get, build_post
from .idle import measure_idle, relay_subscribe
from .ingest import BATCH, SESSIONS, Progress, measure_point, serve
from .loadgen import median_of, raise_nofile, run_async
from .payload import envelope_json
from .servers import ServerProcess, free_port

__all__ = ["VERSION", "centrifugo_markdown", "find_centrifugo", "run_centrifugo_bench"]

VERSION = "v6.9.1"
API_KEY = "bench-api-key"
HMAC_SECRET = "bench-hmac-secret-of-at-least-32-bytes"


def find_centrifugo() -> Path | None:
    explicit = os.environ.get("CENTRIFUGO_BINARY")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("DUALCHANNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dualchannel"
    )
    binary = Path(cache) / f"centrifugo-{VERSION}" / "bin" / "centrifugo"
    return binary if binary.exists() else None


def config(port: int) -> dict[str, Any]:
    return {
        "http_server": {"address": "127.0.0.1", "port": port},
        "log": {"level": "error"},
        "client": {"token": {"hmac_secret_key": HMAC_SECRET}},
        "http_api": {"key": API_KEY},
        "uni_sse": {"enabled": True},
        "channel": {"without_namespace": {"history_size": 1000, "history_ttl": "300s"}},
    }


@contextmanager
def centrifugo(binary: Path, workdir: Path) -> Iterator[tuple[str, int, int]]:
    port = free_port()
    path = workdir / f"centrifugo-{port}.json"
    path.write_text(json.dumps(config(port)))
    server = ServerProcess(
        [str(binary), "-c", str(path)], port=port, log=workdir / f"centrifugo-{port}.log"
    )
    with server:
        yield "127.0.0.1", port, server.pid


def _token(channels: list[str]) -> str:
    return jwt.encode({"sub": "bench", "channels": channels}, HMAC_SECRET, algorithm="HS256")


def sse_subscribe(hostport: str, channel: str) -> bytes:
    query = urllib.parse.quote(json.dumps({"token": _token([channel])}))
    return build_get(
        hostport, f"/connection/uni_sse?cf_connect={query}", "Accept: text/event-stream\r\n"
    )


def _api(hostport: str, method: str, payload: str) -> bytes:
    return build_post(hostport, f"/api/{method}", payload.encode(), f"X-API-Key: {API_KEY}\r\n")


def publish_request(hostport: str, channel: str, envelope: str) -> bytes:
    return _api(hostport, "publish", f'{{"channel":"{channel}","data":{envelope}}}')


def ingest_factory(hostport: str, batch: int, epoch: int) -> Callable[[int], tuple[bytes, int]]:
    def make(index: int) -> tuple[bytes, int]:
        channel = f"ingest-{index % SESSIONS}"
        first = (index // SESSIONS) * batch + 1
        if batch == 1:
            return publish_request(hostport, channel, envelope_json(channel, epoch, first)), 1
        commands = ",".join(
            f'{{"publish":{{"channel":"{channel}","data":{envelope_json(channel, epoch, seq)}}}}}'
            for seq in range(first, first + batch)
        )
        return _api(hostport, "batch", f'{{"commands":[{commands}]}}'), batch

    return make


def centrifugo_target(host: str, port: int, channel: str = "deliver") -> Target:
    hostport = f"{host}:{port}"

    def publish(seq: int, epoch: int) -> bytes:
        return publish_request(hostport, channel, envelope_json(channel, epoch, seq))

    return Target("centrifugo", host, port, publish, lambda: sse_subscribe(hostport, channel))


def run_centrifugo_bench(*, quick: bool, repeats: int, progress: Progress) -> dict[str, Any]:
    binary = find_centrifugo()
    if binary is None:
        return {
            "skipped": f"centrifugo {VERSION} not built: run scripts/install-centrifugo.sh",
            "met": None,
        }
    raise_nofile(8192)
    rates = [5_000] if quick else [1_000, 2_000, 5_000, 10_000]
    duration = 1.0 if quick else 5.0
    delivery_duration = 1.0 if quick else 10.0
    idle_connections = 200 if quick else 2_000
    repeats = 1 if quick else repeats
    points: dict[str, list[dict[str, Any]]] = {}
    delivery: dict[str, list[dict[str, Any]]] = {}
    idle: dict[str, list[dict[str, Any]]] = {}
    servers: dict[str, Callable[[Path], Any]] = {
        "relay": lambda workdir: serve("relay", workdir),
        "centrifugo": lambda workdir: centrifugo(binary, workdir),
    }
    with tempfile.TemporaryDirectory(prefix="dualchannel-bench-") as tmp:
        workdir = Path(tmp)
        for attempt in range(repeats):
            run = f"run {attempt + 1}/{repeats}"
            for batch in (1, BATCH):
                mode = "single" if batch == 1 else f"batch{batch}"
                for rate in rates:
                    for name, start in servers.items():
                        progress(f"centrifugo: {run} ingest {name} {mode} {rate:,} msg/s")
                        with start(workdir) as (host, port, _pid):
                            make = (
                                ingest_factory(f"{host}:{port}", batch, time.time_ns() // 10**6)
                                if name == "centrifugo"
                                else None
                            )
                            point = run_async(
                                measure_point(
                                    host, port, rate=rate, batch=batch, duration=duration, make=make
                                )
                            )
                        progress(
                            f"  achieved {point['achieved_msg_s']:,.0f} msg/s, "
                            f"p99 {point['latency']['p99_ms']:.1f} ms"
                        )
                        points.setdefault(f"{name}/{mode}/{rate}", []).append(point)
            for subscribers, msg_rate in CASES:
                for name, start in servers.items():
                    progress(
                        f"centrifugo: {run} delivery {name} {subscribers} subscribers "
                        f"{msg_rate:,.0f} msg/s"
                    )
                    with start(workdir) as (host, port, _pid):
                        target = (
                            relay_target(host, port)
                            if name == "relay"
                            else centrifugo_target(host, port)
                        )
                        result = run_async(
                            measure_delivery(
                                target,
                                subscribers=subscribers,
                                rate=msg_rate,
                                duration=delivery_duration,
                            )
                        )
                    progress(
                        f"  p99 {result['latency']['p99_ms']:.1f} ms, "
                        f"read {result['delivered_fraction']:.4f}"
                    )
                    delivery.setdefault(f"{name}/{subscribers}/{int(msg_rate)}", []).append(result)
            for name, start in servers.items():
                progress(f"centrifugo: {run} idle {name} {idle_connections:,} connections")
                with start(workdir) as (host, port, pid):
                    hostport = f"{host}:{port}"
                    subscribe = (
                        relay_subscribe(hostport)
                        if name == "relay"
                        else (lambda i, hp=hostport: sse_subscribe(hp, f"idle-{i % 500}"))
                    )
                    result = run_async(
                        measure_idle(
                            host,
                            port,
                            pid,
                            subscribe,
                            connections=idle_connections,
                            settle=1.5 if quick else 5.0,
                        )
                    )
                progress(f"  {result['kib_per_connection']:.1f} KiB per connection")
                idle.setdefault(name, []).append(result)
    out: dict[str, Any] = {
        "quick": quick,
        "repeats": repeats,
        "version": VERSION,
        "binary": str(binary),
        "duration_s": duration,
        "delivery_duration_s": delivery_duration,
        "ingest": {},
        "delivery": {},
        "idle": {},
        "ratios": {},
    }
    for key, runs in points.items():
        out["ingest"][key] = {
            "runs": runs,
            "achieved_msg_s": median_of(runs, "achieved_msg_s"),
            "p50_ms": median_of(runs, "latency.p50_ms"),
            "p99_ms": median_of(runs, "latency.p99_ms"),
            "success_rate": median_of(runs, "success_rate"),
        }
    for key, runs in delivery.items():
        out["delivery"][key] = {
            "runs": runs,
            "p50_ms": median_of(runs, "latency.p50_ms"),
            "p99_ms": median_of(runs, "latency.p99_ms"),
            "delivered_fraction": median_of(runs, "delivered_fraction"),
        }
    for name, runs in idle.items():
        out["idle"][name] = {
            "runs": runs,
            "kib_per_connection": median_of(runs, "kib_per_connection"),
        }
    ratios = out["ratios"]
    for mode in ("single", f"batch{BATCH}"):
        for rate in rates:
            our_rate = out["ingest"][f"relay/{mode}/{rate}"]["achieved_msg_s"]
            their_rate = out["ingest"][f"centrifugo/{mode}/{rate}"]["achieved_msg_s"]
            ratios[f"ingest/{mode}/{rate}"] = (
                round(our_rate / their_rate, 3) if their_rate else None
            )
    for subscribers, msg_rate in CASES:
        key = f"{subscribers}/{int(msg_rate)}"
        our_p99 = out["delivery"][f"relay/{key}"]["p99_ms"]
        their_p99 = out["delivery"][f"centrifugo/{key}"]["p99_ms"]
        ratios[f"delivery_p99/{key}"] = round(our_p99 / their_p99, 2) if their_p99 else None
    ours_idle = out["idle"]["relay"]["kib_per_connection"]
    theirs_idle = out["idle"]["centrifugo"]["kib_per_connection"]
    ratios["idle_kib"] = round(ours_idle / theirs_idle, 2) if theirs_idle else None
    out["met"] = None  # a comparison, not a target
    return out


def centrifugo_markdown(result: dict[str, Any]) -> str:
    lines = ["## Side by side with Centrifugo", ""]
    if "skipped" in result:
        return "\n".join([*lines, f"Skipped: {result['skipped']}.", ""])
    lines += [
        f"Centrifugo {result['version']} built with `go install` "
        "(`scripts/install-centrifugo.sh`), publishing through its HTTP API "
        "(`/api/publish`, `/api/batch`) and subscribing over unidirectional SSE (`uni_sse`, "
        "server-side subscription from the connection token), driven by the same generator "
        "and subscribers as the relay, alternating server by server for every point; "
        f"medians of {result['repeats']} runs. Centrifugo keeps history in memory (1,000 per "
        "channel); its publish answer does not wait for a disk, the relay's `200` waits for "
        "an fsync. Ratios are relay / Centrifugo.",
        "",
        "### Ingest",
        "",
        "| mode | offered msg/s | relay achieved | Centrifugo achieved | ratio | relay p99 ms | "
        "Centrifugo p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, ratio in result["ratios"].items():
        if not key.startswith("ingest/"):
            continue
        _, mode, rate = key.split("/")
        ours = result["ingest"][f"relay/{mode}/{rate}"]
        theirs = result["ingest"][f"centrifugo/{mode}/{rate}"]
        lines.append(
            f"| {mode} | {int(rate):,} | {ours['achieved_msg_s']:,.0f} | "
            f"{theirs['achieved_msg_s']:,.0f} | {ratio} | {ours['p99_ms']:.1f} | "
            f"{theirs['p99_ms']:.1f} |"
        )
    lines += [
        "",
        "### Delivery (POST/publish to SSE)",
        "",
        "| subscribers | msg/s | relay p50 / p99 ms | Centrifugo p50 / p99 ms | p99 ratio | "
        "events read (relay / Centrifugo) |",
        "|---|---|---|---|---|---|",
    ]
    for subscribers, rate in CASES:
        key = f"{subscribers}/{int(rate)}"
        ours = result["delivery"][f"relay/{key}"]
        theirs = result["delivery"][f"centrifugo/{key}"]
        lines.append(
            f"| {subscribers} | {rate:,.0f} | {ours['p50_ms']:.1f} / {ours['p99_ms']:.1f} | "
            f"{theirs['p50_ms']:.1f} / {theirs['p99_ms']:.1f} | "
            f"{result['ratios'][f'delivery_p99/{key}']} | "
            f"{ours['delivered_fraction']:.4f} / {theirs['delivered_fraction']:.4f} |"
        )
    idle = result["idle"]
    lines += [
        "",
        "### Idle SSE connections",
        "",
        f"Relay {idle['relay']['kib_per_connection']:.1f} KiB per connection, Centrifugo "
        f"{idle['centrifugo']['kib_per_connection']:.1f} KiB (ratio "
        f"{result['ratios']['idle_kib']}).",
    ]
    return "\n".join(lines) + "\n"
