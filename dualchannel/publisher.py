"""The agent side: one call sends each message on both channels, and nothing is lost.

Theory of operation
-------------------
:class:`DualChannelPublisher` numbers every message (``epoch``, ``seq``) and hands it to
two independent tasks, so the caller never waits on either channel:

- the **primary task** publishes, in order, on the LiveKit data channel
  (``publish_data(bytes, reliable=True, topic="dualchannel")``), each publish bounded by
  ``PrimaryPolicy.publish_timeout``; when idle for ``HeartbeatPolicy.interval`` it
  publishes a heartbeat carrying the last seq, from the same task, so heartbeats never
  interleave with data. LiveKit failures are counted and logged, never raised: the
  webhook copy carries the message.
- the **drain task** posts the webhook outbox to the relay in batches, critical first and
  in seq order within a priority, paced by the relay's ``RateLimit-*`` answers
  (:class:`~dualchannel.channels.outbox.RateBudget`), retrying timeouts, connection errors,
  408/425/429/5xx with full-jitter backoff and obeying ``Retry-After``. A message leaves
  the outbox only when the relay answered 200 for it or refused it for good (then
  ``on_failure`` hears about it). A refused batch is split in halves until the refused
  messages are isolated, so one bad message never takes its neighbours down with it.
- the **metrics task** posts best-effort session metrics, only while the rate budget has
  room to spare, so they never delay a transcript.
- the **health task** GETs ``/api/health`` every 30 s, every second while the relay looks
  unhealthy; a recovery cuts the drain task's backoff short.

``aclose`` (or leaving ``async with``) stops new sends, drains both queues up to
``OutboxPolicy.drain_timeout``, and reports whatever the relay never acknowledged.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import anyio
import httpx
from livekit import rtc

from .channels._wakeup import Wakeup
from .channels.livekit import DataLink, LinkState, LiveKitLink
from .channels.outbox import OutboxPolicy
from .channels.primary import HeartbeatPolicy, PrimaryPath, PrimaryPolicy
from .channels.secondary import DeliveryFailure, HealthPolicy, WebhookPath
from .channels.webhook import HttpxWebhookSender, WebhookSender
from .envelope import Envelope, MessageType, Priority, Segment, format_timestamp
from .errors import ClosedError, ConfigurationError, OutboxFull, WouldBlock
from .protocol.backoff import RetryPolicy
from .signing import WebhookSigner

__all__ = [
    "ChannelStats",
    "CloseReport",
    "DeliveryFailure",
    "DualChannelPublisher",
    "HealthPolicy",
    "HeartbeatPolicy",
    "OutboxPolicy",
    "PrimaryPolicy",
    "PublisherHealth",
    "PublisherStats",
    "RetryPolicy",
]

logger = logging.getLogger("dualchannel.publisher")

_HEARTBEAT, _PRIMARY, _RETRY = HeartbeatPolicy(), PrimaryPolicy(), RetryPolicy()
_OUTBOX, _HEALTH = OutboxPolicy(), HealthPolicy()


# -- what the publisher reports ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """Counts for one channel, in messages (heartbeats and metrics are counted apart).

    Primary: ``sent`` publishes attempted, ``acknowledged`` completed by LiveKit,
    ``failed`` raised or timed out, ``dropped`` pushed out of a full queue.
    Secondary: ``sent`` posted at least once, ``acknowledged`` answered 200, ``retried``
    re-posts, ``failed`` refused for good or abandoned.
    """

    sent: int = 0
    acknowledged: int = 0
    retried: int = 0
    failed: int = 0
    queued: int = 0
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """A snapshot of :meth:`DualChannelPublisher.stats`."""

    messages: int
    primary: ChannelStats
    secondary: ChannelStats
    heartbeats: int
    requests: int
    rate_limited: int
    outbox_full: int
    metrics_sent: int
    metrics_dropped: int


@dataclass(frozen=True, slots=True)
class PublisherHealth:
    """A snapshot of :meth:`DualChannelPublisher.health`. ``None``: channel not configured
    or not known yet."""

    primary_state: LinkState | None
    primary_ok: bool | None
    relay_healthy: bool | None
    relay_reason: str | None
    outbox: int


@dataclass(frozen=True, slots=True)
class CloseReport:
    """What :meth:`DualChannelPublisher.aclose` left behind."""

    undelivered: tuple[Envelope, ...]
    stats: PublisherStats

    @property
    def complete(self) -> bool:
        return not self.undelivered


_NEW, _OPEN, _CLOSING, _CLOSED = "new", "open", "closing", "closed"


class DualChannelPublisher:
    """Publishes a session's messages on LiveKit and to the relay; see the module docs.

    Give ``room`` (a connected ``livekit.rtc.Room``) or ``link`` (any
    :class:`~dualchannel.channels.DataLink`, e.g. a ``MemoryLink``) for the primary path,
    ``relay_url`` for the secondary one, or both. ``transport`` (an httpx transport, e.g.
    ``MemoryRelay().transport``) or ``sender`` replace the HTTP client in tests.
    """

    def __init__(
        self,
        session_id: str,
        *,
        room: rtc.Room | None = None,
        link: DataLink | None = None,
        relay_url: str | None = None,
        webhook_secret: str | bytes | None = None,
        epoch: int | None = None,
        heartbeat: HeartbeatPolicy = _HEARTBEAT,
        primary: PrimaryPolicy = _PRIMARY,
        retry: RetryPolicy = _RETRY,
        outbox: OutboxPolicy = _OUTBOX,
        health: HealthPolicy = _HEALTH,
        timeout: float = 5.0,
        on_failure: Callable[[DeliveryFailure], object] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sender: WebhookSender | None = None,
        source: str = "livekit-agent",
        rng: random.Random | None = None,
    ) -> None:
        if room is not None and link is not None:
            raise ConfigurationError("give room= or link=, not both")
        if sender is not None and relay_url is not None:
            raise ConfigurationError("give relay_url= or sender=, not both")
        if relay_url is None and sender is None and room is None and link is None:
            raise ConfigurationError("give room=/link= (LiveKit), relay_url= (webhook), or both")
        self.epoch = int(time.time() * 1000) if epoch is None else epoch
        # Validate the session id, epoch and source once, with the envelope's own rules.
        Envelope.heartbeat(session_id=session_id, epoch=self.epoch, last_seq=0, source=source)
        self.session_id = session_id
        self.relay_url = relay_url
        self._room = room
        self._link = link
        self._http = (relay_url, timeout, transport)
        self._sender_arg = sender
        self._signer = WebhookSigner(webhook_secret) if webhook_secret is not None else None
        self._policies = (heartbeat, primary, retry, outbox, health)
        self._on_failure = on_failure
        self._source = source
        self._rng = rng or random.Random()
        self._state = _NEW
        self._seq = 0
        self._segments = self._characters = self._outbox_full = 0
        self._progress = Wakeup()  # something left a queue (aclose waits on it)
        self._primary: PrimaryPath | None = None
        self._owned_link: LiveKitLink | None = None
        self._secondary: WebhookPath | None = None
        self._stack: AsyncExitStack | None = None
        self._report: CloseReport | None = None
        self._stop = anyio.CancelScope()

    def __repr__(self) -> str:
        return (
            f"DualChannelPublisher({self.session_id!r}, epoch={self.epoch}, seq={self._seq}, "
            f"state={self._state!r})"
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != _NEW:
            raise ClosedError("a DualChannelPublisher opens once; create a new one")
        heartbeat, primary, retry, outbox, health = self._policies
        stack = AsyncExitStack()
        link = self._link
        if self._room is not None:
            link = self._owned_link = LiveKitLink(self._room)
            stack.push_async_callback(self._owned_link.aclose)
        if link is not None:
            self._primary = PrimaryPath(
                link,
                heartbeat=self._heartbeat_envelope,
                heartbeat_policy=heartbeat,
                policy=primary,
                progress=self._progress,
                session_id=self.session_id,
            )
            if self._owned_link is not None:
                self._primary.state = self._owned_link.state
                self._owned_link.set_handlers(_ignore_packet, self._primary.on_state)
        sender = self._sender_arg
        relay_url, timeout, transport = self._http
        if sender is None and relay_url is not None:
            sender = HttpxWebhookSender(relay_url, timeout=timeout, transport=transport)
            stack.push_async_callback(sender.aclose)
        if sender is not None:
            self._secondary = WebhookPath(
                sender,
                session_id=self.session_id,
                signer=self._signer,
                retry=retry,
                policy=outbox,
                health=health,
                on_failure=self._on_failure,
                progress=self._progress,
                rng=self._rng,
            )
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(self._supervise)
        self._stack, self._state = stack, _OPEN
        logger.info(
            "publisher opened",
            extra={
                "session_id": self.session_id,
                "epoch": self.epoch,
                "primary": self._primary is not None,
                "secondary": self._secondary is not None,
            },
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.aclose()
        finally:
            stack, self._stack = self._stack, None
            if stack is not None:
                await stack.aclose()  # waits for the cancelled tasks, closes what we opened

    async def aclose(self, *, drain_timeout: float | None = None) -> CloseReport:
        """Stop sending; drain both queues for up to ``drain_timeout`` seconds (default
        ``OutboxPolicy.drain_timeout``); report what the relay never acknowledged.

        Undelivered messages are logged, passed to ``on_failure`` and returned. Idempotent;
        leaving ``async with`` calls it. Connections are released when ``async with`` ends.
        """
        if self._report is not None:
            return self._report
        if self._state == _NEW:
            self._state = _CLOSED
            self._report = CloseReport((), self.stats())
            return self._report
        self._state = _CLOSING
        deadline = self._policies[3].drain_timeout if drain_timeout is None else drain_timeout
        # Shielded and bounded: the drain completes even while the caller is cancelled.
        with anyio.CancelScope(shield=True), anyio.move_on_after(deadline):
            while self._busy():
                await self._progress.wait(0.05)
        # Stop the tasks now, through their own scope: cancelling the task group's scope
        # would cancel the caller's code inside ``async with`` too. The task group itself
        # is left in __aexit__, where it nests.
        self._stop.cancel()
        left: list[Envelope] = []
        if self._secondary is not None:
            left = self._secondary.abandon_all(
                "the publisher closed before the relay acknowledged these messages"
            )
        self._state = _CLOSED
        report = self._report = CloseReport(tuple(left), self.stats())
        logger.info(
            "publisher closed", extra={"session_id": self.session_id, "undelivered": len(left)}
        )
        return report

    async def _supervise(self) -> None:
        """Run both paths under a scope that :meth:`aclose` can cancel on its own."""
        with self._stop:
            async with anyio.create_task_group() as group:
                if self._primary is not None:
                    group.start_soon(self._primary.run)
                if self._secondary is not None:
                    group.start_soon(self._secondary.run)

    def _busy(self) -> bool:
        return bool(
            (self._secondary is not None and len(self._secondary.outbox))
            or (self._primary is not None and len(self._primary))
        )

    # -- sending -----------------------------------------------------------------------

    def send_transcript_nowait(
        self,
        segments: Sequence[Segment | Mapping[str, Any]],
        *,
        speaker: str = "teacher",
        priority: Priority | str = Priority.NORMAL,
    ) -> Envelope:
        """Send a transcript now, or raise :class:`WouldBlock` if the outbox is full."""
        return self._counted(self._transcript_builder(segments, speaker, priority))

    async def send_transcript(
        self,
        segments: Sequence[Segment | Mapping[str, Any]],
        *,
        speaker: str = "teacher",
        priority: Priority | str = Priority.NORMAL,
    ) -> Envelope:
        """Send a transcript on both channels; returns once it is handed over and queued.

        Never waits on LiveKit or the relay. When the outbox is full, waits up to
        ``OutboxPolicy.put_timeout`` for room, then raises :class:`OutboxFull` (and then
        nothing was sent on either channel, and no seq was used).
        """
        return await self._send(self._transcript_builder(segments, speaker, priority))

    def send_event_nowait(
        self,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        priority: Priority | str = Priority.NORMAL,
    ) -> Envelope:
        """Send an application event (envelope ``data = {"name": name, "data": data}``)."""
        return self._counted(self._event_builder(name, data, priority))

    async def send_event(
        self,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        priority: Priority | str = Priority.NORMAL,
    ) -> Envelope:
        """Like :meth:`send_transcript`, for an application event."""
        return await self._send(self._event_builder(name, data, priority))

    def send_metrics_nowait(self, metrics: Mapping[str, Any] | None = None) -> None:
        """Queue session metrics for ``POST /api/metrics``; best effort, never blocks.

        The payload's ``metrics`` are the session totals (``segments_processed``,
        ``total_characters``, ``delivery_channels``) updated with ``metrics``. They go out
        only while the rate budget has room to spare, so they never delay a transcript;
        beyond ``OutboxPolicy.metrics_max`` waiting, the oldest are dropped (counted).
        Without a relay this does nothing.
        """
        self._check_open()
        if self._secondary is None:
            return
        channels = []
        if self._primary is not None and self._primary.ok is not False:
            channels.append("livekit")
        if self._secondary.healthy is not False:
            channels.append("webhook")
        totals: dict[str, Any] = {
            "segments_processed": self._segments,
            "total_characters": self._characters,
            "delivery_channels": channels,
        }
        self._secondary.enqueue_metrics(
            {
                "sessionId": self.session_id,
                "timestamp": format_timestamp(datetime.now(UTC)),
                "metrics": {**totals, **(metrics or {})},
                "source": self._source,
            }
        )

    async def send_metrics(self, metrics: Mapping[str, Any] | None = None) -> None:
        """See :meth:`send_metrics_nowait`; never waits for the relay."""
        self.send_metrics_nowait(metrics)

    # -- reporting ---------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The seq of the last message sent (0 before the first)."""
        return self._seq

    def stats(self) -> PublisherStats:
        """Counters for both channels (see :class:`ChannelStats`)."""
        p, s = self._primary, self._secondary
        primary = ChannelStats()
        if p is not None:
            primary = ChannelStats(
                sent=p.sent,
                acknowledged=p.acknowledged,
                failed=p.failed,
                queued=len(p),
                dropped=p.dropped,
            )
        secondary = ChannelStats()
        if s is not None:
            secondary = ChannelStats(
                sent=s.sent,
                acknowledged=s.acknowledged,
                retried=s.retried,
                failed=s.failed,
                queued=len(s.outbox),
            )
        return PublisherStats(
            messages=self._seq,
            primary=primary,
            secondary=secondary,
            heartbeats=p.heartbeats if p is not None else 0,
            requests=s.requests if s is not None else 0,
            rate_limited=s.rate_limited if s is not None else 0,
            outbox_full=self._outbox_full,
            metrics_sent=s.metrics_sent if s is not None else 0,
            metrics_dropped=s.metrics_dropped if s is not None else 0,
        )

    def health(self) -> PublisherHealth:
        """What the publisher knows of each channel right now."""
        p, s = self._primary, self._secondary
        return PublisherHealth(
            primary_state=p.state if p is not None else None,
            primary_ok=p.ok if p is not None else None,
            relay_healthy=s.healthy if s is not None else None,
            relay_reason=s.reason if s is not None else None,
            outbox=len(s.outbox) if s is not None else 0,
        )

    # -- building and dispatching ------------------------------------------------------

    def _transcript_builder(
        self,
        segments: Sequence[Segment | Mapping[str, Any]],
        speaker: str,
        priority: Priority | str,
    ) -> Callable[[int], Envelope]:
        items = [
            s.model_dump(by_alias=True, exclude_none=True) if isinstance(s, Segment) else dict(s)
            for s in segments
        ]

        def build(seq: int) -> Envelope:
            return Envelope.transcript(
                session_id=self.session_id,
                epoch=self.epoch,
                seq=seq,
                segments=items,
                speaker=speaker,
                priority=priority,
                source=self._source,
            )

        return build

    def _event_builder(
        self, name: str, data: Mapping[str, Any] | None, priority: Priority | str
    ) -> Callable[[int], Envelope]:
        def build(seq: int) -> Envelope:
            return Envelope.build(
                type=MessageType.EVENT,
                session_id=self.session_id,
                epoch=self.epoch,
                seq=seq,
                timestamp=datetime.now(UTC),
                priority=priority,
                data={"name": name, "data": dict(data or {})},
                source=self._source,
            )

        return build

    def _heartbeat_envelope(self, last_seq: int) -> Envelope:
        return Envelope.heartbeat(
            session_id=self.session_id, epoch=self.epoch, last_seq=last_seq, source=self._source
        )

    def _check_open(self) -> None:
        if self._state == _NEW:
            raise ClosedError("the publisher is not open yet: use `async with` first")
        if self._state != _OPEN:
            raise ClosedError("the publisher is closed; create a new one")

    def _counted(self, build: Callable[[int], Envelope]) -> Envelope:
        try:
            return self._dispatch(build)
        except WouldBlock:
            self._outbox_full += 1
            raise

    async def _send(self, build: Callable[[int], Envelope]) -> Envelope:
        policy = self._policies[3]
        with anyio.move_on_after(policy.put_timeout):
            while True:
                try:
                    return self._dispatch(build)
                except WouldBlock:
                    assert self._secondary is not None
                    await self._secondary.space.wait(0.25)
        self._outbox_full += 1
        raise OutboxFull(
            f"the webhook outbox stayed full ({policy.max_messages} messages) for "
            f"{policy.put_timeout}s: the relay is down or not keeping up"
        )

    def _dispatch(self, build: Callable[[int], Envelope]) -> Envelope:
        """Check for room, build with the next seq, encode, then commit: never half-sent."""
        self._check_open()
        s = self._secondary
        if s is not None and s.outbox.free <= 0:
            raise WouldBlock(f"the webhook outbox is full ({s.outbox.capacity} messages)")
        envelope = build(self._seq + 1)
        body = envelope.to_bytes()
        self._seq = envelope.seq
        if envelope.type is MessageType.TRANSCRIPT and envelope.data is not None:
            segments = envelope.data["segments"]
            self._segments += len(segments)
            self._characters += sum(len(seg["content"]) for seg in segments)
        if self._primary is not None:
            self._primary.enqueue(envelope.seq, body)
        if s is not None:
            s.enqueue(envelope, body)
        return envelope


def _ignore_packet(payload: bytes, sender: str | None) -> None:
    """The publisher only sends; packets from others are not its business."""
