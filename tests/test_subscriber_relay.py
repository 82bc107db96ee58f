"""The subscriber's secondary channel against the real relay (uvicorn, SQLite, HTTP)."""

from __future__ import annotations

import time

import anyio
import httpx
import pytest

from dualchannel import Channel, DualChannelSubscriber, RelayAuthError
from dualchannel.channels.sse import SSEFeed
from dualchannel.server.process import RelayProcess
from dualchannel.signing import WebhookSigner
from dualchannel.tokens import mint_token

from .fixtures.relay import DEV_API_KEY, DEV_API_SECRET, WEBHOOK_SECRET
from .helpers import SESSION, transcript
from .timing import bound

pytestmark = pytest.mark.anyio

S = Channel.SECONDARY


def token(room: str = SESSION) -> str:
    return mint_token(
        api_key=DEV_API_KEY, api_secret=DEV_API_SECRET, identity="consumer", room=room
    )


async def post(client: httpx.AsyncClient, relay: RelayProcess, seqs: range) -> None:
    body = b"[" + b",".join(transcript(seq).to_bytes() for seq in seqs) + b"]"
    headers = {"Content-Type": "application/json", "X-Session-ID": SESSION}
    headers |= WebhookSigner(WEBHOOK_SECRET).headers(body, timestamp=int(time.time()))
    response = await client.post(f"{relay.url}/api/transcription", content=body, headers=headers)
    assert response.status_code == 200, response.text


async def take(subscriber: DualChannelSubscriber, count: int, timeout: float = 10.0) -> list[int]:
    got: list[int] = []
    with anyio.fail_after(bound(timeout)):
        async for envelope in subscriber:
            got.append(envelope.seq)
            if len(got) == count:
                break
    return got


async def test_relay_only_subscriber_gets_history_then_live(relay: RelayProcess) -> None:
    async with httpx.AsyncClient() as client:
        await post(client, relay, range(1, 11))  # before the subscriber exists
        async with DualChannelSubscriber(
            SESSION, relay_url=relay.url, relay_token=token()
        ) as subscriber:
            assert await take(subscriber, 10) == list(range(1, 11))
            await post(client, relay, range(11, 21))
            assert await take(subscriber, 10) == list(range(11, 21))
            assert subscriber.status().active is not None
            assert subscriber.stats().first_arrivals[S] == 20


async def test_relay_killed_and_restarted_loses_and_repeats_nothing(relay: RelayProcess) -> None:
    async with (
        httpx.AsyncClient() as client,
        DualChannelSubscriber(SESSION, relay_url=relay.url, relay_token=token()) as subscriber,
    ):
        await post(client, relay, range(1, 21))
        assert await take(subscriber, 20) == list(range(1, 21))
        relay.kill()
        relay.restart()
        await post(client, relay, range(21, 41))
        assert await take(subscriber, 20) == list(range(21, 41))
        await anyio.sleep(0.3)
        stats = subscriber.stats()
        assert stats.delivered == 40
        assert stats.duplicates[S] == 0  # Last-Event-ID resumed exactly
        with pytest.raises(anyio.WouldBlock):
            subscriber.receive_nowait()


async def test_a_gap_is_backfilled_from_the_relay_replay_route(relay: RelayProcess) -> None:
    async with httpx.AsyncClient() as client:
        await post(client, relay, range(1, 6))
        feed = SSEFeed(relay.url, SESSION, token=token())
        found = await feed.fetch(transcript(1).epoch, 2, 100)
        assert [m["seq"] for m in found] == [3, 4, 5]
        await feed.aclose()


async def test_a_token_for_another_room_is_final_and_reported(relay: RelayProcess) -> None:
    # --dev lets token-less clients in, but a token that is presented must be right
    async with DualChannelSubscriber(
        SESSION, relay_url=relay.url, relay_token=token("another-room")
    ) as subscriber:
        with anyio.fail_after(bound(5.0)):
            while subscriber.status().secondary_error is None:
                await anyio.sleep(0.05)
        assert "403" in (subscriber.status().secondary_error or "")
    feed = SSEFeed(relay.url, SESSION, token=token("another-room"))
    with pytest.raises(RelayAuthError):
        await feed.fetch(1, 0, 10)
    await feed.aclose()
