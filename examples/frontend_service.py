"""A frontend-facing service: one DualChannelSubscriber per session, re-served to browsers.

This is how the spec's TeachingBoard consumes dualchannel: the service listens to a lesson
on both channels (LiveKit and the relay) and re-serves the merged, exactly-once stream to
browsers over Server-Sent Events, with the channel status alongside.

It needs the server extra and sse-starlette: ``pip install 'dualchannel[server]'
sse-starlette``. Run it next to a livekit-server and a relay (``dualchannel demo``
starts both and prints their addresses; or use your own)::

    python examples/frontend_service.py \\
        --livekit-url ws://127.0.0.1:7880 --relay-url http://127.0.0.1:8000 \\
        --api-key devkey --api-secret <secret> --port 8080

Then in a browser or with curl::

    curl -N http://127.0.0.1:8080/sessions/lesson-42/stream     # SSE: message / switch events
    curl http://127.0.0.1:8080/sessions/lesson-42/status        # JSON: channel health, stats

One subscriber serves every browser watching a session; it starts with the first browser
and stops a little after the last one leaves. A browser that joins late first gets the
messages the service already has, then the live stream.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dualchannel import ChannelSwitch, DualChannelSubscriber
from dualchannel.envelope import SESSION_ID_PATTERN, session_id_ok
from dualchannel.tokens import mint_token

HISTORY = 10_000  # messages kept per session for browsers that join late
LINGER = 10.0  # seconds a session's subscriber outlives its last browser


@dataclass(frozen=True, slots=True)
class Settings:
    livekit_url: str | None
    relay_url: str | None
    api_key: str
    api_secret: str


@dataclass
class SessionFeed:
    """One session: its subscriber, what it delivered so far, and the browsers watching."""

    session_id: str
    history: deque[str] = field(default_factory=lambda: deque(maxlen=HISTORY))
    browsers: set[MemoryObjectSendStream[dict[str, str]]] = field(default_factory=set)
    subscriber: DualChannelSubscriber | None = None
    stop: anyio.Event = field(default_factory=anyio.Event)

    def broadcast(self, event: dict[str, str]) -> None:
        for browser in list(self.browsers):
            try:
                browser.send_nowait(event)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.browsers.discard(browser)  # too slow or gone: it reconnects


class Sessions:
    """Starts a subscriber per watched session inside the app's task group."""

    def __init__(self, settings: Settings, group: TaskGroup) -> None:
        self._settings = settings
        self._group = group
        self._feeds: dict[str, SessionFeed] = {}

    def feed(self, session_id: str) -> SessionFeed:
        feed = self._feeds.get(session_id)
        if feed is None:
            feed = self._feeds[session_id] = SessionFeed(session_id)
            self._group.start_soon(self._run, feed)
        return feed

    def get(self, session_id: str) -> SessionFeed | None:
        return self._feeds.get(session_id)

    async def _run(self, feed: SessionFeed) -> None:
        s = self._settings
        token = mint_token(
            api_key=s.api_key,
            api_secret=s.api_secret,
            identity=f"frontend-service-{uuid.uuid4().hex[:8]}",
            room=feed.session_id,
            can_publish=False,
            can_publish_data=False,
        )
        try:
            async with DualChannelSubscriber(
                feed.session_id,
                livekit_url=s.livekit_url,
                livekit_token=token if s.livekit_url else None,
                relay_url=s.relay_url,
                relay_token=token,
            ) as subscriber:
                feed.subscriber = subscriber

                def on_switch(switch: ChannelSwitch) -> None:
                    feed.broadcast({"event": "switch", "data": json.dumps(_switch_json(switch))})

                subscriber.on_switch(on_switch)
                async with anyio.create_task_group() as group:
                    group.start_soon(_watch_stop, feed, group)
                    async for envelope in subscriber:
                        data = envelope.to_bytes().decode()
                        feed.history.append(data)
                        feed.broadcast({"event": "message", "data": data, "id": str(envelope.seq)})
        finally:
            self._feeds.pop(feed.session_id, None)
            for browser in feed.browsers:
                browser.close()

    def release(self, feed: SessionFeed) -> None:
        if not feed.browsers:
            self._group.start_soon(self._linger, feed)

    async def _linger(self, feed: SessionFeed) -> None:
        await anyio.sleep(LINGER)
        if not feed.browsers:
            feed.stop.set()


