"""FallbackManager: switch within timeout plus one tick, switch back with hysteresis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualchannel import Channel
from dualchannel.protocol import (
    BothDown,
    ChannelDown,
    ChannelRecovered,
    ChannelSwitch,
    FallbackManager,
    FallbackPolicy,
    Health,
)

P, S = Channel.PRIMARY, Channel.SECONDARY
POLICY = FallbackPolicy()  # primary dead after 0.6 s, recovery: 3 signals over >= 0.4 s
TICK = 0.05
BEAT = 0.2


def drive(manager: FallbackManager, start: float, end: float, beats: dict[Channel, float | None]):  # type: ignore[no-untyped-def]
    """Tick every TICK from start to end; each channel in beats signals at its period."""
    events = []
    now = start
    next_beat = {c: start for c, period in beats.items() if period}
    while now <= end + 1e-9:
        for channel, at in list(next_beat.items()):
            if at <= now + 1e-9:
                manager.observe(channel, now)
                next_beat[channel] = at + beats[channel]  # type: ignore[operator]
        events.extend(manager.tick(now))
        now = round(now + TICK, 6)
    return events


def test_starts_on_the_primary_with_both_healthy() -> None:
    manager = FallbackManager(started_at=0.0)
    assert manager.active is P
    assert manager.health(P) is Health.UP and manager.health(S) is Health.UP
    assert manager.tick(0.5) == []


def test_no_switch_while_heartbeats_keep_coming() -> None:
    manager = FallbackManager(started_at=0.0)
    assert drive(manager, 0.0, 30.0, {P: BEAT, S: 1.0}) == []
    assert manager.active is P and manager.switches == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, POLICY.primary_timeout - TICK), min_size=1, max_size=200))
def test_jitter_within_the_timeout_never_switches(gaps: list[float]) -> None:
    manager = FallbackManager(started_at=0.0)
    now = 0.0
    for gap in gaps:
        # ticks fall between signals, as they do in the subscriber
        target = now + gap
        while now + TICK < target:
            now += TICK
            manager.observe(S, now)
            assert manager.tick(now) == []
        now = target
        manager.observe(P, now)
        manager.observe(S, now)
        assert manager.tick(now) == []
    assert manager.active is P


@settings(max_examples=200, deadline=None)
@given(last_signal=st.floats(0.0, 10.0), tick_phase=st.floats(0.0, TICK))
def test_switch_comes_no_later_than_timeout_plus_one_tick(
    last_signal: float, tick_phase: float
) -> None:
    manager = FallbackManager(started_at=0.0)
    manager.observe(P, last_signal)
    now = last_signal + tick_phase
    switch = None
    while switch is None and now < last_signal + 5:
        manager.observe(S, now)
        for event in manager.tick(now):
            if isinstance(event, ChannelSwitch):
                switch = event
        now += TICK
    assert switch is not None
    assert switch.from_channel is P and switch.to_channel is S
    assert POLICY.primary_timeout < switch.at - last_signal <= POLICY.primary_timeout + TICK + 1e-9
    assert switch.silent_for == pytest.approx(switch.at - last_signal)
    assert "no signal" in switch.reason


def test_switch_to_secondary_then_back_after_recovery() -> None:
    manager = FallbackManager(started_at=0.0)
    events = drive(manager, 0.0, 2.0, {P: BEAT, S: 1.0})
    assert events == []
    # primary goes silent at 2.0 (its last beat), secondary keeps beating
    events = drive(manager, 2.05, 5.0, {S: 1.0})
    down = [e for e in events if isinstance(e, ChannelDown)]
    switches = [e for e in events if isinstance(e, ChannelSwitch)]
    assert [d.channel for d in down] == [P]
    assert [(s.from_channel, s.to_channel) for s in switches] == [(P, S)]
    assert switches[0].at - 2.0 <= POLICY.primary_timeout + TICK + 1e-9
    assert manager.active is S
    # the primary beats again at 5.0; three beats spanning 0.4 s bring it back at 5.4
    events = drive(manager, 5.0, 6.0, {P: BEAT, S: 1.0})
    recovered = [e for e in events if isinstance(e, ChannelRecovered)]
    back = [e for e in events if isinstance(e, ChannelSwitch)]
    assert [r.channel for r in recovered] == [P]
    assert [(s.from_channel, s.to_channel) for s in back] == [(S, P)]
    assert back[0].at == pytest.approx(5.4)
    assert recovered[0].down_for == pytest.approx(back[0].at - switches[0].at)
    assert manager.active is P and manager.switches == 2


def test_a_single_blip_does_not_switch_back() -> None:
    manager = FallbackManager(started_at=0.0)
    manager.observe(S, 0.0)
    drive(manager, 0.0, 1.0, {S: 0.5})
    assert manager.active is S
    manager.observe(P, 1.0)  # one stray packet
    events = drive(manager, 1.05, 3.0, {S: 0.5})
    assert not any(isinstance(e, ChannelSwitch) for e in events)
    assert manager.active is S and manager.health(P) is Health.DOWN


def test_a_streak_broken_by_silence_starts_over() -> None:
    manager = FallbackManager(started_at=0.0)
    drive(manager, 0.0, 1.0, {S: 0.5})
    manager.observe(P, 1.0)
    manager.observe(P, 1.2)
    manager.observe(P, 2.5)  # more than the timeout after the previous signal
    manager.observe(P, 2.6)
    assert manager.health(P) is not Health.UP
    manager.observe(P, 2.9)
    events = manager.tick(2.9)
    assert any(isinstance(e, ChannelSwitch) and e.to_channel is P for e in events)


def test_both_down_then_back() -> None:
    manager = FallbackManager(started_at=0.0)
    events = drive(manager, 0.0, 4.0, {})
    kinds = [type(e) for e in events]
    assert kinds == [ChannelDown, ChannelSwitch, ChannelDown, BothDown]
    assert manager.active is None
    events = drive(manager, 4.0, 5.0, {S: 0.2})
    switch = [e for e in events if isinstance(e, ChannelSwitch)]
    assert len(switch) == 1 and switch[0].from_channel is None and switch[0].to_channel is S


def test_a_reported_link_loss_switches_without_waiting_for_silence() -> None:
    manager = FallbackManager(started_at=0.0)
    manager.observe(P, 1.0)
    manager.report_down(P, 1.01, "room disconnected")
    events = manager.tick(1.01)
    assert [type(e) for e in events] == [ChannelDown, ChannelSwitch]
    assert events[1].reason == "primary down: room disconnected"  # type: ignore[union-attr]


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        FallbackPolicy(primary_timeout=0)
    with pytest.raises(ValueError, match="recovery_signals"):
        FallbackPolicy(recovery_signals=0)


def test_a_primary_never_heard_from_says_so() -> None:
    manager = FallbackManager(started_at=0.0)
    manager.observe(S, 0.5)
    events = manager.tick(0.7)
    switch = next(e for e in events if isinstance(e, ChannelSwitch))
    assert switch.reason.endswith("since start")
    manager2 = FallbackManager(started_at=0.0)
    manager2.observe(P, 0.1)
    manager2.observe(S, 0.5)
    switch2 = next(e for e in manager2.tick(0.8) if isinstance(e, ChannelSwitch))
    assert not switch2.reason.endswith("since start")
