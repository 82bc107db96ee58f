"""The publisher's primary path: an ordered LiveKit publish queue with heartbeats.

One task (:meth:`PrimaryPath.run`) owns the link's send side: it publishes queued
messages in seq order, each bounded by ``PrimaryPolicy.publish_timeout``, and after
``HeartbeatPolicy.interval`` without data it publishes a heartbeat carrying the last seq,
so heartbeats never interleave with data and a stalled channel is seen as stalled.
Failures are counted and logged, never raised: the webhook copy carries the message.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from ..envelope import Envelope
from ..errors import ConfigurationError
from ._wakeup import Wakeup
from .livekit import DataLink, LinkState

__all__ = ["HeartbeatPolicy", "PrimaryPath", "PrimaryPolicy"]

logger = logging.getLogger("dualchannel.publisher")


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatPolicy:
    """A heartbeat goes on the primary channel after ``interval`` seconds without data."""

    interval: float = 0.2
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ConfigurationError("HeartbeatPolicy.interval must be > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryPolicy:
    """Each LiveKit publish may take ``publish_timeout`` seconds; at most ``max_queued``
    messages wait for the link (beyond that the oldest is dropped and counted — the
    webhook copy still carries it)."""

    publish_timeout: float = 1.0
    max_queued: int = 1_000

    def __post_init__(self) -> None:
        if self.publish_timeout <= 0 or self.max_queued < 1:
            raise ConfigurationError("PrimaryPolicy needs publish_timeout > 0, max_queued >= 1")


class PrimaryPath:
    """The LiveKit side of one publisher. Counters are plain attributes."""

    def __init__(
        self,
        link: DataLink,
        *,
        heartbeat: Callable[[int], Envelope],
        heartbeat_policy: HeartbeatPolicy,
        policy: PrimaryPolicy,
        progress: Wakeup,
        session_id: str,
    ) -> None:
        self.link = link
        self.state: LinkState | None = None
        self.ok: bool | None = None
        self.last_seq = 0
        self.sent = self.acknowledged = self.failed = self.dropped = self.heartbeats = 0
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._wakeup = Wakeup()
        self._heartbeat = heartbeat
        self._interval = heartbeat_policy.interval if heartbeat_policy.enabled else math.inf
        self._policy = policy
        self._progress = progress
        self._log_extra = {"session_id": session_id}

    def __len__(self) -> int:
        return len(self._queue)

    def enqueue(self, seq: int, body: bytes) -> None:
        """Hand a message over; never blocks (a full queue drops its oldest)."""
        if len(self._queue) >= self._policy.max_queued:
            dropped, _ = self._queue.popleft()
            self.dropped += 1
            logger.debug(
                "primary queue full; oldest dropped", extra={**self._log_extra, "seq": dropped}
            )
        self._queue.append((seq, body))
        self._wakeup.set()

    def on_state(self, state: LinkState) -> None:
        self.state = state
        logger.info("livekit link state", extra={**self._log_extra, "state": str(state)})

    async def run(self) -> None:
        next_beat = anyio.current_time() + self._interval
        while True:
            if self._queue:
                seq, body = self._queue.popleft()
                await self._publish(body, seq=seq)
                self.last_seq = seq
                self._progress.set()
                next_beat = anyio.current_time() + self._interval
                continue
            await self._wakeup.wait(max(0.0, next_beat - anyio.current_time()))
            if not self._queue and anyio.current_time() >= next_beat:
                await self._publish(self._heartbeat(self.last_seq).to_bytes(), seq=None)
                next_beat = anyio.current_time() + self._interval

    async def _publish(self, body: bytes, *, seq: int | None) -> None:
        if seq is not None:
            self.sent += 1
        error: str | None = None
        with anyio.move_on_after(self._policy.publish_timeout) as scope:
            try:
                await self.link.publish(body)
            # A DataLink converts LiveKit's errors to LiveKitError; anything else from a
            # custom link is treated the same way: the primary path is optional by design.
            except Exception as exc:
                error = str(exc) or type(exc).__name__
        if scope.cancelled_caught:
            error = f"publish took longer than {self._policy.publish_timeout}s"
        if error is None:
            if seq is None:
                self.heartbeats += 1
            else:
                self.acknowledged += 1
            if self.ok is False:
                logger.info("livekit publish recovered", extra=self._log_extra)
            self.ok = True
            return
        if seq is not None:
            self.failed += 1
        # Warn once per outage; the rest goes to debug so a dead room doesn't flood the log.
        log = logger.warning if self.ok is not False else logger.debug
        log(
            "livekit publish failed; the webhook path carries on",
            extra={**self._log_extra, "seq": seq, "reason": error},
        )
        self.ok = False
