"""SequenceBuffer: exactly once, in order, whatever the two channels do."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualchannel import Channel, Envelope
from dualchannel.protocol import BufferPolicy, Gap, MessageLost, SequenceBuffer

from .helpers import EPOCH, heartbeat, transcript

P, S = Channel.PRIMARY, Channel.SECONDARY
POLICY = BufferPolicy()  # reorder window 150 ms, max wait 5 s
TICK = 0.05


def seqs(items: list[object]) -> list[int]:
    return [e.seq for e in items if isinstance(e, Envelope)]


# -- hand-written cases ------------------------------------------------------------------


def test_in_order_on_one_channel_is_delivered_at_once() -> None:
    buffer = SequenceBuffer()
    out = [e for n in range(1, 6) for e in buffer.push(transcript(n), P, 0.0)]
    assert seqs(out) == [1, 2, 3, 4, 5]
    stats = buffer.stats()
    assert stats.delivered == 5 and stats.first_arrivals[P] == 5 and stats.held == 0


def test_the_second_copy_is_dropped_whichever_channel_brings_it() -> None:
    buffer = SequenceBuffer()
    assert seqs(buffer.push(transcript(1), S, 0.0)) == [1]
    assert buffer.push(transcript(1), P, 0.0) == []
    assert seqs(buffer.push(transcript(2), P, 0.0)) == [2]
    assert buffer.push(transcript(2), S, 0.0) == []
    stats = buffer.stats()
    assert stats.first_arrivals == {P: 1, S: 1}
    assert stats.duplicates == {P: 1, S: 1}


def test_out_of_order_waits_then_reports_a_gap_after_the_reorder_window() -> None:
    buffer = SequenceBuffer()
    buffer.push(transcript(1), P, 0.0)
    assert buffer.push(transcript(4), P, 0.01) == []
    assert buffer.tick(0.1) == []  # inside the window: still waiting quietly
    assert buffer.tick(0.2) == [Gap(EPOCH, 2, 3, 0.2)]
    assert buffer.tick(0.3) == []  # reported once
    assert seqs(buffer.fill([transcript(2), transcript(3)], 0.3)) == [2, 3, 4]
    assert buffer.stats().backfilled == 2 and buffer.stats().gaps == 1


def test_a_gap_never_filled_is_declared_lost_and_delivery_moves_on() -> None:
    buffer = SequenceBuffer()
    buffer.push(transcript(1), P, 0.0)
    buffer.push(transcript(3), P, 1.0)
    buffer.push(transcript(4), S, 1.1)
    assert [type(e) for e in buffer.tick(1.2)] == [Gap]
    assert buffer.tick(5.9) == []
    events = buffer.tick(6.0)
    assert events[0] == MessageLost(EPOCH, 2, 2, 6.0, "timeout")
    assert seqs(events) == [3, 4]
    # the lost message turning up afterwards is late, not delivered, not a duplicate
    assert buffer.push(transcript(2), S, 6.5) == []
    stats = buffer.stats()
    assert stats.lost == 1 and stats.late == 1 and stats.duplicates == {P: 0, S: 0}


def test_a_heartbeat_ahead_of_delivery_reveals_a_missing_tail() -> None:
    buffer = SequenceBuffer()
    buffer.push(transcript(1), P, 0.0)
    assert buffer.push(heartbeat(3), P, 0.2) == []
    assert buffer.missing() == [(EPOCH, 2, 3)]
    assert buffer.tick(0.4) == [Gap(EPOCH, 2, 3, 0.4)]
    assert seqs(buffer.push(transcript(2), S, 0.5)) == [2]
    assert seqs(buffer.push(transcript(3), S, 0.5)) == [3]
    assert buffer.missing() == []


def test_a_heartbeat_at_or_behind_delivery_changes_nothing() -> None:
    buffer = SequenceBuffer()
    buffer.push(transcript(1), P, 0.0)
    buffer.push(heartbeat(1), P, 0.1)
    buffer.push(heartbeat(0), S, 0.1)
    assert buffer.missing() == [] and buffer.tick(10.0) == []


def test_a_newer_epoch_waits_until_the_older_one_is_complete() -> None:
    buffer = SequenceBuffer()
    buffer.push(transcript(1), P, 0.0)
    buffer.push(transcript(3), P, 0.0)  # 2 is still in flight on the other channel
    assert buffer.push(transcript(1, epoch=EPOCH + 1), P, 0.1) == []
    out = buffer.push(transcript(2), S, 0.2)
    assert [(e.epoch, e.seq) for e in out] == [(EPOCH, 2), (EPOCH, 3), (EPOCH + 1, 1)]
    assert buffer.position() == (EPOCH + 1, 1)
    # the old epoch is finished: its copies are stale now
    assert buffer.push(transcript(3), S, 0.3) == []
    assert buffer.stats().stale == 1


def test_an_older_epoch_after_a_newer_one_delivered_is_stale() -> None:
    buffer = SequenceBuffer()
    buffer.push(transcript(1, epoch=EPOCH + 1), P, 0.0)
    assert buffer.push(transcript(1), S, 0.1) == []
    assert buffer.stats().stale == 1 and buffer.stats().delivered == 1


def test_a_late_joiner_backfills_the_start_of_the_epoch() -> None:
    buffer = SequenceBuffer()
    assert buffer.push(transcript(40), P, 0.0) == []
    assert buffer.tick(0.2) == [Gap(EPOCH, 1, 39, 0.2)]
    out = buffer.fill([transcript(n) for n in range(1, 40)], 0.3)
    assert seqs(out) == list(range(1, 41))


def test_memory_is_bounded_and_overflow_is_explicit_and_counted() -> None:
    buffer = SequenceBuffer(BufferPolicy(max_held=10))
    buffer.push(transcript(1), P, 0.0)
    for n in range(3, 13):  # 2 is missing; ten held
        assert buffer.push(transcript(n), P, 0.0) == []
    assert buffer.stats().held == 10
    out = buffer.push(transcript(13), P, 0.0)  # one more: the hole at 2 is given up
    assert seqs(out) == list(range(3, 14))
    stats = buffer.stats()
    assert stats.overflows == 1 and stats.lost == 1 and stats.held == 0
    assert buffer.tick(0.01) == [MessageLost(EPOCH, 2, 2, 0.0, "overflow")]


def test_memory_stays_flat_over_a_long_in_order_stream() -> None:
    buffer = SequenceBuffer()
    for n in range(1, 50_001):
        buffer.push(transcript(n), P if n % 2 else S, 0.0)
    assert buffer.stats().held == 0 and buffer.missing() == []
    assert buffer._held_total == 0  # nothing retained per delivered message


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="reorder_window"):
        BufferPolicy(reorder_window=6.0, max_wait=5.0)
    with pytest.raises(ValueError, match="max_held"):
        BufferPolicy(max_held=0)


# -- properties --------------------------------------------------------------------------

N_MAX = 60


@st.composite
def deliveries(
    draw: st.DrawFn, *, allow_missing: bool
) -> tuple[int, list[tuple[float, int, Channel]], set[int]]:
    """A seq stream 1..n spread over both channels with any duplication and delay.

    Returns (n, arrivals as (time, seq, channel), the seqs that reach neither channel).
    A final heartbeat announces n, so a missing tail is known.
    """
    n = draw(st.integers(1, N_MAX))
    arrivals: list[tuple[float, int, Channel]] = []
    missing: set[int] = set()
    for seq in range(1, n + 1):
        sent = seq * 0.01
        copies = draw(
            st.lists(
                st.tuples(st.sampled_from([P, S]), st.floats(0.0, 1.0)),
                min_size=0 if allow_missing else 1,
                max_size=4,
            )
        )
        if not copies:
            missing.add(seq)
        arrivals.extend((sent + delay, seq, channel) for channel, delay in copies)
    arrivals.append((n * 0.01 + draw(st.floats(0.0, 1.0)), -n, draw(st.sampled_from([P, S]))))
    return n, arrivals, missing


@functools.cache
def _message(seq: int) -> Envelope:
    return heartbeat(-seq) if seq < 0 else transcript(seq)


def run(arrivals: list[tuple[float, int, Channel]]) -> tuple[list[int], list[MessageLost]]:
    buffer = SequenceBuffer(POLICY)
    delivered: list[int] = []
    lost: list[MessageLost] = []
    now = 0.0

    def take(items: list[object]) -> None:
        for item in items:
            if isinstance(item, Envelope):
                delivered.append(item.seq)
            elif isinstance(item, MessageLost):
                lost.append(item)

    for at, seq, channel in sorted(arrivals, key=lambda a: a[0]):
        while now + TICK <= at:
            now += TICK
            take(buffer.tick(now))  # type: ignore[arg-type]
        take(buffer.push(_message(seq), channel, at))  # type: ignore[arg-type]
    end = now + POLICY.max_wait + 1.0
    while now < end:
        now += TICK
        take(buffer.tick(now))  # type: ignore[arg-type]
    stats = buffer.stats()
    assert stats.held == 0 and buffer.missing() == []
    return delivered, lost


def runs(seqs: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if out and out[-1][1] == seq - 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


@settings(max_examples=200, deadline=None)
@given(deliveries(allow_missing=False))
def test_any_interleaving_is_delivered_exactly_once_in_order(case) -> None:  # type: ignore[no-untyped-def]
    n, arrivals, _ = case
    delivered, lost = run(arrivals)
    assert delivered == list(range(1, n + 1))
    assert lost == []


@settings(max_examples=200, deadline=None)
@given(deliveries(allow_missing=True))
def test_exactly_the_ranges_missing_on_both_channels_are_lost(case) -> None:  # type: ignore[no-untyped-def]
    n, arrivals, missing = case
    delivered, lost = run(arrivals)
    assert delivered == [seq for seq in range(1, n + 1) if seq not in missing]
    assert [(m.first, m.last) for m in lost] == runs(missing)
    assert all(m.reason == "timeout" and m.epoch == EPOCH for m in lost)


def test_a_heartbeat_of_an_idle_publisher_opens_no_epoch() -> None:
    buffer = SequenceBuffer()
    assert buffer.push(heartbeat(0, epoch=0), S, 0.0) == []
    assert buffer.position() is None
    assert seqs(buffer.push(transcript(1), P, 0.1)) == [1]
