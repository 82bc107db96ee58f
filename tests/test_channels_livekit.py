"""The LiveKit edge: the in-memory hub, and LiveKitLink's filtering and error conversion.

LiveKitLink against a real livekit-server is in tests/test_publisher_livekit.py; here a
stand-in room (livekit's own EventEmitter) checks what the link does with events.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest
from livekit import rtc
from livekit.rtc.event_emitter import EventEmitter
from livekit.rtc.participant import PublishDataError

from dualchannel.channels.livekit import DataLink, LinkState, LiveKitLink, MemoryHub
from dualchannel.errors import ClosedError, LiveKitError


class Received:
    def __init__(self) -> None:
        self.packets: list[tuple[bytes, str | None]] = []
        self.states: list[LinkState] = []

    def packet(self, payload: bytes, sender: str | None) -> None:
        self.packets.append((payload, sender))

    def state(self, state: LinkState) -> None:
        self.states.append(state)


async def settle() -> None:
    for _ in range(3):
        await anyio.lowlevel.checkpoint()


@pytest.mark.anyio
async def test_hub_delivers_in_order_to_the_others_only() -> None:
    hub = MemoryHub()
    agent, alice, bob = hub.link("agent"), hub.link("alice"), hub.link("bob")
    assert isinstance(agent, DataLink)
    got_alice, got_bob, got_agent = Received(), Received(), Received()
    alice.set_handlers(got_alice.packet)
    bob.set_handlers(got_bob.packet)
    agent.set_handlers(got_agent.packet)
    for i in range(5):
        await agent.publish(b"%d" % i)
    assert got_alice.packets == []  # delivery goes through the event loop
    await settle()
    expected = [(b"%d" % i, "agent") for i in range(5)]
    assert got_alice.packets == expected
    assert got_bob.packets == expected
    assert got_agent.packets == []
    assert agent.published == [b"%d" % i for i in range(5)]


@pytest.mark.anyio
async def test_hub_faults_hold_drop_fail_and_announce() -> None:
    hub = MemoryHub()
    agent, viewer = hub.link("agent"), hub.link("viewer")
    got = Received()
    viewer.set_handlers(got.packet, got.state)
    hub.pause()
    await agent.publish(b"held-1")
    await agent.publish(b"held-2")
    await settle()
    assert got.packets == []
    hub.resume()
    await settle()
    assert [p for p, _ in got.packets] == [b"held-1", b"held-2"]
    hub.drop_all = True
    await agent.publish(b"lost")
    await settle()
    assert len(got.packets) == 2
    agent.fail_publishes = True
    with pytest.raises(LiveKitError, match="fault injected"):
        await agent.publish(b"x")
    hub.set_state(LinkState.RECONNECTING)
    assert got.states == [LinkState.RECONNECTING]
    await viewer.aclose()
    with pytest.raises(ClosedError):
        await viewer.publish(b"x")


class FakeParticipant:
    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.calls: list[tuple[bytes, bool, str]] = []
        self.error: Exception | None = None

    async def publish_data(self, payload: bytes, *, reliable: bool, topic: str) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append((payload, reliable, topic))


class FakeRoom(EventEmitter[Any]):
    """Just what LiveKitLink touches: on/off/emit, local_participant, isconnected."""

    def __init__(self) -> None:
        super().__init__()
        self.me = FakeParticipant("agent")
        self.connected = True

    @property
    def local_participant(self) -> FakeParticipant:
        if not self.connected:
            raise Exception("cannot access local participant before connecting")
        return self.me

    def isconnected(self) -> bool:
        return self.connected


def packet(data: bytes, sender: str | None, topic: str | None) -> rtc.DataPacket:
    participant: Any = None if sender is None else FakeParticipant(sender)
    return rtc.DataPacket(
        data=data, kind=rtc.DataPacketKind.KIND_RELIABLE, participant=participant, topic=topic
    )


@pytest.mark.anyio
async def test_livekit_link_publishes_reliably_on_the_topic_and_converts_errors() -> None:
    room = FakeRoom()
    link = LiveKitLink(room, topic="dualchannel")  # type: ignore[arg-type]
    await link.publish(b"hello")
    assert room.me.calls == [(b"hello", True, "dualchannel")]
    room.me.error = PublishDataError("engine closed")
    with pytest.raises(LiveKitError, match="engine closed") as caught:
        await link.publish(b"x")
    assert isinstance(caught.value.__cause__, PublishDataError)
    room.connected = False
    assert link.state is LinkState.DISCONNECTED
    with pytest.raises(LiveKitError, match="before connecting"):
        await link.publish(b"x")
    await link.aclose()
    with pytest.raises(ClosedError):
        await link.publish(b"x")


@pytest.mark.anyio
async def test_livekit_link_filters_topic_and_sender_and_reports_state() -> None:
    room = FakeRoom()
    link = LiveKitLink(room, sender_identity="agent")  # type: ignore[arg-type]
    got = Received()
    link.set_handlers(got.packet, got.state)
    room.emit("data_received", packet(b"ok", "agent", "dualchannel"))
    room.emit("data_received", packet(b"other-topic", "agent", "chat"))
    room.emit("data_received", packet(b"other-sender", "mallory", "dualchannel"))
    # an unknown sender (the SDK has not seen it join yet) is kept: the envelope decides
    room.emit("data_received", packet(b"unknown-sender", None, "dualchannel"))
    for event in ("reconnecting", "reconnected", "disconnected"):
        room.emit(event)
    room.emit("disconnected", "CLIENT_INITIATED")
    assert got.packets == [(b"ok", "agent"), (b"unknown-sender", None)]
    assert got.states == [
        LinkState.RECONNECTING,
        LinkState.RECONNECTED,
        LinkState.DISCONNECTED,
        LinkState.DISCONNECTED,
    ]
    await link.aclose()
    room.emit("data_received", packet(b"after-close", "agent", "dualchannel"))
    assert len(got.packets) == 2
    assert all(not callbacks for callbacks in room._events.values())
