"""The fallback manager: which channel is alive, and which one the consumer leans on.

Theory of operation
-------------------
Each channel has a health state driven by three inputs:

- ``SIGNAL``: anything arrived on it (a message or a heartbeat): :meth:`FallbackManager.observe`;
- ``SILENCE``: :meth:`FallbackManager.tick` found it quiet for longer than its timeout;
- ``LINK_DOWN``: its adapter reported the link gone (room disconnected, stream closed):
  :meth:`FallbackManager.report_down`.

A channel that is UP goes DOWN on silence or a lost link. A DOWN channel that signals again
is RECOVERING; it is UP again only after ``recovery_signals`` signals in a row (none further
apart than the timeout) spanning at least ``recovery_span`` seconds, so a flapping link does
not bounce the consumer back and forth (hysteresis). The health transitions are the table
``_HEALTH`` below.

The active channel follows from the two health states: the primary while it is UP, else the
secondary while it is UP, else none (both down). Every change of the active channel is a
:class:`ChannelSwitch`; the loss of both is a :class:`BothDown`. Changes of a channel's own
health are :class:`ChannelDown` and :class:`ChannelRecovered`.

Timing: with the defaults (heartbeats every 200 ms, dead after 600 ms of silence) and a
tick every 50 ms, a dead primary is switched away from at most 650 ms after its last
signal. Events produced by :meth:`observe` (recoveries) are returned by the next
:meth:`tick`. Pure and synchronous: ``now`` is supplied by the caller.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from ..envelope import Channel

__all__ = [
    "BothDown",
    "ChannelDown",
    "ChannelRecovered",
    "ChannelSwitch",
    "FallbackEvent",
    "FallbackManager",
    "FallbackPolicy",
    "Health",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackPolicy:
    """When a channel counts as dead, and when as healthy again.

    ``primary_timeout``: silence after which the primary is dead (3 missed 200 ms
    heartbeats). ``secondary_timeout``: the same for the relay's stream, whose heartbeats
    come every second. ``recovery_signals`` signals spanning ``recovery_span`` seconds make a
    dead channel healthy again.
    """

    primary_timeout: float = 0.6
    secondary_timeout: float = 3.0
    recovery_signals: int = 3
    recovery_span: float = 0.4

    def __post_init__(self) -> None:
        if self.primary_timeout <= 0 or self.secondary_timeout <= 0:
            raise ValueError("FallbackPolicy timeouts must be positive")
        if self.recovery_signals < 1 or self.recovery_span < 0:
            raise ValueError("FallbackPolicy needs recovery_signals >= 1 and recovery_span >= 0")

    def timeout(self, channel: Channel) -> float:
        return self.primary_timeout if channel is Channel.PRIMARY else self.secondary_timeout


# Times are floats: a span of "exactly" 0.4 s computed as 2.9 - 2.5 is 0.39999999999999997.
_EPSILON: Final = 1e-9


class Health(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    RECOVERING = "recovering"


class _Input(enum.Enum):
    SIGNAL = "signal"
    SILENCE = "silence"
    LINK_DOWN = "link_down"


# (state, input) -> next state. A RECOVERING channel that signals stays RECOVERING until its
# streak is long enough; that guard is the one rule not in the table (see _signal).
_HEALTH: Final[dict[tuple[Health, _Input], Health]] = {
    (Health.UP, _Input.SIGNAL): Health.UP,
    (Health.UP, _Input.SILENCE): Health.DOWN,
    (Health.UP, _Input.LINK_DOWN): Health.DOWN,
    (Health.DOWN, _Input.SIGNAL): Health.RECOVERING,
    (Health.DOWN, _Input.SILENCE): Health.DOWN,
    (Health.DOWN, _Input.LINK_DOWN): Health.DOWN,
    (Health.RECOVERING, _Input.SIGNAL): Health.RECOVERING,
    (Health.RECOVERING, _Input.SILENCE): Health.DOWN,
    (Health.RECOVERING, _Input.LINK_DOWN): Health.DOWN,
}


@dataclass(frozen=True, slots=True)
class ChannelSwitch:
    """The consumer now leans on ``to_channel``.

    ``from_channel`` is ``None`` when coming back from both channels down; ``to_channel`` is
    never ``None`` (losing both is a :class:`BothDown`). ``at`` is when the switch was
    decided; ``silent_for`` is how long the channel switched away from had been silent then
    (0.0 for a switch back to a recovered primary).
    """

    from_channel: Channel | None
    to_channel: Channel
    reason: str
    at: float
    silent_for: float


@dataclass(frozen=True, slots=True)
class ChannelDown:
    """``channel`` was found dead: silent for ``silent_for`` seconds, or its link dropped."""

    channel: Channel
    reason: str
    at: float
    silent_for: float


@dataclass(frozen=True, slots=True)
class ChannelRecovered:
    """``channel`` is healthy again after ``down_for`` seconds."""

    channel: Channel
    at: float
    down_for: float


@dataclass(frozen=True, slots=True)
class BothDown:
    """Neither channel is healthy; messages wait in the sender's outbox and the relay."""

    at: float