async def _watch_stop(feed: SessionFeed, group: TaskGroup) -> None:
    await feed.stop.wait()
    group.cancel_scope.cancel()


def _switch_json(switch: ChannelSwitch) -> dict[str, Any]:
    return {
        "from": switch.from_channel,
        "to": switch.to_channel,
        "reason": switch.reason,
        "silentForMs": round(switch.silent_for * 1000),
    }


def _bad_session(session_id: str) -> JSONResponse:
    return JSONResponse(
        {"error": "bad_session_id", "message": f"session id must match {SESSION_ID_PATTERN}"},
        status_code=400,
    )


def create_app(settings: Settings) -> Starlette:
    sessions: Sessions | None = None

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        nonlocal sessions
        async with anyio.create_task_group() as group:
            sessions = Sessions(settings, group)
            yield
            group.cancel_scope.cancel()

    async def stream(request: Request) -> EventSourceResponse | JSONResponse:
        session_id = request.path_params["session_id"]
        if not session_id_ok(session_id):
            return _bad_session(session_id)
        assert sessions is not None
        feed = sessions.feed(session_id)
        send, receive = anyio.create_memory_object_stream[dict[str, str]](1_000)
        backlog = list(feed.history)
        feed.browsers.add(send)

        async def events() -> AsyncIterator[dict[str, str]]:
            try:
                for data in backlog:
                    yield {"event": "message", "data": data}
                async with receive:
                    async for event in receive:
                        yield event
            finally:
                feed.browsers.discard(send)
                send.close()
                sessions.release(feed)

        return EventSourceResponse(events(), ping=15)

    async def status(request: Request) -> JSONResponse:
        session_id = request.path_params["session_id"]
        if not session_id_ok(session_id):
            return _bad_session(session_id)
        assert sessions is not None
        feed = sessions.get(session_id)
        if feed is None or feed.subscriber is None:
            return JSONResponse(
                {
                    "error": "not_watched",
                    "message": "no browser is watching this session; "
                    f"open /sessions/{session_id}/stream first",
                },
                status_code=404,
            )
        st, stats = feed.subscriber.status(), feed.subscriber.stats()
        return JSONResponse(
            {
                "sessionId": session_id,
                "active": st.active,
                "health": {str(k): str(v) for k, v in st.health.items()},
                "silentForMs": {
                    str(k): round(v * 1000) for k, v in st.silent_for.items() if math.isfinite(v)
                },
                "delivered": stats.delivered,
                "duplicatesDropped": {str(k): v for k, v in stats.duplicates.items()},
                "backfilled": stats.backfilled,
                "lost": stats.lost,
                "switches": stats.switches,
                "browsers": len(feed.browsers),
            }
        )

    return Starlette(
        routes=[
            Route("/sessions/{session_id}/stream", stream),
            Route("/sessions/{session_id}/status", status),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--livekit-url", help="ws://host:port of livekit-server (primary)")
    parser.add_argument("--relay-url", help="http://host:port of the relay (secondary)")
    parser.add_argument("--api-key", required=True, help="LiveKit API key (mints tokens)")
    parser.add_argument("--api-secret", required=True, help="LiveKit API secret")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    if not args.livekit_url and not args.relay_url:
        parser.error("give --livekit-url and/or --relay-url: there is nothing to listen to")
    settings = Settings(args.livekit_url, args.relay_url, args.api_key, args.api_secret)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
