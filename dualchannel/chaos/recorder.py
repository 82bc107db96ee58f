"""The recorder: what happened during a chaos run, and when.

:class:`Recorder` keeps the timeline of one run — faults (injected, cleared), the send
time of every seq, every delivery (and which channel brought it first), every change of
the active channel — and turns it into a :class:`~dualchannel.chaos.report.Report`.

Switch attribution: a switch away from a channel is matched to the latest fault that cut
that channel and has no switch yet (``detection_ms`` = switch - injection); a switch back
to the primary is matched to the latest detected, cleared fault that cut the primary
(``recovery_ms`` = switch - clearing). A switch that falls in no fault's window (from its
injection to 10 s after it cleared) is a *false* switch.

All times are ``time.monotonic()`` values, the subscriber's default clock, so the
subscriber's own ``ChannelSwitch.at`` lines up with the fault times recorded here.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import anyio

from ..envelope import Channel, Envelope
from ..protocol import (
    BothDown,
    ChannelDown,
    ChannelRecovered,
    ChannelSwitch,
    FallbackEvent,
    MessageLost,
)
from ..subscriber import DualChannelSubscriber, SubscriberStats
from .report import AuditCheck, FaultRecord, GarbageResult, Report, SwitchRecord

__all__ = ["Delivery", "ProgressFn", "Recorder", "attribute", "percentile"]

ProgressFn = Callable[[str], None]
#: What ``DualChannelSubscriber.events()`` yields.
SubscriberEvent = FallbackEvent | MessageLost

P, S = Channel.PRIMARY, Channel.SECONDARY
_FAULT_WINDOW_AFTER_MS = 10_000.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """One envelope handed to the application; ``channel``: which one brought it first
    (None when one batch of deliveries mixed both)."""

    epoch: int
    seq: int
    at: float
    channel: Channel | None


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0 to 100) by nearest rank; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


class Recorder:
    """The timeline of one run; see the module docs."""

    def __init__(self, *, progress: ProgressFn | None = None) -> None:
        self.t0 = time.monotonic()
        self.progress = progress
        self.faults: list[FaultRecord] = []
        self.sent_at: dict[int, float] = {}
        self.deliveries: list[Delivery] = []
        self.switches: list[SwitchRecord] = []
        self.garbage: list[GarbageResult] = []
        self.lost_events: list[MessageLost] = []
        self.notes: list[str] = []
        self.expected_rejected = 0
        self.warm_at: float | None = None
        self._active: Channel | None = P
        self._last_down: dict[Channel, ChannelDown] = {}
        self._first_seen = dict.fromkeys(Channel, 0)

    # -- time and lines ------------------------------------------------------------------

    def ms(self, at: float | None = None) -> float:
        """Milliseconds since the run started (``at``: a ``time.monotonic()`` value)."""
        return ((time.monotonic() if at is None else at) - self.t0) * 1000.0

    def say(self, line: str) -> None:
        """Emit a progress line stamped with the run time."""
        if self.progress is not None:
            self.progress(f"{self.ms() / 1000:6.1f} s  {line}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.say(text)

    # -- faults --------------------------------------------------------------------------

    def fault_started(self, name: str, channels: str, detail: str = "") -> int:
        """Record a fault injected now; returns its index for :meth:`fault_cleared`.

        ``channels``: ``"primary"``, ``"secondary"``, ``"both"`` or ``"none"``.
        """
        self.faults.append(FaultRecord(name, channels, self.ms(), None, detail))
        self.say(f"FAULT {name}{': ' + detail if detail else ''}")
        return len(self.faults) - 1

    def fault_cleared(self, index: int, at: float | None = None, detail: str = "") -> None:
        """Record that fault ``index`` was cleared now (or at monotonic time ``at``)."""
        fault = self.faults[index]
        self.faults[index] = replace(fault, cleared_ms=self.ms(at))
        self.say(f"CLEAR {fault.name}{': ' + detail if detail else ''}")

    def warmed_up(self) -> None:
        """The steady state begins: switches before now were start-up, not faults."""
        self.warm_at = time.monotonic()
        if self.switches:
            self.notes.append(f"{len(self.switches)} switches while starting, not counted")
        self.switches.clear()

    # -- recording tasks -----------------------------------------------------------------

    def sent(self, seq: int, at: float) -> None:
        self.sent_at[seq] = at

    async def record_deliveries(self, subscriber: DualChannelSubscriber) -> None:
        """Take every envelope the subscriber delivers, until it closes."""
        async for envelope in subscriber:
            batch: list[Envelope] = [envelope]
            while True:  # take what is already waiting, then look at the counters once
                try:
                    batch.append(subscriber.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
            first = subscriber.stats().first_arrivals
            grew = [c for c in Channel if first[c] > self._first_seen[c]]
            self._first_seen = dict(first)
            channel = grew[0] if len(grew) == 1 else None
            now = time.monotonic()
            self.deliveries.extend(Delivery(e.epoch, e.seq, now, channel) for e in batch)

    async def record_events(self, events: AsyncIterable[SubscriberEvent]) -> None:
        """Take the subscriber's fallback events and losses, until the stream closes."""
        async for event in events:
            if isinstance(event, ChannelSwitch):
                self._switch(
                    event.at, event.from_channel, event.to_channel, event.reason, event.silent_for
                )
            elif isinstance(event, BothDown):
                previous = self._active
                down = self._last_down.get(previous) if previous is not None else None
                silent = down.silent_for if down is not None else 0.0
                self._switch(event.at, previous, None, "both channels down", silent)
            elif isinstance(event, ChannelDown):
                self._last_down[event.channel] = event
                self.say(f"{event.channel.value} down: {event.reason}")
            elif isinstance(event, ChannelRecovered):
                self.say(f"{event.channel.value} healthy again after {event.down_for:.1f} s")
            elif isinstance(event, MessageLost):
                self.lost_events.append(event)
                self.say(f"LOST seq {event.first}..{event.last} ({event.reason})")

    async def report_progress(
        self,
        subscriber: DualChannelSubscriber,
        sent: Callable[[], int],
        interval: float,
    ) -> None:
        """Every ``interval`` seconds, one line: counts, first arrivals, active channel."""
        last_first = dict.fromkeys(Channel, 0)
        last_delivered = 0
        while True:
            await anyio.sleep(interval)
            stats = subscriber.stats()
            first = stats.first_arrivals
            delivered = len(self.deliveries)
            active = subscriber.status().active
            self.say(
                f"sent {sent():5d}  delivered {delivered:5d} (+{delivered - last_delivered})"
                f"  first via primary +{first[P] - last_first[P]}"
                f" / secondary +{first[S] - last_first[S]}"
                f"  backfilled {stats.backfilled}"
                f"  active {active.value if active is not None else 'none (both down)'}"
            )
            last_first, last_delivered = dict(first), delivered

    def _switch(
        self,
        at: float,
        from_channel: Channel | None,
        to_channel: Channel | None,
        reason: str,
        silent_for: float,
    ) -> None:
        self._active = to_channel
        self.switches.append(
            SwitchRecord(
                at_ms=self.ms(at),
                from_channel=from_channel.value if from_channel is not None else None,
                to_channel=to_channel.value if to_channel is not None else None,
                reason=reason,
                silent_ms=silent_for * 1000.0,
            )
        )
        if self.warm_at is not None:
            self.switches = attribute(self.switches, self.faults)
        record = self.switches[-1]
        detection, recovery = record.detection_ms, record.recovery_ms
        parts = [f"SWITCH {record.from_channel or 'none'} → {record.to_channel or 'none'}"]
        if detection is not None:
            parts.append(f"detected {detection:.0f} ms after the fault")
        if recovery is not None:
            parts.append(f"{recovery:.0f} ms after the fault cleared")
        if record.silent_ms:
            parts.append(f"{record.from_channel} silent {record.silent_ms:.0f} ms")
        self.say(" · ".join(parts) + f" ({reason})")

    # -- the report ----------------------------------------------------------------------

    def distinct_delivered(self) -> int:
        return len({(d.epoch, d.seq) for d in self.deliveries})

    def false_switches(self) -> int:
        """Switches outside every fault's window (injection to 10 s after clearing)."""
        count = 0
        for switch in self.switches:
            if not any(
                f.injected_ms <= switch.at_ms
                and (f.cleared_ms is None or switch.at_ms <= f.cleared_ms + _FAULT_WINDOW_AFTER_MS)
                for f in self.faults
            ):
                count += 1
        return count

    def latency_ms(self, epoch: int) -> dict[str, float | None]:
        """Publisher call to application delivery, per message: p50, p99, max (ms)."""
        latencies = [
            (d.at - self.sent_at[d.seq]) * 1000.0
            for d in self.deliveries
            if d.epoch == epoch and d.seq in self.sent_at
        ]
        return {
            "p50": _round(percentile(latencies, 50)),
            "p99": _round(percentile(latencies, 99)),
            "max": _round(max(latencies, default=None)),
        }

    def report(
        self,
        *,
        scenario: str,
        rate: float,
        epoch: int,
        sent: int,
        stats: SubscriberStats,
        audit: AuditCheck | None,
        publisher: dict[str, int],
    ) -> Report:
        """The report for a run whose publisher sent seqs ``1..sent`` of ``epoch``."""
        seqs = [d.seq for d in self.deliveries if d.epoch == epoch]
        distinct = set(seqs)
        out_of_order = 0
        highest = 0
        for seq in seqs:
            if seq < highest:
                out_of_order += 1
            highest = max(highest, seq)
        switches = attribute(self.switches, self.faults)
        notes = list(self.notes)
        other = len(self.deliveries) - len(seqs)
        if other:
            notes.append(f"{other} deliveries of another epoch")
        if self.lost_events:
            notes.append(
                "the subscriber declared lost: "
                + ", ".join(f"{e.first}..{e.last} ({e.reason})" for e in self.lost_events)
            )
        return Report(
            scenario=scenario,
            duration_s=round(self.ms() / 1000.0, 3),
            rate=rate,
            sent=sent,
            delivered=len(seqs),
            lost=len(set(range(1, sent + 1)) - distinct),
            duplicates_delivered=len(seqs) - len(distinct),
            out_of_order=out_of_order,
            switches=tuple(switches),
            recovery_ms=tuple(s.recovery_ms for s in switches if s.recovery_ms is not None),
            false_switches=self.false_switches(),
            latency_ms=self.latency_ms(epoch),
            gaps=stats.gaps,
            backfilled=stats.backfilled,
            duplicates_suppressed={c.value: n for c, n in stats.duplicates.items()},
            first_arrivals={c.value: n for c, n in stats.first_arrivals.items()},
            malformed={c.value: n for c, n in stats.malformed.items()},
            foreign={c.value: n for c, n in stats.foreign.items()},
            subscriber_lost=stats.lost,
            faults=tuple(self.faults),
            audit=audit,
            publisher=publisher,
            garbage=tuple(self.garbage),
            notes=tuple(notes),
        )