FallbackEvent = ChannelSwitch | ChannelDown | ChannelRecovered | BothDown


class _ChannelState:
    __slots__ = (
        "down_reason",
        "down_since",
        "health",
        "heard",
        "last_signal",
        "streak",
        "streak_start",
    )

    def __init__(self, now: float) -> None:
        self.heard = False  # has it ever signalled? (only changes the wording of reasons)
        self.health = Health.UP
        self.last_signal = now  # a grace period: a channel is presumed alive at start
        self.down_since = now
        self.down_reason = ""
        self.streak = 0
        self.streak_start = now


class FallbackManager:
    """Track both channels' health from signals and ticks; say which one is active.

    ``started_at`` is the ``now`` of construction: both channels are presumed healthy then,
    so a channel that never signals is declared dead one timeout later.
    """

    def __init__(self, policy: FallbackPolicy | None = None, *, started_at: float) -> None:
        self.policy = policy or FallbackPolicy()
        self._channels = {channel: _ChannelState(started_at) for channel in Channel}
        self._active: Channel | None = Channel.PRIMARY
        self._events: list[FallbackEvent] = []
        self.switches = 0

    # -- inputs --------------------------------------------------------------------------

    def observe(self, channel: Channel, now: float) -> None:
        """Something arrived on ``channel`` at ``now`` (a message or a heartbeat)."""
        state = self._channels[channel]
        previous = state.health
        if previous is Health.UP:  # the hot path: nothing to decide
            state.last_signal = now
            state.heard = True
            return
        state.heard = True
        if previous is Health.RECOVERING and now - state.last_signal > self.policy.timeout(channel):
            state.streak = 0  # the streak was broken by silence between ticks
        state.health = _HEALTH[(previous, _Input.SIGNAL)]
        if state.streak == 0:
            state.streak_start = now
        state.streak += 1
        state.last_signal = now
        if (
            state.streak >= self.policy.recovery_signals
            and now - state.streak_start >= self.policy.recovery_span - _EPSILON
        ):
            state.health = Health.UP
            state.streak = 0
            self._events.append(ChannelRecovered(channel, now, now - state.down_since))
            self._decide(now, reason=f"{channel.value} recovered")

    def report_down(self, channel: Channel, now: float, reason: str) -> None:
        """The adapter for ``channel`` knows its link is gone (no need to wait for silence)."""
        self._apply(channel, _Input.LINK_DOWN, now, reason)

    def tick(self, now: float) -> list[FallbackEvent]:
        """Check for silence; return every event since the last tick, in order."""
        for channel, state in self._channels.items():
            if now - state.last_signal > self.policy.timeout(channel):
                silent = now - state.last_signal
                since = " since start" if not state.heard else ""
                reason = f"no signal for {silent * 1000:.0f} ms{since}"
                self._apply(channel, _Input.SILENCE, now, reason)
        events, self._events = self._events, []
        return events

    # -- outputs -------------------------------------------------------------------------

    @property
    def active(self) -> Channel | None:
        """The channel the consumer leans on now; ``None`` while both are down."""
        return self._active

    def health(self, channel: Channel) -> Health:
        return self._channels[channel].health

    def silent_for(self, channel: Channel, now: float) -> float:
        """Seconds since ``channel`` last signalled."""
        return now - self._channels[channel].last_signal

    # -- internals -----------------------------------------------------------------------

    def _apply(self, channel: Channel, event: _Input, now: float, reason: str) -> None:
        state = self._channels[channel]
        previous = state.health
        state.health = _HEALTH[(previous, event)]
        if state.health is Health.DOWN:
            state.streak = 0
        if previous is Health.UP and state.health is Health.DOWN:
            state.down_since = now
            state.down_reason = reason
            silent = now - state.last_signal
            self._events.append(ChannelDown(channel, reason, now, silent))
            self._decide(now, reason=f"{channel.value} down: {reason}")

    def _decide(self, now: float, *, reason: str) -> None:
        up = {c for c, s in self._channels.items() if s.health is Health.UP}
        target = (
            Channel.PRIMARY
            if Channel.PRIMARY in up
            else Channel.SECONDARY
            if Channel.SECONDARY in up
            else None
        )
        if target is self._active:
            return
        previous, self._active = self._active, target
        if target is None:
            self._events.append(BothDown(now))
            return
        silent = 0.0
        if previous is not None and self._channels[previous].health is not Health.UP:
            silent = now - self._channels[previous].last_signal
        self.switches += 1
        self._events.append(ChannelSwitch(previous, target, reason, now, silent))
