"""Smoke test against a real livekit-server: reliable data on the dualchannel topic."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from livekit import rtc

from dualchannel.devserver import LiveKitDevServer
from dualchannel.envelope import DEFAULT_MAX_ENVELOPE_BYTES, TOPIC
from tests.fixtures.livekit import connect_room, wait_until_delivered
from tests.timing import bound

pytestmark = [pytest.mark.anyio, pytest.mark.livekit]


@contextmanager
def collect(
    room: rtc.Room, topic: str = TOPIC
) -> Iterator[MemoryObjectReceiveStream[rtc.DataPacket]]:
    """Every packet ``room`` receives on ``topic``, in arrival order."""
    send, receive = anyio.create_memory_object_stream[rtc.DataPacket](max_buffer_size=10_000)

    def on_data(packet: rtc.DataPacket) -> None:
        if packet.topic == topic:
            send.send_nowait(packet)

    room.on("data_received", on_data)
    try:
        with send, receive:
            yield receive
    finally:
        room.off("data_received", on_data)


async def test_reliable_packet_reaches_the_other_participant(
    livekit_server: LiveKitDevServer,
) -> None:
    async with (
        connect_room(livekit_server, "smoke-one", "agent") as agent,
        connect_room(livekit_server, "smoke-one", "consumer") as consumer,
    ):
        await wait_until_delivered(agent, consumer)
        payload = b'{"type":"transcript","seq":1,"bytes":"\x00\xff\xfe"}'

        with collect(consumer) as received:
            await agent.local_participant.publish_data(payload, reliable=True, topic=TOPIC)
            with anyio.fail_after(bound(5.0)):
                packet = await received.receive()

        assert packet.data == payload
        assert packet.topic == TOPIC
        assert packet.kind == rtc.DataPacketKind.KIND_RELIABLE
        assert packet.participant is not None
        assert packet.participant.identity == "agent"


async def test_reliable_packets_arrive_once_in_order(livekit_server: LiveKitDevServer) -> None:
    async with (
        connect_room(livekit_server, "smoke-order", "agent") as agent,
        connect_room(livekit_server, "smoke-order", "consumer") as consumer,
    ):
        await wait_until_delivered(agent, consumer)
        sent = [f"packet-{i:03d};".encode() * (1 + i % 7) for i in range(200)]

        with collect(consumer) as received:
            for payload in sent:
                await agent.local_participant.publish_data(payload, reliable=True, topic=TOPIC)
            # A packet on another topic is not ours: it must not show up among ours.
            await agent.local_participant.publish_data(b"other", reliable=True, topic="elsewhere")

            got: list[bytes] = []
            with anyio.fail_after(bound(10.0)):
                while len(got) < len(sent):
                    got.append((await received.receive()).data)
            # Nothing more arrives on our topic: no duplicates.
            with anyio.move_on_after(bound(0.3)):
                extra = await received.receive()
                pytest.fail(f"unexpected extra packet {extra.data!r}")

        assert got == sent


async def test_packet_at_the_envelope_size_cap_is_carried(
    livekit_server: LiveKitDevServer,
) -> None:
    # The envelope cap (15,000 bytes) is meant to fit one reliable packet: check it does.
    async with (
        connect_room(livekit_server, "smoke-size", "agent") as agent,
        connect_room(livekit_server, "smoke-size", "consumer") as consumer,
    ):
        await wait_until_delivered(agent, consumer)
        payload = bytes(range(256)) * 58 + b"x" * (DEFAULT_MAX_ENVELOPE_BYTES - 256 * 58)

        with collect(consumer) as received:
            await agent.local_participant.publish_data(payload, reliable=True, topic=TOPIC)
            with anyio.fail_after(bound(5.0)):
                packet = await received.receive()

        assert packet.data == payload
