"""The consumer side: both channels in, one exactly-once, in-order stream out.

::

    async with DualChannelSubscriber(
        session_id="lesson-42",
        livekit_url="ws://127.0.0.1:7880", livekit_token=token,
        relay_url="http://127.0.0.1:8000", relay_token=token,
    ) as subscriber:
        subscriber.on_switch(print)
        async for envelope in subscriber:
            ...

Inside, one task owns the protocol core (a :class:`~dualchannel.protocol.SequenceBuffer`
and a :class:`~dualchannel.protocol.FallbackManager`). Everything else only feeds it
through one bounded inbound stream: LiveKit's sync ``data_received`` callback, the SSE
feed, link state changes and backfill results. The core task ticks every 50 ms: the
buffer reports gaps (which the backfill task fetches from the relay's replay route) and
the fallback manager reports channel switches (which the dispatcher task hands to
callbacks, so a slow or failing callback never holds up delivery).
"""

from __future__ import annotations

import enum
import inspect
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from livekit import rtc

from .channels.livekit import DataLink, LinkState, LiveKitLink
from .channels.sse import RelayEvent, RelayFeed, SSEFeed
from .envelope import DEFAULT_MAX_ENVELOPE_BYTES, Channel, Envelope
from .errors import (
    ClosedError,
    ConfigurationError,
    EnvelopeError,
    RelayAuthError,
    RelayError,
)
from .protocol import (
    BufferPolicy,
    ChannelSwitch,
    FallbackEvent,
    FallbackManager,
    FallbackPolicy,
    Gap,
    Health,
    MessageLost,
    RetryPolicy,
    SequenceBuffer,
    backoff_delays,
)

__all__ = [
    "DualChannelSubscriber",
    "EventStream",
    "SubscriberStats",
    "SubscriberStatus",
    "SwitchCallback",
]

logger = logging.getLogger("dualchannel.subscriber")

SwitchCallback = Callable[[ChannelSwitch], Awaitable[None] | None]
SubscriberEvent = FallbackEvent | MessageLost


class _Kind(enum.Enum):
    PACKET = "packet"
    STATE = "state"
    BACKFILL = "backfill"


_Inbound = tuple[_Kind, Channel, Any, float]


def _setter(event: anyio.Event) -> Callable[..., None]:
    return lambda *_: event.set()


class EventStream:
    """The events a subscriber reports, from the moment it was asked for them."""

    def __init__(
        self,
        receive: MemoryObjectReceiveStream[SubscriberEvent],
        send: MemoryObjectSendStream[SubscriberEvent],
    ) -> None:
        self._receive = receive
        self._send = send

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SubscriberEvent:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()


