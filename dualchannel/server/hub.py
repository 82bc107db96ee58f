"""Live fan-out of committed messages to SSE subscribers, in memory, never blocking.

Theory of operation: the group-commit writer calls :meth:`Hub.publish` right after a
transaction commits, with the new rows in resume-token order. ``publish`` is synchronous:
it pushes each item into every subscriber's bounded queue with ``send_nowait``. A full
queue does not make the writer wait; the subscriber is marked ``overflowed`` and dropped,
its queue is closed, and its stream tells the client to resume from its last id. So one
slow consumer never slows ingest or any other subscriber.

Heartbeats travel the same queues: every ``heartbeat_interval`` :meth:`Hub.beat` queues
one per session (encoded once) behind the messages already queued, so a stream never
announces a position ahead of what it has sent, and needs no timer of its own.

The hub also remembers, for sessions that have subscribers, the newest stored position
``(epoch, seq)`` so heartbeats do not query the store every second.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..envelope import Envelope
from .eventstream import frame
from .store import Position

__all__ = ["Hub", "LiveItem", "Subscription", "heartbeat_frame"]


def heartbeat_frame(session_id: str, position: Position) -> bytes:
    """The relay's heartbeat event: the newest stored ``(epoch, seq)`` of the session."""
    beat = Envelope.heartbeat(
        session_id=session_id, epoch=position.epoch, last_seq=position.seq, source="relay"
    )
    return frame(beat.to_bytes(), event="heartbeat")


@dataclass(frozen=True, slots=True)
class LiveItem:
    """A committed message on its way to subscribers: its resume token and SSE frame.

    The frame is encoded once, by the writer, and shared by every subscriber's stream.
    """

    id: int | None  # None for a heartbeat
    frame: bytes
    committed_at: float = field(default_factory=time.monotonic)


@dataclass(eq=False, slots=True)
class Subscription:
    """One subscriber's bounded queue. ``receive`` ends when it overflowed or the hub closed."""

    session_id: str
    send: MemoryObjectSendStream[LiveItem]
    receive: MemoryObjectReceiveStream[LiveItem]
    overflowed: bool = False


class Hub:
    """Per-session subscriber sets and last positions."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}
        self._positions: dict[str, Position] = {}
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    def has_subscribers(self, session_id: str) -> bool:
        return session_id in self._subscribers

    def subscribe(self, session_id: str, queue_size: int) -> Subscription:
        """Register before reading the store, so nothing committed meanwhile is missed."""
        send, receive = anyio.create_memory_object_stream[LiveItem](queue_size)
        sub = Subscription(session_id, send, receive)
        if self._closed:
            send.close()
        else:
            self._subscribers.setdefault(session_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.session_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.session_id]
                self._positions.pop(sub.session_id, None)
        sub.send.close()
        sub.receive.close()

    def note_position(self, session_id: str, position: Position) -> None:
        """Merge a position read from the store (the newest of the two wins)."""
        if session_id in self._subscribers:
            self._positions[session_id] = max(position, self._positions.get(session_id, Position()))

    def position(self, session_id: str) -> Position:
        return self._positions.get(session_id, Position())

    def publish(self, session_id: str, items: Iterable[LiveItem], newest: Position) -> None:
        """Hand committed items to every subscriber of the session; never waits."""
        subs = self._subscribers.get(session_id)
        if not subs:
            return
        self._positions[session_id] = max(newest, self._positions.get(session_id, Position()))
        self._push(session_id, subs, list(items))

    def beat(self) -> None:
        """Queue a heartbeat for every subscriber: each session's newest position, encoded
        once per session, behind the messages already queued (so never ahead of them)."""
        for session_id, subs in list(self._subscribers.items()):
            item = LiveItem(None, heartbeat_frame(session_id, self.position(session_id)))
            self._push(session_id, subs, [item])

    async def run_heartbeats(self, interval: float) -> None:
        """:meth:`beat` every ``interval`` seconds, until cancelled."""
        while True:
            await anyio.sleep(interval)
            self.beat()

    def _push(self, session_id: str, subs: set[Subscription], batch: list[LiveItem]) -> None:
        for sub in list(subs):
            try:
                for item in batch:
                    sub.send.send_nowait(item)
            except anyio.WouldBlock:
                sub.overflowed = True
                subs.discard(sub)
                sub.send.close()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                subs.discard(sub)
        if not subs:
            self._subscribers.pop(session_id, None)
            self._positions.pop(session_id, None)

    def close(self) -> None:
        """End every stream (graceful shutdown): queued items drain, then the stream ends."""
        self._closed = True
        for subs in self._subscribers.values():
            for sub in subs:
                sub.send.close()
        self._subscribers.clear()
        self._positions.clear()
