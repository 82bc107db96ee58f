"""The guarantee, with real parts: real livekit-server, real relay, real publisher.

A publisher sends a steady stream on both channels. The livekit-server process is paused
with SIGSTOP (by its pid): the subscriber must switch to the secondary within one second
of the last primary signal and keep delivering; once the server is continued it must
switch back within five seconds; and across all of it the application sees every seq
exactly once, in order.
"""

from __future__ import annotations

import time

import anyio
import pytest

from dualchannel import Channel, ChannelSwitch, DualChannelSubscriber
from dualchannel.devserver import LiveKitDevServer
from dualchannel.publisher import DualChannelPublisher
from dualchannel.server.process import RelayProcess
from dualchannel.tokens import mint_token

from .fixtures.livekit import connect_room
from .fixtures.relay import WEBHOOK_SECRET
from .helpers import SESSION
from .timing import bound

pytestmark = [pytest.mark.anyio, pytest.mark.livekit]

P, S = Channel.PRIMARY, Channel.SECONDARY
RATE = 20  # messages per second


async def until(predicate, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    """Wait until ``predicate()``; return when (monotonic). Fails naming ``what``."""
    try:
        with anyio.fail_after(timeout):
            while not predicate():
                await anyio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}") from None
    return time.monotonic()


async def test_primary_paused_switches_within_a_second_and_back_within_five(
    fresh_livekit_server: LiveKitDevServer, relay: RelayProcess
) -> None:
    server = fresh_livekit_server
    token = mint_token(
        api_key=server.api_key, api_secret=server.api_secret, identity="consumer", room=SESSION
    )
    delivered: list[int] = []
    switches: list[tuple[float, ChannelSwitch]] = []
    sent = 0

    async with (
        connect_room(server, SESSION, "agent") as agent_room,
        DualChannelPublisher(
            SESSION, room=agent_room, relay_url=relay.url, webhook_secret=WEBHOOK_SECRET
        ) as publisher,
        DualChannelSubscriber(
            SESSION,
            livekit_url=server.url,
            livekit_token=token,
            publisher_identity="agent",
            relay_url=relay.url,
            relay_token=token,
        ) as subscriber,
        anyio.create_task_group() as group,
    ):
        subscriber.on_switch(lambda s: switches.append((time.monotonic(), s)))

        async def produce() -> None:
            nonlocal sent
            while True:
                sent += 1
                await publisher.send_transcript(
                    [{"type": "text", "content": f"line {sent}"}], speaker="teacher"
                )
                await anyio.sleep(1 / RATE)

        async def consume() -> None:
            async for envelope in subscriber:
                delivered.append(envelope.seq)

        group.start_soon(consume)
        group.start_soon(produce)

        # Healthy first: the primary delivers first for a while.
        await until(lambda: subscriber.stats().first_arrivals[P] >= RATE, bound(15), "primary")
        assert subscriber.status().active is P

        server.pause()
        paused_at = time.monotonic()
        await until(lambda: subscriber.status().active is S, bound(5), "switch to secondary")
        during = len(delivered)
        await anyio.sleep(3.0)
        assert len(delivered) > during, "nothing was delivered while the primary was paused"

        server.resume()
        resumed_at = time.monotonic()
        back_at = await until(
            lambda: subscriber.status().active is P, bound(10), "switch back to primary"
        )

        # Let the stream run a little on the recovered primary, then stop and drain.
        await anyio.sleep(1.0)
        group.cancel_scope.cancel()

    # Drain: every sent seq must have arrived (the relay holds them all).
    async with DualChannelSubscriber(SESSION, relay_url=relay.url, relay_token=token) as check:
        seen: list[int] = []
        with anyio.fail_after(bound(15)):
            async for envelope in check:
                seen.append(envelope.seq)
                if len(seen) == sent:
                    break
    assert seen == list(range(1, sent + 1)), "the relay's log is not the full stream"

    assert delivered == sorted(set(delivered)), "a duplicate or out-of-order delivery"
    assert delivered[0] == 1
    # The live subscriber may have stopped before the very last message arrived.
    assert delivered == list(range(1, len(delivered) + 1))
    assert len(delivered) >= sent - RATE

    to_secondary = [(t, s) for t, s in switches if s.to_channel is S]
    to_primary = [(t, s) for t, s in switches if s.to_channel is P]
    assert len(to_secondary) == 1 and len(to_primary) == 1, switches
    seen_at, switch = to_secondary[0]
    assert switch.from_channel is P
    # within one second of the last primary signal (pausing can only make it later)
    assert switch.silent_for <= bound(1.0), switch
    assert seen_at - paused_at <= bound(1.0) + 0.25, (seen_at - paused_at, switch)
    assert back_at - resumed_at <= bound(5.0), back_at - resumed_at
    assert to_primary[0][1].from_channel is S