class _Lifecycle(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(slots=True)
class SubscriberStats:
    """Counters since the subscriber opened; per-channel ones are keyed by Channel."""

    delivered: int = 0
    first_arrivals: dict[Channel, int] = field(default_factory=lambda: dict.fromkeys(Channel, 0))
    duplicates: dict[Channel, int] = field(default_factory=lambda: dict.fromkeys(Channel, 0))
    malformed: dict[Channel, int] = field(default_factory=lambda: dict.fromkeys(Channel, 0))
    foreign: dict[Channel, int] = field(default_factory=lambda: dict.fromkeys(Channel, 0))
    gaps: int = 0
    backfilled: int = 0
    backfill_requests: int = 0
    lost: int = 0
    late: int = 0
    stale: int = 0
    overflowed: int = 0
    switches: int = 0


@dataclass(frozen=True, slots=True)
class SubscriberStatus:
    """Where things stand: the active channel and each channel's health."""

    active: Channel | None
    health: dict[Channel, Health]
    silent_for: dict[Channel, float]
    link_state: dict[Channel, LinkState | None]
    secondary_error: str | None


class DualChannelSubscriber:
    """Merge a session's LiveKit data channel and relay stream into one ordered stream.

    Give the primary as ``livekit_url`` + ``livekit_token`` (the subscriber joins and
    leaves the room, reconnecting if the room is lost), as ``room`` (a connected
    ``livekit.rtc.Room`` that stays yours), or as ``link`` (any
    :class:`~dualchannel.channels.DataLink`). Give the secondary as ``relay_url`` +
    ``relay_token`` (the same LiveKit token is accepted by the relay) or as ``feed`` (any
    :class:`~dualchannel.channels.sse.RelayFeed`). Either channel may be left out.

    ``mode="both"`` (the default) merges every copy from both channels. ``mode="warm"``
    keeps the relay stream connected but merges its copies only while the primary is not
    the active channel; gaps are still backfilled from the relay.
    """

    def __init__(
        self,
        session_id: str,
        *,
        livekit_url: str | None = None,
        livekit_token: str | None = None,
        room: rtc.Room | None = None,
        link: DataLink | None = None,
        publisher_identity: str | None = None,
        relay_url: str | None = None,
        relay_token: str | None = None,
        feed: RelayFeed | None = None,
        mode: Literal["both", "warm"] = "both",
        buffer: BufferPolicy = BufferPolicy(),
        fallback: FallbackPolicy = FallbackPolicy(),
        tick_interval: float = 0.05,
        inbound_capacity: int = 10_000,
        max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
        reconnect: RetryPolicy = RetryPolicy(initial=0.25, max_delay=5.0),
        backfill_retry: float = 0.5,
        callback_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        primaries = sum(x is not None for x in (livekit_url, room, link))
        if primaries > 1:
            raise ConfigurationError("give the primary once: livekit_url, room or link")
        if livekit_url is not None and not livekit_token:
            raise ConfigurationError("livekit_url needs livekit_token (a LiveKit access token)")
        if relay_url is not None and feed is not None:
            raise ConfigurationError("give the secondary once: relay_url or feed")
        if primaries == 0 and relay_url is None and feed is None:
            raise ConfigurationError(
                "no channel to listen to: give livekit_url/room/link and/or relay_url/feed"
            )
        if mode not in ("both", "warm"):
            raise ConfigurationError(f"mode must be 'both' or 'warm', not {mode!r}")
        if tick_interval <= 0 or inbound_capacity < 1:
            raise ConfigurationError("tick_interval must be > 0 and inbound_capacity >= 1")
        self.session_id = session_id
        self._livekit = (livekit_url, livekit_token)
        self._room = room
        self._link = link
        self._publisher_identity = publisher_identity
        self._relay = (relay_url, relay_token)
        self._feed = feed
        self._own_feed = False
        self._mode = mode
        self._tick_interval = tick_interval
        self._max_bytes = max_envelope_bytes
        self._reconnect = reconnect
        self._backfill_retry = backfill_retry
        self._callback_timeout = callback_timeout
        self._clock = clock
        self._buffer = SequenceBuffer(buffer)
        self._fallback = FallbackManager(fallback, started_at=clock())
        self._stats = SubscriberStats()
        self._link_state: dict[Channel, LinkState | None] = dict.fromkeys(Channel)
        self._secondary_error: str | None = None
        self._callbacks: list[SwitchCallback] = []
        self._listeners: list[MemoryObjectSendStream[SubscriberEvent]] = []
        self._lifecycle = _Lifecycle.NEW
        self._task_group: TaskGroup | None = None
        self._stop = anyio.CancelScope()
        self._stopped = anyio.Event()
        self._inbound_capacity = inbound_capacity

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._lifecycle is not _Lifecycle.NEW:
            raise ClosedError("a DualChannelSubscriber can be entered once; create a new one")
        self._lifecycle = _Lifecycle.OPEN
        self._fallback = FallbackManager(self._fallback.policy, started_at=self._clock())
        # Streams are made here, not in __init__, so a subscriber never entered holds none.
        self._inbound_send, self._inbound = anyio.create_memory_object_stream[_Inbound](
            self._inbound_capacity
        )
        self._out_send, self._out = anyio.create_memory_object_stream[Envelope](math.inf)
        self._gap_send, self._gaps = anyio.create_memory_object_stream[Gap](math.inf)
        self._switch_send, self._switches = anyio.create_memory_object_stream[ChannelSwitch](
            math.inf
        )
        if self._relay[0] is not None:
            self._feed = SSEFeed(self._relay[0], self.session_id, token=self._relay[1])
            self._own_feed = True
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._supervise, name="dualchannel.subscriber")
        return self

    async def _supervise(self) -> None:
        """Run every background task in a scope that :meth:`aclose` can cancel.

        Cancelling this scope, not the task group entered in ``__aenter__``, stops the
        tasks without cancelling the application's own code inside ``async with``.
        """
        try:
            with self._stop:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._core, name="dualchannel.subscriber.core")
                    group.start_soon(
                        self._dispatch_switches, name="dualchannel.subscriber.dispatch"
                    )
                    if self._feed is not None:
                        group.start_soon(self._run_feed, name="dualchannel.subscriber.sse")
                        group.start_soon(self._backfill, name="dualchannel.subscriber.backfill")
                    if self._link is not None:
                        self._attach(self._link)
                    elif self._room is not None:
                        self._attach(
                            LiveKitLink(self._room, sender_identity=self._publisher_identity)
                        )
                    elif self._livekit[0] is not None:
                        group.start_soon(self._run_room, name="dualchannel.subscriber.livekit")
        finally:
            self._stopped.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        group, self._task_group = self._task_group, None
        if group is not None:
            await group.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Leave the room (if it was ours), close the stream, cancel every task.

        Safe to call inside ``async with`` (the code after it keeps running) and again.
        """
        if self._lifecycle is not _Lifecycle.OPEN:
            self._lifecycle = _Lifecycle.CLOSED
            return
        self._lifecycle = _Lifecycle.CLOSED
        self._stop.cancel()
        with anyio.CancelScope(shield=True):
            await self._stopped.wait()
            if self._link is not None and (self._room is not None or self._livekit[0] is None):
                await self._link.aclose()
            if self._own_feed and isinstance(self._feed, SSEFeed):
                await self._feed.aclose()
        for stream in (
            self._inbound_send,
            self._inbound,
            self._gap_send,
            self._gaps,
            self._switch_send,
            self._switches,
            self._out_send,
            self._out,  # envelopes not read by now are dropped with the subscriber
        ):
            stream.close()
        for listener in self._listeners:
            listener.close()

    # -- the application's side ----------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Envelope]:
        return self

    async def __anext__(self) -> Envelope:
        if self._lifecycle is _Lifecycle.NEW:
            raise ClosedError("enter the subscriber with 'async with' before iterating it")
        try:
            return await self._out.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    def receive_nowait(self) -> Envelope:
        """The next delivered envelope if one is waiting; raises ``anyio.WouldBlock``."""
        return self._out.receive_nowait()

    def on_switch(self, callback: SwitchCallback) -> None:
        """Call ``callback(switch)`` (sync or async) on every :class:`ChannelSwitch`.

        Sync callbacks run in a worker thread and async ones in their own task, each with a
        timeout, so neither can hold up delivery. Errors are logged and otherwise ignored.
        """
        self._callbacks.append(callback)

    def events(self) -> EventStream:
        """Every fallback event (switches, channel down/recovered, both down) and loss.

        The stream receives events from the moment this is called; iterate it with
        ``async for`` and close it (``await stream.aclose()`` or ``async with``) when done.
        """
        send, receive = anyio.create_memory_object_stream[SubscriberEvent](math.inf)
        self._listeners.append(send)
        return EventStream(receive, send)

    def status(self) -> SubscriberStatus:
        now = self._clock()
        fallback = self._fallback
        return SubscriberStatus(
            active=fallback.active,
            health={c: fallback.health(c) for c in Channel},
            silent_for={c: fallback.silent_for(c, now) for c in Channel},
            link_state=dict(self._link_state),
            secondary_error=self._secondary_error,
        )

    def stats(self) -> SubscriberStats:
        b = self._buffer.stats()
        s = self._stats
        return SubscriberStats(
            delivered=b.delivered,
            first_arrivals=b.first_arrivals,
            duplicates=b.duplicates,
            malformed=dict(s.malformed),
            foreign=dict(s.foreign),
            gaps=b.gaps,
            backfilled=b.backfilled,
            backfill_requests=s.backfill_requests,
            lost=b.lost,
            late=b.late,
            stale=b.stale,
            overflowed=s.overflowed,
            switches=self._fallback.switches,
        )

    # -- feeding the core ----------------------------------------------------------------

    def _offer(self, kind: _Kind, channel: Channel, payload: Any) -> None:
        try:
            self._inbound_send.send_nowait((kind, channel, payload, self._clock()))
        except anyio.WouldBlock:
            self._stats.overflowed += 1
            logger.warning(
                "inbound_overflow", extra={"session_id": self.session_id, "channel": channel}
            )
        except anyio.ClosedResourceError:
            pass

    def _attach(self, link: DataLink) -> None:
        self._link = link
        link.set_handlers(
            lambda payload, _sender: self._offer(_Kind.PACKET, Channel.PRIMARY, payload),
            lambda state: self._offer(_Kind.STATE, Channel.PRIMARY, state),
        )

    async def _run_room(self) -> None:
        """Join the room, and join it again whenever it is lost for good."""
        url, token = self._livekit
        assert url is not None and token is not None
        delays = backoff_delays(self._reconnect)
        while True:
            room = rtc.Room()
            gone = anyio.Event()
            room.on("disconnected", _setter(gone))
            try:
                await room.connect(url, token)
            except Exception as exc:  # ConnectError and FFI failures
                logger.warning(
                    "livekit_connect_failed",
                    extra={"session_id": self.session_id, "error": repr(exc)},
                )
                self._offer(_Kind.STATE, Channel.PRIMARY, LinkState.DISCONNECTED)
                await anyio.sleep(next(delays, self._reconnect.max_delay))
                continue
            delays = backoff_delays(self._reconnect)
            link = LiveKitLink(room, sender_identity=self._publisher_identity)
            self._attach(link)
            self._offer(_Kind.STATE, Channel.PRIMARY, LinkState.CONNECTED)
            try:
                await gone.wait()
            finally:
                await link.aclose()
                with anyio.CancelScope(shield=True):
                    await room.disconnect()

    async def _run_feed(self) -> None:
        assert self._feed is not None
        try:
            await self._feed.run(
                lambda event: self._offer(_Kind.PACKET, Channel.SECONDARY, event),
                lambda state: self._offer(_Kind.STATE, Channel.SECONDARY, state),
            )
        except RelayAuthError as exc:
            self._secondary_error = str(exc)
            logger.error(
                "relay_auth_failed", extra={"session_id": self.session_id, "error": str(exc)}
            )

    async def _backfill(self) -> None:
        assert self._feed is not None
        async for gap in self._gaps:
            self._stats.backfill_requests += 1
            while (missing := self._first_missing(gap)) is not None:
                first, last = missing
                try:
                    found = await self._feed.fetch(gap.epoch, first - 1, last - first + 1)
                except RelayError as exc:
                    logger.info(
                        "backfill_failed",
                        extra={"session_id": self.session_id, "gap": gap, "error": repr(exc)},
                    )
                    found = []
                if found:
                    self._offer(_Kind.BACKFILL, Channel.SECONDARY, found)
                if any(m.get("seq") == first for m in found):
                    await anyio.sleep(self._tick_interval)  # let the core take them
                else:  # the relay does not have it (yet): the publisher may still be retrying
                    await anyio.sleep(self._backfill_retry)

    def _first_missing(self, gap: Gap) -> tuple[int, int] | None:
        """The first still-missing range inside ``gap``, or None once it is filled or lost."""
        for epoch, first, last in self._buffer.missing():
            if epoch == gap.epoch and first <= gap.last and gap.first <= last:
                return max(first, gap.first), min(last, gap.last)
        return None

    # -- the core ------------------------------------------------------------------------

    async def _core(self) -> None:
        clock = self._clock
        next_tick = clock() + self._tick_interval
        while True:
            timeout = next_tick - clock()
            if timeout > 0:
                with anyio.move_on_after(timeout):
                    item = await self._inbound.receive()
                    self._handle(item)
            while True:  # drain what is already waiting, without yielding per item
                try:
                    item = self._inbound.receive_nowait()
                except anyio.WouldBlock:
                    break
                self._handle(item)
            now = clock()
            if now >= next_tick:
                self._tick(now)
                next_tick = max(next_tick + self._tick_interval, now)

    def _handle(self, item: _Inbound) -> None:
        kind, channel, payload, now = item
        if kind is _Kind.PACKET:
            self._on_packet(channel, payload, now)
        elif kind is _Kind.STATE:
            self._link_state[channel] = payload
            if payload in (LinkState.DISCONNECTED, LinkState.RECONNECTING):
                what = "room" if channel is Channel.PRIMARY else "relay stream"
                self._fallback.report_down(channel, now, f"{what} {payload.value}")
        else:  # backfill
            envelopes = []
            for value in payload:
                try:
                    envelopes.append(Envelope.from_json_value(value, max_size=self._max_bytes))
                except EnvelopeError as exc:
                    self._stats.malformed[channel] += 1
                    logger.warning("backfill_malformed", extra={"error": str(exc)})
            self._deliver(self._buffer.fill(envelopes, now))

    def _on_packet(self, channel: Channel, payload: bytes | RelayEvent, now: float) -> None:
        raw: bytes | str = payload.data if isinstance(payload, RelayEvent) else payload
        try:
            envelope = Envelope.from_bytes(raw, max_size=self._max_bytes)
        except EnvelopeError as exc:
            self._stats.malformed[channel] += 1
            logger.warning(
                "malformed_envelope",
                extra={"session_id": self.session_id, "channel": channel, "error": str(exc)},
            )
            return
        if envelope.session_id != self.session_id:
            self._stats.foreign[channel] += 1
            logger.warning(
                "foreign_session",
                extra={
                    "session_id": self.session_id,
                    "channel": channel,
                    "foreign": envelope.session_id,
                },
            )
            return
        self._fallback.observe(channel, now)
        if (
            self._mode == "warm"
            and channel is Channel.SECONDARY
            and not envelope.is_heartbeat
            and self._fallback.active is Channel.PRIMARY
        ):
            return
        self._deliver(self._buffer.push(envelope, channel, now))

    def _deliver(self, envelopes: list[Envelope]) -> None:
        for envelope in envelopes:
            self._out_send.send_nowait(envelope)

    def _tick(self, now: float) -> None:
        for item in self._buffer.tick(now):
            if isinstance(item, Envelope):
                self._out_send.send_nowait(item)
            elif isinstance(item, Gap):
                if self._feed is not None:
                    self._gap_send.send_nowait(item)
            else:
                logger.warning(
                    "messages_lost",
                    extra={
                        "session_id": self.session_id,
                        "epoch": item.epoch,
                        "first": item.first,
                        "last": item.last,
                        "reason": item.reason,
                    },
                )
                self._publish_event(item)
        for event in self._fallback.tick(now):
            if isinstance(event, ChannelSwitch):
                logger.info(
                    "channel_switch",
                    extra={
                        "session_id": self.session_id,
                        "from": event.from_channel,
                        "to": event.to_channel,
                        "reason": event.reason,
                        "silent_for": event.silent_for,
                    },
                )
                self._switch_send.send_nowait(event)
            self._publish_event(event)

    def _publish_event(self, event: SubscriberEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener.send_nowait(event)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._listeners.remove(listener)

    async def _dispatch_switches(self) -> None:
        async with anyio.create_task_group() as group:
            async for switch in self._switches:
                for callback in list(self._callbacks):
                    group.start_soon(self._call, callback, switch)

    async def _call(self, callback: SwitchCallback, switch: ChannelSwitch) -> None:
        try:
            with anyio.fail_after(self._callback_timeout):
                if inspect.iscoroutinefunction(callback):
                    await callback(switch)
                else:
                    result = await anyio.to_thread.run_sync(
                        callback, switch, abandon_on_cancel=True
                    )
                    if inspect.isawaitable(result):
                        await result
        except Exception:
            logger.exception("switch_callback_failed", extra={"callback": repr(callback)})
