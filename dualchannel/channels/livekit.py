"""The LiveKit edge: a small :class:`DataLink` protocol, the real link, and a twin.

Both the publisher (send side) and the subscriber (receive side) talk to LiveKit only
through a :class:`DataLink`:

- ``await link.publish(payload)`` sends one reliable packet on the dualchannel topic and
  raises :class:`~dualchannel.errors.LiveKitError` when LiveKit refuses it;
- ``link.set_handlers(on_packet, on_state)`` registers the receive callbacks: every packet
  on the topic as ``(payload, sender_identity)``, every connection change as a
  :class:`LinkState`;
- ``await link.aclose()`` unregisters them (it never disconnects a room it did not open).

:class:`LiveKitLink` wraps a connected ``livekit.rtc.Room``. :class:`MemoryHub` hands out
linked :class:`MemoryLink` objects that deliver to each other through the event loop, with
fault knobs (hold, drop, fail, slow publishes), for fast tests without a server.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import anyio
from livekit import rtc

from ..envelope import TOPIC
from ..errors import ClosedError, LiveKitError

__all__ = [
    "DataLink",
    "LinkState",
    "LiveKitLink",
    "MemoryHub",
    "MemoryLink",
    "PacketHandler",
    "StateHandler",
]


class LinkState(enum.StrEnum):
    """Connection state of a link, as LiveKit reports it."""

    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    RECONNECTED = "reconnected"
    DISCONNECTED = "disconnected"


PacketHandler = Callable[[bytes, "str | None"], None]
StateHandler = Callable[[LinkState], None]


@runtime_checkable
class DataLink(Protocol):
    """One participant's view of the dualchannel data topic."""

    async def publish(self, payload: bytes) -> None:
        """Send one reliable packet; raise :class:`LiveKitError` on failure."""
        ...

    def set_handlers(self, on_packet: PacketHandler, on_state: StateHandler | None = None) -> None:
        """Register the receive callbacks (replacing earlier ones)."""
        ...

    async def aclose(self) -> None:
        """Stop delivering to the handlers; publishing afterwards raises ClosedError."""
        ...


class LiveKitLink:
    """A :class:`DataLink` over a connected ``livekit.rtc.Room``.

    Publishes with ``publish_data(payload, reliable=True, topic=topic)``. Receives
    ``data_received`` packets on ``topic`` only, and, if ``sender_identity`` is given, only
    from that participant. The room stays the caller's: :meth:`aclose` unregisters the
    callbacks and leaves the connection alone.
    """

    def __init__(
        self, room: rtc.Room, *, topic: str = TOPIC, sender_identity: str | None = None
    ) -> None:
        self._room = room
        self._topic = topic
        self._sender = sender_identity
        self._on_packet: PacketHandler | None = None
        self._on_state: StateHandler | None = None
        self._closed = False
        self._registered: list[tuple[Any, Callable[..., None]]] = []
        self._register("data_received", self._data_received)
        for event, state in (
            ("connected", LinkState.CONNECTED),
            ("reconnecting", LinkState.RECONNECTING),
            ("reconnected", LinkState.RECONNECTED),
            ("disconnected", LinkState.DISCONNECTED),
        ):
            self._register(event, self._state_callback(state))

    def __repr__(self) -> str:
        return f"LiveKitLink(topic={self._topic!r}, sender_identity={self._sender!r})"

    @property
    def state(self) -> LinkState:
        """The room's connection state right now."""
        return LinkState.CONNECTED if self._room.isconnected() else LinkState.DISCONNECTED

    async def publish(self, payload: bytes) -> None:
        if self._closed:
            raise ClosedError("the LiveKit link is closed")
        try:
            participant = self._room.local_participant
            await participant.publish_data(payload, reliable=True, topic=self._topic)
        except Exception as exc:  # PublishDataError, "not connected", FFI failures
            detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            raise LiveKitError(f"LiveKit publish_data failed: {detail}") from exc

    def set_handlers(self, on_packet: PacketHandler, on_state: StateHandler | None = None) -> None:
        self._on_packet = on_packet
        self._on_state = on_state

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for event, callback in self._registered:
            self._room.off(event, callback)
        self._registered.clear()
        self._on_packet = self._on_state = None

    # -- room callbacks ----------------------------------------------------------------

    def _register(self, event: Any, callback: Callable[..., None]) -> None:
        self._room.on(event, callback)
        self._registered.append((event, callback))

    def _data_received(self, packet: rtc.DataPacket) -> None:
        if self._on_packet is None or packet.topic != self._topic:
            return
        identity = packet.participant.identity if packet.participant is not None else None
        # The SDK may not know the sender yet (it joined or reconnected a moment ago, see
        # docs/livekit.md): keep such packets, the envelope's session id still guards them.
        if self._sender is not None and identity is not None and identity != self._sender:
            return
        self._on_packet(packet.data, identity)

    def _state_callback(self, state: LinkState) -> Callable[..., None]:
        def callback(*_: Any) -> None:
            if self._on_state is not None:
                self._on_state(state)

        return callback


