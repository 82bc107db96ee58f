"""Benchmark: failover with real parts — detection, false switches, end-to-end latency.

Runs on the chaos harness (:class:`dualchannel.chaos.Stack`): the pinned livekit-server,
a relay on SQLite, a :class:`DualChannelPublisher` sending a steady :data:`RATE` messages a
second and a :class:`DualChannelSubscriber`, all on loopback. A primary *cut* is
livekit-server frozen with SIGSTOP (:class:`~dualchannel.chaos.PausePrimary`) for
:data:`PAUSE` seconds; the harness matches each ``ChannelSwitch`` to the cut, so detection
is switch time minus cut time, and recovery is switch-back time minus the SIGCONT.

1. Cuts at the default settings (heartbeat 200 ms, dead after 600 ms): 50 in the full run.
2. False switches: a soak with both channels healthy (10 minutes in the full run, set by
   ``dualchannel bench failover --soak SECONDS``); every switch counts as false.
3. End to end, ``send_transcript`` call to delivery to the application, while healthy
   (first copies via the primary) and with the primary paused (the secondary alone). The
   send time is taken as the producer asks for the message's segments, right before the
   call.
4. Tighter settings (heartbeat 100 ms / dead after 300 ms, and 50 ms / 150 ms): a soak
   for false switches, then cuts.

Each setting is one stack; after the cuts :meth:`Stack.finish` checks that nothing was
lost, duplicated or reordered.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from ..envelope import Channel
from ..protocol.fallback import FallbackPolicy
from .loadgen import percentile, summarize

__all__ = ["failover_markdown", "run_failover_bench"]

RATE = 20.0
PAUSE = 1.5
FAST_LIMIT = "100/second"
TARGET_DETECT_P99_MS = 800.0
TARGET_DETECT_MAX_MS = 1000.0
TARGET_RECOVERY_P99_MS = 5000.0

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    heartbeat: float
    dead_after: float


DEFAULT = Setting("default", 0.2, 0.6)
TIGHT = (Setting("tight-100/300", 0.1, 0.3), Setting("tight-50/150", 0.05, 0.15))


async def _run_setting(
    setting: Setting,
    *,
    cuts: int,
    soak: float,
    e2e: float,
    progress: Progress,
) -> dict[str, Any]:
    from ..chaos import PausePrimary, Stack, StackConfig
    from ..publisher import HeartbeatPolicy

    config = StackConfig(
        session_id=f"bench-{setting.name.replace('/', '-')}",
        rate=RATE,
        heartbeat=HeartbeatPolicy(interval=setting.heartbeat),
        fallback=FallbackPolicy(primary_timeout=setting.dead_after),
        progress_interval=None,
        scenario=f"bench-{setting.name}",
    )
    out: dict[str, Any] = {
        "setting": setting.name,
        "heartbeat_s": setting.heartbeat,
        "dead_after_s": setting.dead_after,
    }
    quiet: Progress = lambda line: None  # noqa: E731 - the stack's per-event lines
    async with Stack(config, progress=quiet) as stack:
        await stack.wait_flowing(within=60.0)
        subscriber = stack.subscriber
        rec = stack.recorder

        # -- soak: both healthy, every switch is a false one ------------------------------
        if soak > 0:
            progress(f"failover/{setting.name}: soak {soak:,.0f} s with both channels healthy")
            before = len(rec.switches)
            started = time.monotonic()
            next_line = started + 30.0
            while time.monotonic() - started < soak:
                await anyio.sleep(min(1.0, soak - (time.monotonic() - started)))
                if time.monotonic() >= next_line:
                    progress(
                        f"  {time.monotonic() - started:,.0f}/{soak:,.0f} s, "
                        f"false switches so far {len(rec.switches) - before}"
                    )
                    next_line += 30.0
            false = rec.switches[before:]
            out["soak"] = {
                "seconds": soak,
                "messages": int(soak * RATE),
                "false_switches": len(false),
                "switches": [s.reason for s in false],
            }

        # -- end to end: healthy (primary), then primary paused (secondary alone) -----------
        if e2e > 0:
            progress(f"failover/{setting.name}: end-to-end latency, {e2e:g} s each way")
            mark = len(rec.deliveries)
            await anyio.sleep(e2e)
            healthy = rec.deliveries[mark:]
            stack.livekit.pause()
            try:
                await stack.until(
                    lambda: subscriber.status().active is Channel.SECONDARY, 10.0, "switch"
                )
                mark = len(rec.deliveries)
                await anyio.sleep(e2e)
                alone = rec.deliveries[mark:]
            finally:
                stack.livekit.resume()
            await stack.until(
                lambda: subscriber.status().active is Channel.PRIMARY, 15.0, "switch back"
            )
            await anyio.sleep(1.0)
            epoch = stack.publisher.epoch
            out["e2e"] = {
                "primary": summarize(
                    [
                        d.at - rec.sent_at[d.seq]
                        for d in healthy
                        if d.epoch == epoch
                        and d.channel is Channel.PRIMARY
                        and d.seq in rec.sent_at
                    ]
                ),
                "secondary_alone": summarize(
                    [
                        d.at - rec.sent_at[d.seq]
                        for d in alone
                        if d.epoch == epoch and d.seq in rec.sent_at
                    ]
                ),
                "seconds": e2e,
            }

        # -- cuts ---------------------------------------------------------------------------
        if cuts:
            progress(f"failover/{setting.name}: {cuts} primary cuts (SIGSTOP {PAUSE:g} s)")
        before = len(rec.switches)
        missed = 0
        for index in range(cuts):
            await PausePrimary(PAUSE).run(stack)
            try:
                await stack.until(
                    lambda: subscriber.status().active is Channel.PRIMARY, 15.0, "switch back"
                )
            except TimeoutError:
                missed += 1
            await anyio.sleep(1.0)  # healthy again before the next cut
            if (index + 1) % 10 == 0:
                progress(f"  {index + 1}/{cuts} cuts")
        records = rec.switches[before:]
        detection = [s.detection_ms for s in records if s.detection_ms is not None]
        recovery = [s.recovery_ms for s in records if s.recovery_ms is not None]
        unmatched = [s for s in records if s.fault is None]
        report = await stack.finish()
    out["cuts"] = {
        "cuts": cuts,
        "pause_s": PAUSE,
        "detected": len(detection),
        "not_back_within_15s": missed,
        "unmatched_switches": len(unmatched),
        "detection_ms": _dist(detection),
        "recovery_ms": _dist(recovery),
        "detection_all_ms": [round(v, 1) for v in detection],
    }
    out["integrity"] = {
        "sent": report.sent,
        "delivered": report.delivered,
        "lost": report.lost,
        "duplicates": report.duplicates_delivered,
        "out_of_order": report.out_of_order,
    }
    return out


async def _secondary_only(
    seconds: float, progress: Progress, relay_args: tuple[str, ...] = ()
) -> dict[str, float]:
    """End to end on a stack with no LiveKit at all: webhook, relay, SSE."""
    from ..chaos import Stack, StackConfig

    progress(
        f"failover: end-to-end latency, secondary only (no LiveKit) {' '.join(relay_args)}, "
        f"{seconds:g} s"
    )
    config = StackConfig(
        session_id="bench-secondary-only",
        rate=RATE,
        channels="secondary",
        relay_args=relay_args,
        progress_interval=None,
        scenario="bench-secondary-only",
    )
    async with Stack(config, progress=lambda line: None) as stack:
        await stack.wait_flowing(within=60.0)
        rec = stack.recorder
        mark = len(rec.deliveries)
        await anyio.sleep(seconds)
        epoch = stack.publisher.epoch
        window = rec.deliveries[mark:]
        latencies = [
            d.at - rec.sent_at[d.seq] for d in window if d.epoch == epoch and d.seq in rec.sent_at
        ]
        await stack.finish()
    return summarize(latencies)


def _dist(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1),
        "mean": round(statistics.fmean(values), 1),
    }


def run_failover_bench(*, quick: bool, soak: float, progress: Progress) -> dict[str, Any]:
    cuts = 3 if quick else 50
    tight_cuts = 2 if quick else 20
    tight_soak = 5.0 if quick else 60.0
    e2e = 3.0 if quick else 10.0
    tight = TIGHT[:1] if quick else TIGHT

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {"quick": quick, "rate_msg_s": RATE, "settings": {}}
        out["settings"][DEFAULT.name] = await _run_setting(
            DEFAULT, cuts=cuts, soak=soak, e2e=e2e, progress=progress
        )
        if e2e > 0:
            e2e_out = out["settings"][DEFAULT.name]["e2e"]
            e2e_out["secondary_only"] = await _secondary_only(e2e, progress)
            e2e_out["secondary_only_fast_limit"] = await _secondary_only(
                e2e, progress, ("--rate-limit", FAST_LIMIT)
            )
        for setting in tight:
            out["settings"][setting.name] = await _run_setting(
                setting, cuts=tight_cuts, soak=tight_soak, e2e=0.0, progress=progress
            )
        return out

    out = anyio.run(main)
    default = out["settings"][DEFAULT.name]
    detect = default["cuts"]["detection_ms"]
    recover = default["cuts"]["recovery_ms"]
    out["targets"] = {
        "detect_p99_ms": TARGET_DETECT_P99_MS,
        "detect_max_ms": TARGET_DETECT_MAX_MS,
        "recovery_p99_ms": TARGET_RECOVERY_P99_MS,
        "false_switches": 0,
    }
    out["met"] = {
        "detection": detect.get("n", 0) == cuts
        and detect["p99"] <= TARGET_DETECT_P99_MS
        and detect["max"] < TARGET_DETECT_MAX_MS,
        "recovery": recover.get("n", 0) == cuts and recover["p99"] <= TARGET_RECOVERY_P99_MS,
        "false_switches": default["soak"]["false_switches"] == 0,
        "integrity": all(
            s["integrity"]["lost"] == 0
            and s["integrity"]["duplicates"] == 0
            and s["integrity"]["out_of_order"] == 0
            for s in out["settings"].values()
        ),
    }
    return out


def failover_markdown(result: dict[str, Any]) -> str:
    def yn(flag: bool) -> str:
        return "yes" if flag else "**no**"

    settings = result["settings"]
    default = settings[DEFAULT.name]
    met = result["met"]
    lines = [
        "## Failover with a real livekit-server",
        "",
        f"Chaos harness stack on loopback (livekit-server, relay, publisher, subscriber), "
        f"{result['rate_msg_s']:g} transcript messages/s. A cut is livekit-server frozen "
        f"with SIGSTOP for {PAUSE:g} s; detection is switch time minus cut time, recovery is "
        "switch-back time minus SIGCONT.",
        "",
        "| setting | cuts | detected | detection p50 / p99 / max ms | recovery p50 / p99 / "
        "max ms | soak | false switches | lost / dup / reordered |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in settings.items():
        d, r = s["cuts"]["detection_ms"], s["cuts"]["recovery_ms"]
        soak = s.get("soak", {})
        integrity = s["integrity"]
        lines.append(
            f"| {name} ({s['heartbeat_s'] * 1000:.0f} ms / {s['dead_after_s'] * 1000:.0f} ms) "
            f"| {s['cuts']['cuts']} | {s['cuts']['detected']} | "
            f"{d.get('p50', '-')} / {d.get('p99', '-')} / {d.get('max', '-')} | "
            f"{r.get('p50', '-')} / {r.get('p99', '-')} / {r.get('max', '-')} | "
            f"{soak.get('seconds', 0):,.0f} s | {soak.get('false_switches', '-')} | "
            f"{integrity['lost']} / {integrity['duplicates']} / {integrity['out_of_order']} |"
        )
    lines += [
        "",
        f"Targets at the default setting: detection p99 ≤ {TARGET_DETECT_P99_MS:g} ms and max "
        f"< {TARGET_DETECT_MAX_MS:g} ms — {yn(met['detection'])}; recovery p99 ≤ "
        f"{TARGET_RECOVERY_P99_MS:g} ms — {yn(met['recovery'])}; 0 false switches in the "
        f"{default['soak']['seconds']:,.0f} s soak — {yn(met['false_switches'])}; nothing "
        f"lost, duplicated or reordered — {yn(met['integrity'])}.",
    ]
    e2e = default.get("e2e")
    if e2e:
        p, s = e2e["primary"], e2e["secondary_alone"]
        lines += [
            "",
            "### End to end: `send_transcript` call to delivery",
            "",
            "| path | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|",
            f"| primary (healthy) | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {p['max_ms']:.1f} |",
            f"| secondary alone (primary paused) | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
            f"{s['max_ms']:.1f} |",
        ]
        only = e2e.get("secondary_only")
        if only:
            lines.append(
                f"| secondary only (no LiveKit in the stack) | {only['p50_ms']:.1f} | "
                f"{only['p99_ms']:.1f} | {only['max_ms']:.1f} |"
            )
        fast = e2e.get("secondary_only_fast_limit")
        if fast:
            lines.append(
                f"| secondary only, relay `--rate-limit {FAST_LIMIT}` | {fast['p50_ms']:.1f} | "
                f"{fast['p99_ms']:.1f} | {fast['max_ms']:.1f} |"
            )
        lines += [
            "",
            "At the relay's default rate limit (100/minute per session) the publisher may post "
            "one request every 0.6 s, so at 20 messages/s it batches and the secondary path's "
            "latency is up to that budget; with the limit raised the path's own latency shows.",
            "",
            f"{e2e['seconds']:g} s of deliveries per row. The send time is taken by the "
            "harness's producer right before `send_transcript`; the delivery time when the "
            "harness's recorder takes the envelope from the subscriber.",
        ]
    return "\n".join(lines) + "\n"