def attribute(
    switches: Sequence[SwitchRecord], faults: Sequence[FaultRecord]
) -> list[SwitchRecord]:
    """Match each switch to the fault that caused it (see the module docs).

    Pure: called on every switch for the live lines, and once more for the report, when
    every fault's clearing time is known (a switch back can precede the moment a fault
    that cut both channels counts as cleared).
    """
    detected: dict[str, SwitchRecord] = {}
    recovered: set[str] = set()
    out: list[SwitchRecord] = []
    for switch in switches:
        fault_key: str | None = None
        detection: float | None = None
        recovery: float | None = None
        if switch.from_channel is not None:
            for fault in reversed(faults):
                key = _key(fault)
                if (
                    fault.channels in ("both", switch.from_channel)
                    and fault.injected_ms <= switch.at_ms
                    and key not in detected
                ):
                    fault_key, detection = key, switch.at_ms - fault.injected_ms
                    detected[key] = switch
                    break
        if switch.to_channel == P.value:
            for fault in faults:  # the oldest detected fault still waiting for recovery
                key = _key(fault)
                if key in detected and key not in recovered and detected[key] is not switch:
                    recovered.add(key)
                    fault_key = key
                    if fault.cleared_ms is not None:
                        recovery = switch.at_ms - fault.cleared_ms
                    break
        out.append(replace(switch, fault=fault_key, detection_ms=detection, recovery_ms=recovery))
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _key(fault: FaultRecord) -> str:
    return f"{fault.name}@{fault.injected_ms / 1000:.1f}s"