class MemoryHub:
    """An in-memory room: links made with :meth:`link` deliver packets to each other.

    Delivery goes through the running event loop (``call_soon``), in publish order, so a
    publish never runs a receiver's handler re-entrantly — as with a real room. Fault knobs:

    - :meth:`pause` holds every packet until :meth:`resume` (a stalled data channel);
    - ``drop_all = True`` discards packets (a dead one; publishes still "succeed");
    - :meth:`set_state` announces a connection change to every link;
    - per link: ``fail_publishes`` and ``publish_delay`` (see :class:`MemoryLink`).
    """

    def __init__(self) -> None:
        self._links: list[MemoryLink] = []
        self._held: list[tuple[MemoryLink, bytes]] = []
        self._paused = False
        self.drop_all = False

    def link(self, identity: str) -> MemoryLink:
        """A new participant in this room."""
        link = MemoryLink(self, identity)
        self._links.append(link)
        return link

    def pause(self) -> None:
        """Hold packets (in order) instead of delivering them."""
        self._paused = True

    def resume(self) -> None:
        """Deliver the held packets, in order, then carry on normally."""
        self._paused = False
        held, self._held = self._held, []
        for sender, payload in held:
            self._deliver(sender, payload)

    def set_state(self, state: LinkState) -> None:
        """Tell every link's state handler that the connection changed."""
        for link in list(self._links):
            link._emit_state(state)

    def _publish(self, sender: MemoryLink, payload: bytes) -> None:
        if self.drop_all:
            return
        if self._paused:
            self._held.append((sender, payload))
            return
        self._deliver(sender, payload)

    def _deliver(self, sender: MemoryLink, payload: bytes) -> None:
        loop = asyncio.get_running_loop()
        for link in self._links:
            if link is not sender:
                loop.call_soon(link._receive, payload, sender.identity)

    def _remove(self, link: MemoryLink) -> None:
        if link in self._links:
            self._links.remove(link)


class MemoryLink:
    """A :class:`DataLink` in a :class:`MemoryHub`.

    ``published`` lists every payload this link published successfully. Faults:
    ``fail_publishes = True`` makes :meth:`publish` raise :class:`LiveKitError` (as a
    disconnected room does); ``publish_delay`` (seconds) makes each publish take that long
    (a congested one).
    """

    def __init__(self, hub: MemoryHub, identity: str) -> None:
        self.identity = identity
        self.published: list[bytes] = []
        self.fail_publishes = False
        self.publish_delay = 0.0
        self._hub = hub
        self._on_packet: PacketHandler | None = None
        self._on_state: StateHandler | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryLink({self.identity!r})"

    async def publish(self, payload: bytes) -> None:
        if self._closed:
            raise ClosedError("the memory link is closed")
        if self.publish_delay > 0:
            await anyio.sleep(self.publish_delay)
        if self.fail_publishes:
            raise LiveKitError("memory link: publish failed (fault injected)")
        self.published.append(bytes(payload))
        self._hub._publish(self, bytes(payload))

    def set_handlers(self, on_packet: PacketHandler, on_state: StateHandler | None = None) -> None:
        self._on_packet = on_packet
        self._on_state = on_state

    async def aclose(self) -> None:
        self._closed = True
        self._on_packet = self._on_state = None
        self._hub._remove(self)

    def _receive(self, payload: bytes, sender: str | None) -> None:
        if self._on_packet is not None:
            self._on_packet(payload, sender)

    def _emit_state(self, state: LinkState) -> None:
        if self._on_state is not None:
            self._on_state(state)
