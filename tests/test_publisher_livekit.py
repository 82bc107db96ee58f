"""DualChannelPublisher with a real livekit-server room (and the real relay)."""

from __future__ import annotations

import anyio
import pytest

from dualchannel.channels.livekit import LinkState, LiveKitLink
from dualchannel.devserver import LiveKitDevServer
from dualchannel.envelope import Envelope
from dualchannel.publisher import DualChannelPublisher, HeartbeatPolicy
from dualchannel.server.process import RelayProcess
from tests.fixtures.livekit import connect_room, wait_until_delivered
from tests.fixtures.relay import WEBHOOK_SECRET
from tests.test_publisher_relay import stored
from tests.timing import bound

pytestmark = [pytest.mark.anyio, pytest.mark.livekit]

SEG = [{"type": "math", "content": "x² + 1", "confidence": 0.97}]


async def test_a_real_room_receives_the_primary_copies(
    livekit_server: LiveKitDevServer, relay: RelayProcess
) -> None:
    received: list[tuple[Envelope, str | None]] = []
    async with (
        connect_room(livekit_server, "pub-primary", "agent") as agent_room,
        connect_room(livekit_server, "pub-primary", "consumer") as consumer_room,
    ):
        await wait_until_delivered(agent_room, consumer_room)
        consumer = LiveKitLink(consumer_room, sender_identity="agent")
        consumer.set_handlers(
            lambda payload, sender: received.append((Envelope.from_bytes(payload), sender))
        )
        async with DualChannelPublisher(
            "pub-primary",
            room=agent_room,
            relay_url=relay.url,
            webhook_secret=WEBHOOK_SECRET,
            heartbeat=HeartbeatPolicy(interval=0.1),
        ) as publisher:
            assert publisher.health().primary_state is LinkState.CONNECTED
            for _ in range(30):
                await publisher.send_transcript(SEG)
            with anyio.fail_after(bound(10.0)):
                while sum(1 for e, _ in received if not e.is_heartbeat) < 30:
                    await anyio.sleep(0.02)
                await anyio.sleep(0.3)  # a few heartbeats after the last message
        await consumer.aclose()
        stats = publisher.stats()
    data = [e for e, _ in received if not e.is_heartbeat]
    beats = [e for e, _ in received if e.is_heartbeat]
    assert [e.seq for e in data] == list(range(1, 31))
    assert {sender for _, sender in received} == {"agent"}
    assert beats and beats[-1].seq == 30
    assert stats.primary.acknowledged == 30 and stats.primary.failed == 0
    assert sorted(m["seq"] for m in await stored(relay, "pub-primary")) == list(range(1, 31))


async def test_a_room_that_goes_away_does_not_reach_the_caller(
    livekit_server: LiveKitDevServer, relay: RelayProcess
) -> None:
    async with connect_room(livekit_server, "pub-gone", "agent") as agent_room:
        async with DualChannelPublisher(
            "pub-gone", room=agent_room, relay_url=relay.url, webhook_secret=WEBHOOK_SECRET
        ) as publisher:
            await publisher.send_transcript(SEG)
            await agent_room.disconnect()
            for _ in range(5):
                await publisher.send_transcript(SEG)  # never raises
            with anyio.fail_after(bound(10.0)):
                while publisher.stats().secondary.acknowledged < 6:
                    await anyio.sleep(0.02)
        stats = publisher.stats()
    assert stats.primary.failed >= 5
    assert publisher.health().primary_ok is False
    assert sorted(m["seq"] for m in await stored(relay, "pub-gone")) == list(range(1, 7))
