"""DualChannelSubscriber with in-memory twins: merge, switch, backfill, bad input."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator

import anyio
import pytest

from dualchannel import Channel, ChannelSwitch, ClosedError, ConfigurationError, Envelope
from dualchannel.channels.livekit import MemoryHub, MemoryLink
from dualchannel.channels.sse import MemoryFeed, RelayEvent
from dualchannel.protocol import MessageLost
from dualchannel.subscriber import DualChannelSubscriber

from .helpers import EPOCH, SESSION, heartbeat, transcript
from .timing import bound

pytestmark = pytest.mark.anyio

P, S = Channel.PRIMARY, Channel.SECONDARY


class Agent:
    """Publishes like the real publisher would: both channels, heartbeats on the primary."""

    def __init__(self, hub: MemoryHub, feed: MemoryFeed) -> None:
        self.link: MemoryLink = hub.link("agent")
        self.feed = feed
        self.last_seq = 0
        self.primary_on = True
        self.secondary_on = True
        self.next_id = 1

    async def send(self, seq: int) -> Envelope:
        envelope = transcript(seq)
        self.last_seq = seq
        self.feed.stored[(EPOCH, seq)] = envelope.to_json_value()
        if self.primary_on:
            await self.link.publish(envelope.to_bytes())
        if self.secondary_on:
            self.feed.emit(
                RelayEvent("transcript", envelope.to_bytes().decode(), str(self.next_id))
            )
            self.next_id += 1
        return envelope

    async def beat_forever(self, period: float = 0.2) -> None:
        while True:
            if self.primary_on:
                await self.link.publish(heartbeat(self.last_seq).to_bytes())
            if self.secondary_on:
                self.feed.emit(
                    RelayEvent("heartbeat", heartbeat(self.last_seq).to_bytes().decode())
                )
            await anyio.sleep(period)


async def take(subscriber: DualChannelSubscriber, count: int, timeout: float = 5.0) -> list[int]:
    got: list[int] = []
    with anyio.fail_after(bound(timeout)):
        async for envelope in subscriber:
            got.append(envelope.seq)
            if len(got) == count:
                break
    return got


@pytest.fixture
async def wired() -> AsyncIterator[tuple[Agent, DualChannelSubscriber, MemoryHub, MemoryFeed]]:
    hub, feed = MemoryHub(), MemoryFeed()
    agent = Agent(hub, feed)
    async with (
        DualChannelSubscriber(SESSION, link=hub.link("consumer"), feed=feed) as subscriber,
        anyio.create_task_group() as group,
    ):
        group.start_soon(agent.beat_forever)
        yield agent, subscriber, hub, feed
        group.cancel_scope.cancel()
    await feed.aclose()


async def test_both_channels_merge_into_one_copy_each_in_order(wired) -> None:  # type: ignore[no-untyped-def]
    agent, subscriber, _, _ = wired
    for seq in range(1, 51):
        await agent.send(seq)
    assert await take(subscriber, 50) == list(range(1, 51))
    await anyio.sleep(0.1)
    stats = subscriber.stats()
    assert stats.delivered == 50
    assert stats.first_arrivals[P] + stats.first_arrivals[S] == 50
    assert stats.duplicates[P] + stats.duplicates[S] == 50
    assert subscriber.status().active is P


async def test_primary_stall_switches_to_secondary_and_back(wired) -> None:  # type: ignore[no-untyped-def]
    agent, subscriber, hub, _ = wired
    switches: list[ChannelSwitch] = []
    subscriber.on_switch(switches.append)
    await agent.send(1)
    assert await take(subscriber, 1) == [1]
    await anyio.sleep(0.3)
    hub.drop_all = True  # the data channel dies: packets vanish, heartbeats too
    cut = time.monotonic()
    with anyio.fail_after(bound(3.0)):
        while subscriber.status().active is not S:
            await anyio.sleep(0.01)
    detected = time.monotonic() - cut
    assert detected < bound(1.0)
    for seq in range(2, 6):
        await agent.send(seq)
    assert await take(subscriber, 4) == [2, 3, 4, 5]
    hub.drop_all = False
    with anyio.fail_after(bound(5.0)):
        while subscriber.status().active is not P:
            await anyio.sleep(0.01)
    await anyio.sleep(0.1)  # callbacks run in a worker thread
    assert [(s.from_channel, s.to_channel) for s in switches] == [(P, S), (S, P)]
    assert switches[0].silent_for < bound(1.0)
    assert subscriber.stats().switches == 2


async def test_a_message_neither_channel_carried_is_backfilled_from_the_relay(wired) -> None:  # type: ignore[no-untyped-def]
    agent, subscriber, _, feed = wired
    await agent.send(1)
    agent.primary_on = agent.secondary_on = False
    await agent.send(2)  # stored by the relay but lost on both live paths
    agent.primary_on = agent.secondary_on = True
    await agent.send(3)
    assert await take(subscriber, 3) == [1, 2, 3]
    assert subscriber.stats().backfilled == 1
    assert feed.fetches and feed.fetches[0][:2] == (EPOCH, 1)


async def test_a_missing_tail_is_found_through_heartbeats(wired) -> None:  # type: ignore[no-untyped-def]
    agent, subscriber, _, _ = wired
    await agent.send(1)
    agent.primary_on = agent.secondary_on = False
    await agent.send(2)  # the last message: no later message would reveal the gap
    agent.primary_on = agent.secondary_on = True
    assert await take(subscriber, 2) == [1, 2]


async def test_a_message_nobody_has_is_reported_lost_and_delivery_moves_on() -> None:
    hub, feed = MemoryHub(), MemoryFeed()
    agent = Agent(hub, feed)
    from dualchannel.protocol import BufferPolicy

    async with DualChannelSubscriber(
        SESSION,
        link=hub.link("consumer"),
        feed=feed,
        buffer=BufferPolicy(reorder_window=0.05, max_wait=0.5),
    ) as subscriber:
        events = subscriber.events()
        await agent.send(1)
        agent.primary_on = agent.secondary_on = False
        await agent.send(2)
        del feed.stored[(EPOCH, 2)]
        agent.primary_on = agent.secondary_on = True
        await agent.send(3)
        assert await take(subscriber, 2) == [1, 3]
        with anyio.fail_after(bound(2.0)):
            async for event in events:
                if isinstance(event, MessageLost):
                    assert (event.first, event.last) == (2, 2)
                    break
        assert subscriber.stats().lost == 1
        await events.aclose()
    await feed.aclose()


async def test_garbage_on_both_channels_is_counted_and_the_stream_survives(wired) -> None:  # type: ignore[no-untyped-def]
    agent, subscriber, _, feed = wired
    await agent.link.publish(b"{not json")
    await agent.link.publish(transcript(1, session="someone-else").to_bytes())
    await agent.link.publish(b"x" * 20_000)
    feed.emit(RelayEvent("transcript", '{"type": "transcript"}'))
    bad = json.loads(transcript(1).to_bytes())
    bad["seq"] = "one"
    feed.emit(RelayEvent("transcript", json.dumps(bad)))
    for seq in range(1, 4):
        await agent.send(seq)
    assert await take(subscriber, 3) == [1, 2, 3]
    stats = subscriber.stats()
    assert stats.malformed == {P: 2, S: 2}
    assert stats.foreign == {P: 1, S: 0}


async def test_a_slow_or_failing_callback_never_blocks_delivery(wired) -> None:  # type: ignore[no-untyped-def]
    agent, subscriber, hub, _ = wired
    release = threading.Event()
    called = threading.Event()

    def slow(_: ChannelSwitch) -> None:
        called.set()
        release.wait(bound(10.0))

    async def failing(_: ChannelSwitch) -> None:
        raise RuntimeError("callback bug")

    subscriber.on_switch(slow)
    subscriber.on_switch(failing)
    await agent.send(1)
    await take(subscriber, 1)
    hub.drop_all = True
    with anyio.fail_after(bound(3.0)):
        while not called.is_set():
            await anyio.sleep(0.01)
    for seq in range(2, 12):
        await agent.send(seq)
    assert await take(subscriber, 10, timeout=2.0) == list(range(2, 12))
    release.set()


async def test_the_subscriber_is_used_once() -> None:
    hub = MemoryHub()
    subscriber = DualChannelSubscriber(SESSION, link=hub.link("consumer"))
    with pytest.raises(ClosedError, match="async with"):
        await subscriber.__anext__()
    async with subscriber:
        pass
    with pytest.raises(ClosedError, match="entered once"):
        await subscriber.__aenter__()


async def test_configuration_errors_name_the_fix() -> None:
    with pytest.raises(ConfigurationError, match="no channel"):
        DualChannelSubscriber(SESSION)
    with pytest.raises(ConfigurationError, match="livekit_token"):
        DualChannelSubscriber(SESSION, livekit_url="ws://127.0.0.1:1")
    feed = MemoryFeed()
    with pytest.raises(ConfigurationError, match="mode"):
        DualChannelSubscriber(SESSION, feed=feed, mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="secondary once"):
        DualChannelSubscriber(SESSION, feed=feed, relay_url="http://127.0.0.1:1")
    await feed.aclose()


async def test_aclose_inside_async_with_leaves_the_callers_code_running() -> None:
    hub = MemoryHub()
    async with DualChannelSubscriber(SESSION, link=hub.link("consumer")) as subscriber:
        with anyio.fail_after(bound(5.0)):
            await subscriber.aclose()
        await anyio.sleep(0.01)  # not cancelled
        assert [e async for e in subscriber] == []  # the stream has ended
        await subscriber.aclose()  # twice is fine


async def test_warm_mode_merges_the_relay_only_while_the_primary_is_not_active() -> None:
    hub, feed = MemoryHub(), MemoryFeed()
    agent = Agent(hub, feed)
    async with (
        DualChannelSubscriber(SESSION, link=hub.link("consumer"), feed=feed, mode="warm") as sub,
        anyio.create_task_group() as group,
    ):
        group.start_soon(agent.beat_forever)
        for seq in range(1, 6):
            await agent.send(seq)
        assert await take(sub, 5) == [1, 2, 3, 4, 5]
        await anyio.sleep(0.1)
        stats = sub.stats()
        assert stats.first_arrivals[S] == 0
        assert stats.duplicates[S] == 0  # never merged, so never a duplicate
        hub.drop_all = True
        with anyio.fail_after(bound(3.0)):
            while sub.status().active is not S:
                await anyio.sleep(0.01)
        for seq in range(6, 9):
            await agent.send(seq)
        assert await take(sub, 3) == [6, 7, 8]
        assert sub.stats().first_arrivals[S] == 3
        group.cancel_scope.cancel()
    await feed.aclose()
