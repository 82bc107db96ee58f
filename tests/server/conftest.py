"""Helpers for relay tests: the real app, in-process on ASGI or on a uvicorn loopback port."""

from __future__ import annotations

import math
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
import uvicorn
from httpx_sse import ServerSentEvent, aconnect_sse
from livekit.api import AccessToken, VideoGrants
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette

from dualchannel import Envelope
from dualchannel.server import create_app
from dualchannel.server.responses import RelayState
from dualchannel.server.store import Store
from tests.fixtures.relay import DEV_API_KEY, DEV_API_SECRET, WEBHOOK_SECRET

JSON = {"content-type": "application/json"}


def envelope(
    session: str = "lesson-1", seq: int = 1, *, epoch: int = 1, text: str = "hi", size: int = 0
) -> Envelope:
    content = text if not size else "x" * size
    return Envelope.transcript(
        session_id=session,
        epoch=epoch,
        seq=seq,
        segments=[{"content": content}],
        speaker="teacher",
    )


def batch_body(envelopes: Sequence[Envelope]) -> bytes:
    return b"[" + b",".join(e.to_bytes(max_size=None) for e in envelopes) + b"]"


def token(
    room: str, *, join: bool = True, subscribe: bool = True, secret: str = DEV_API_SECRET
) -> str:
    grants = VideoGrants(room_join=join, room=room, can_subscribe=subscribe)
    return (
        AccessToken(DEV_API_KEY, secret)
        .with_identity("viewer")
        .with_grants(grants)
        .with_ttl(timedelta(minutes=5))
        .to_jwt()
    )


def make_app(tmp_path: Path, **settings: Any) -> Starlette:
    options: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'relay.db'}",
        "livekit_api_key": DEV_API_KEY,
        "livekit_api_secret": DEV_API_SECRET,
        "heartbeat_interval": 0.2,
    }
    options.update(settings)
    return create_app(**options)


def state(app: Starlette) -> RelayState:
    relay: RelayState = app.state.relay
    return relay


_S = TypeVar("_S", bound=Store)


@asynccontextmanager
async def opened(store: _S) -> AsyncIterator[_S]:
    """``store``, open (tables created) for the block, closed after it."""
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def asgi_client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, behind httpx's ASGI transport (no sockets)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
            yield client


@asynccontextmanager
async def served(app: Starlette) -> AsyncIterator[str]:
    """The app on uvicorn on a loopback port; yields its base URL."""
    # proto=IPPROTO_TCP, so asyncio sets TCP_NODELAY on accepted connections.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", ws="none", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(10):
                while not server.started:
                    await anyio.sleep(0.01)
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True
    finally:
        sock.close()


@pytest.fixture
def app(tmp_path: Path) -> Starlette:
    return make_app(tmp_path, webhook_secret=WEBHOOK_SECRET)


async def read_events(
    client: httpx.AsyncClient,
    url: str,
    *,
    count: int,
    headers: dict[str, str] | None = None,
    skip_heartbeats: bool = True,
) -> list[ServerSentEvent]:
    """Open the stream, collect ``count`` events, close it."""
    events: list[ServerSentEvent] = []
    async with aconnect_sse(client, "GET", url, headers=headers or {}) as source:
        source.response.raise_for_status()
        async for event in source.aiter_sse():
            if not event.data or (skip_heartbeats and event.event == "heartbeat"):
                continue  # the opening retry hint (a browser dispatches nothing for it)
            events.append(event)
            if len(events) >= count:
                break
    return events


def signed(
    body: bytes, secret: str = WEBHOOK_SECRET, *, offset: float = 0.0, **extra: str
) -> dict[str, str]:
    """Headers for ``body`` signed by the ``standardwebhooks`` reference library."""
    hook = Webhook(secret)
    msg_id = "msg_" + uuid.uuid4().hex
    moment = datetime.now(UTC) + timedelta(seconds=offset)
    return {
        **JSON,
        "webhook-id": msg_id,
        "webhook-timestamp": str(math.floor(moment.timestamp())),
        "webhook-signature": hook.sign(msg_id, moment, body),
        **extra,
    }
