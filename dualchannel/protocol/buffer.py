"""The sequence buffer: two channels in, one exactly-once, in-order stream out.

Theory of operation
-------------------
Every message carries ``(epoch, seq)``: ``epoch`` orders publisher runs, ``seq`` counts from
1 within an epoch. The buffer keeps, per open epoch, the next seq it will deliver
(``next_seq``), the highest seq it knows exists (``known_high``, raised by messages and by
heartbeats, whose ``seq`` is the publisher's last sent), the envelopes that arrived ahead of
``next_seq`` (``held``), and the missing ranges between them (``holes``, oldest first, each
with the time it was first noticed).

``push(envelope, channel, now)`` does one of:

- ``seq == next_seq``: deliver it and every held envelope right behind it;
- ``seq < next_seq`` or already held: a duplicate (or a late arrival of a range already
  declared lost), dropped and counted against the channel that brought it second;
- ``seq > next_seq``: hold it; any new range it uncovers becomes a hole noticed at ``now``.

``tick(now)`` reports holes older than the reorder window as :class:`Gap` (once per hole,
so the consumer can backfill it) and declares holes older than the maximum wait lost: a
:class:`MessageLost` names the range and delivery moves on past it.

Epochs: a message of an epoch older than the oldest open one is stale and dropped. A newer
epoch opens behind the current one; the current epoch is finished once nothing is missing
up to its ``known_high`` (or its holes have expired), and then the next epoch delivers. A
newly seen epoch starts at seq 1, so a consumer that joins late sees the start of the
epoch as a hole and backfills it from the relay.

Memory: at most ``max_held`` envelopes wait. Holding one more first declares the oldest
hole lost (a :class:`MessageLost` with ``reason="overflow"``), which releases what waited
behind it; every such release is counted in ``stats().overflows``.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from ..envelope import Channel, Envelope, MessageType

__all__ = [
    "BufferEvent",
    "BufferPolicy",
    "BufferStats",
    "Gap",
    "MessageLost",
    "SequenceBuffer",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferPolicy:
    """How long the buffer waits, and how much it holds.

    ``reorder_window``: how long a hole may stay open before it is reported as a
    :class:`Gap` for backfill. ``max_wait``: how long before it is declared lost.
    ``max_held``: the most envelopes held out of order at once.
    """

    reorder_window: float = 0.150
    max_wait: float = 5.0
    max_held: int = 10_000

    def __post_init__(self) -> None:
        if not 0 <= self.reorder_window <= self.max_wait:
            raise ValueError("BufferPolicy needs 0 <= reorder_window <= max_wait")
        if self.max_held < 1:
            raise ValueError("BufferPolicy.max_held must be at least 1")


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages ``first..last`` of ``epoch`` are missing; fetch them to fill the hole."""

    epoch: int
    first: int
    last: int
    at: float


@dataclass(frozen=True, slots=True)
class MessageLost:
    """Messages ``first..last`` of ``epoch`` never arrived in time; delivery moved on."""

    epoch: int
    first: int
    last: int
    at: float
    reason: Literal["timeout", "overflow", "epoch"] = "timeout"

    @property
    def count(self) -> int:
        return self.last - self.first + 1


BufferEvent = Envelope | Gap | MessageLost


@dataclass(slots=True)
class BufferStats:
    """Counters since the buffer was made. ``first_arrivals``/``duplicates`` are per channel."""

    delivered: int = 0
    first_arrivals: dict[Channel, int] = field(default_factory=lambda: dict.fromkeys(Channel, 0))
    duplicates: dict[Channel, int] = field(default_factory=lambda: dict.fromkeys(Channel, 0))
    backfilled: int = 0
    gaps: int = 0
    lost: int = 0
    late: int = 0
    stale: int = 0
    overflows: int = 0
    held: int = 0
    epoch: int | None = None


class _Hole:
    __slots__ = ("first", "last", "noticed", "reported")

    def __init__(self, first: int, last: int, noticed: float, reported: bool = False) -> None:
        self.first = first
        self.last = last
        self.noticed = noticed
        self.reported = reported


class _Epoch:
    __slots__ = ("epoch", "held", "holes", "known_high", "next_seq")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.next_seq = 1
        self.known_high = 0
        self.held: dict[int, Envelope] = {}
        self.holes: list[_Hole] = []

    def finished(self) -> bool:
        return self.next_seq > self.known_high


_BACKFILL = None  # channel marker for envelopes that arrive through fill()


