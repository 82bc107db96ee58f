"""The lean SSE response: frame encoding, and how a stream ends (disconnect, slow client)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import anyio
import httpx
import pytest

from dualchannel.server.eventstream import EventStream, comment, frame
from tests.timing import bound

from .conftest import make_app, served, state

pytestmark = pytest.mark.anyio


def test_frame_fields_and_multiline_data() -> None:
    assert frame('{"a":1}', event="transcript", id="7") == (
        b'id: 7\nevent: transcript\ndata: {"a":1}\n\n'
    )
    assert frame("one\ntwo\r\nthree") == b"data: one\ndata: two\ndata: three\n\n"
    assert comment("hello", retry_ms=1500) == b": hello\nretry: 1500\n\n"


class _Frames:
    """A frame source that records whether the stream closed it."""

    def __init__(self) -> None:
        self.closed = anyio.Event()
        self.sent = 0

    async def run(self) -> AsyncGenerator[bytes, None]:
        try:
            while True:
                self.sent += 1
                yield frame(str(self.sent))
                await anyio.sleep(0.01)
        finally:
            self.closed.set()


async def test_disconnect_ends_the_stream_and_closes_its_source() -> None:
    frames = _Frames()
    gone = anyio.Event()
    bodies: list[bytes] = []

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])
            if len(bodies) == 3:
                gone.set()

    with anyio.fail_after(bound(5)):
        await EventStream(frames.run(), send_timeout=5)({}, receive, send)
        await frames.closed.wait()
    assert bodies[:3] == [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]
    assert len(bodies) < 10  # it stopped soon after the disconnect, not at the timeout


async def test_a_client_that_stops_reading_is_dropped_after_send_timeout() -> None:
    frames = _Frames()
    started = anyio.Event()
    calls = 0

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if message["type"] == "http.response.body":
            started.set()
            await anyio.sleep_forever()  # its socket buffer never drains

    timeout = bound(0.2)
    with anyio.fail_after(bound(5)):
        begun = anyio.current_time()
        await EventStream(frames.run(), send_timeout=timeout)({}, receive, send)
        await frames.closed.wait()
    assert started.is_set() and frames.sent == 1
    assert anyio.current_time() - begun >= timeout


async def test_relay_unsubscribes_a_client_that_hangs_up(tmp_path: Any) -> None:
    app = make_app(tmp_path, dev=True)
    async with served(app) as base, httpx.AsyncClient(timeout=bound(10)) as client:
        with anyio.fail_after(bound(10)):
            async with client.stream("GET", base + "/api/sessions/lesson-1/events") as answer:
                assert answer.headers["content-type"].startswith("text/event-stream")
                assert answer.headers["cache-control"] == "no-store"
                async for chunk in answer.aiter_bytes():
                    assert b"retry:" in chunk
                    break
                assert state(app).hub.subscriber_count == 1
            while state(app).hub.subscriber_count:
                await anyio.sleep(0.02)