class SequenceBuffer:
    """Merge envelopes from both channels into one ordered, duplicate-free stream.

    Pure and synchronous: ``now`` is any monotonic time in seconds, chosen by the caller.
    One buffer serves one session.
    """

    def __init__(self, policy: BufferPolicy | None = None) -> None:
        self.policy = policy or BufferPolicy()
        self._epochs: list[_Epoch] = []  # open epochs, oldest first; [0] delivers
        self._closed_below = -1  # epochs <= this are finished or superseded
        self._held_total = 0
        self._lost_ranges: deque[tuple[int, int, int]] = deque(maxlen=256)
        self._events: list[BufferEvent] = []
        self._stats = BufferStats()

    # -- input ---------------------------------------------------------------------------

    def push(self, envelope: Envelope, channel: Channel, now: float) -> list[Envelope]:
        """Take one envelope from ``channel``; return those now deliverable, in order.

        Heartbeats are never delivered; their ``seq`` (the publisher's last sent) tells
        the buffer what should exist, so a missing tail becomes a hole.
        """
        state = self._current
        if (
            state is not None
            and envelope.epoch == state.epoch
            and envelope.seq == state.next_seq
            and not state.held
            and envelope.type is not MessageType.HEARTBEAT
        ):
            # Fast path: the next message, nothing waiting.
            state.next_seq += 1
            if state.known_high < envelope.seq:
                state.known_high = envelope.seq
            stats = self._stats
            stats.delivered += 1
            if channel is not _BACKFILL:
                stats.first_arrivals[channel] += 1
            else:
                stats.backfilled += 1
            if state.holes:
                # the only hole can be this seq, noticed through a heartbeat
                self._fill_hole(state, envelope.seq)
            if len(self._epochs) > 1 and state.finished():
                out = [envelope]
                self._advance_epochs(out, now)
                return out
            return [envelope]
        return self._push_slow(envelope, channel, now)

    def fill(self, envelopes: list[Envelope], now: float) -> list[Envelope]:
        """Take envelopes fetched to fill a :class:`Gap` (from the relay's replay route)."""
        out: list[Envelope] = []
        for envelope in envelopes:
            out.extend(self.push(envelope, _BACKFILL, now))  # type: ignore[arg-type]
        return out

    def tick(self, now: float) -> list[BufferEvent]:
        """Report holes past the reorder window, expire holes past the maximum wait.

        Returns events in the order they happened: :class:`Gap`, :class:`MessageLost`, and
        the envelopes that a loss released, interleaved where they belong.
        """
        events, self._events = self._events, []
        policy = self.policy
        for state in self._epochs:
            for hole in state.holes:
                if not hole.reported and now - hole.noticed >= policy.reorder_window:
                    hole.reported = True
                    self._stats.gaps += 1
                    events.append(Gap(state.epoch, hole.first, hole.last, now))
        while self._epochs:
            state = self._epochs[0]
            if not state.holes or now - state.holes[0].noticed < policy.max_wait:
                break
            self._declare_front_lost(state, now, "timeout", events)
            self._advance_epochs(events, now)
        return events

    # -- output --------------------------------------------------------------------------

    def stats(self) -> BufferStats:
        """A snapshot of the counters."""
        s = self._stats
        current = self._current
        return BufferStats(
            delivered=s.delivered,
            first_arrivals=dict(s.first_arrivals),
            duplicates=dict(s.duplicates),
            backfilled=s.backfilled,
            gaps=s.gaps,
            lost=s.lost,
            late=s.late,
            stale=s.stale,
            overflows=s.overflows,
            held=self._held_total,
            epoch=current.epoch if current else None,
        )

    def missing(self) -> list[tuple[int, int, int]]:
        """The open holes as ``(epoch, first, last)``, oldest first."""
        return [(s.epoch, h.first, h.last) for s in self._epochs for h in s.holes]

    def position(self) -> tuple[int, int] | None:
        """``(epoch, last delivered seq)`` of the epoch now delivering, if any."""
        current = self._current
        return (current.epoch, current.next_seq - 1) if current else None

    # -- internals -----------------------------------------------------------------------

    @property
    def _current(self) -> _Epoch | None:
        return self._epochs[0] if self._epochs else None

    def _epoch_state(self, epoch: int) -> _Epoch | None:
        for state in self._epochs:
            if state.epoch == epoch:
                return state
        if epoch <= self._closed_below:
            return None
        if self._epochs and epoch < self._epochs[0].epoch and self._epochs[0].next_seq > 1:
            # An older publisher run showed up after a newer one started delivering:
            # delivering it now would break order, so it is stale.
            self._closed_below = max(self._closed_below, self._epochs[0].epoch - 1)
            return None
        state = _Epoch(epoch)
        position = bisect.bisect([s.epoch for s in self._epochs], epoch)
        self._epochs.insert(position, state)
        if self._stats.epoch is None:
            self._stats.epoch = epoch
        return state

    def _push_slow(self, envelope: Envelope, channel: Channel, now: float) -> list[Envelope]:
        seq = envelope.seq
        if envelope.type is MessageType.HEARTBEAT and seq == 0:
            return []  # "nothing sent yet": nothing to learn, no epoch to open
        state = self._epoch_state(envelope.epoch)
        stats = self._stats
        if state is None:
            stats.stale += 1
            return []
        out: list[Envelope] = []
        if envelope.type is MessageType.HEARTBEAT:
            self._raise_known_high(state, seq, now)
            if len(self._epochs) > 1 and self._epochs[0].finished():
                self._advance_epochs(out, now)
            return out
        if seq < state.next_seq or seq in state.held:
            if self._was_lost(state.epoch, seq):
                stats.late += 1
            elif channel is not _BACKFILL:
                stats.duplicates[channel] += 1
            return []
        deliverable = seq == state.next_seq and state is self._epochs[0]
        if not deliverable and self._held_total >= self.policy.max_held:
            # Make room first: the oldest hole is declared lost, releasing what waited.
            self._overflow(now, out)
            return out + self._push_slow(envelope, channel, now)
        if channel is not _BACKFILL:
            stats.first_arrivals[channel] += 1
        else:
            stats.backfilled += 1
        if seq > state.known_high:
            first = max(state.known_high + 1, state.next_seq)
            if first < seq:
                state.holes.append(_Hole(first, seq - 1, now))
            state.known_high = seq
        elif state.holes:
            self._fill_hole(state, seq)
        if deliverable:
            state.next_seq = seq + 1
            stats.delivered += 1
            out.append(envelope)
            self._release_held(state, out)
        else:
            state.held[seq] = envelope
            self._held_total += 1
        if len(self._epochs) > 1 and self._epochs[0].finished():
            self._advance_epochs(out, now)
        return out

    def _raise_known_high(self, state: _Epoch, seq: int, now: float) -> None:
        if seq > state.known_high:
            first = max(state.known_high + 1, state.next_seq)
            if first <= seq:
                state.holes.append(_Hole(first, seq, now))
            state.known_high = seq

    def _fill_hole(self, state: _Epoch, seq: int) -> None:
        holes = state.holes
        for index, hole in enumerate(holes):
            if hole.first <= seq <= hole.last:
                if hole.first == hole.last:
                    del holes[index]
                elif seq == hole.first:
                    hole.first += 1
                elif seq == hole.last:
                    hole.last -= 1
                else:
                    tail = _Hole(seq + 1, hole.last, hole.noticed, hole.reported)
                    hole.last = seq - 1
                    holes.insert(index + 1, tail)
                return

    def _release_held(self, state: _Epoch, out: list[Any]) -> None:
        held = state.held
        stats = self._stats
        while state.next_seq in held:
            envelope = held.pop(state.next_seq)
            self._held_total -= 1
            state.next_seq += 1
            stats.delivered += 1
            out.append(envelope)

    def _declare_front_lost(
        self,
        state: _Epoch,
        now: float,
        reason: Literal["timeout", "overflow", "epoch"],
        out: list[Any],
    ) -> MessageLost:
        hole = state.holes.pop(0)
        lost = MessageLost(state.epoch, hole.first, hole.last, now, reason)
        self._stats.lost += lost.count
        self._lost_ranges.append((state.epoch, hole.first, hole.last))
        state.next_seq = hole.last + 1
        if reason == "overflow":
            self._stats.overflows += 1
            self._events.append(lost)
        else:
            out.append(lost)
        self._release_held(state, out)
        return lost

    def _overflow(self, now: float, out: list[Any]) -> None:
        while self._held_total >= self.policy.max_held:
            state = self._epochs[0]
            if not state.holes:  # cannot happen while anything is held; guard the loop
                break
            self._declare_front_lost(state, now, "overflow", out)
            self._advance_epochs(out, now)

    def _advance_epochs(self, out: list[Any], now: float) -> None:
        """Close finished epochs while a newer one waits; start delivering the next."""
        while len(self._epochs) > 1 and self._epochs[0].finished():
            done = self._epochs.pop(0)
            self._closed_below = done.epoch
            nxt = self._epochs[0]
            self._stats.epoch = nxt.epoch
            self._release_held(nxt, out)

    def _was_lost(self, epoch: int, seq: int) -> bool:
        return any(e == epoch and a <= seq <= b for e, a, b in self._lost_ranges)
