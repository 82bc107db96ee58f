"""A minimal HTTP/1.1 client on raw asyncio protocols, for load generation and SSE reading.

Why not httpx: a load generator must not be the bottleneck, and on a 2-core machine every
microsecond the generator spends per request is a microsecond the relay does not get.
These protocols do the least HTTP/1.1 that the relay, the naive relay, the trivial echo
server and Centrifugo need: keep-alive connections, one request in flight per connection,
``Content-Length`` or ``chunked`` bodies, and a streaming reader that hands decoded body
bytes to a callback (for Server-Sent Events).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

__all__ = [
    "ChunkedDecoder",
    "HttpConnection",
    "HttpError",
    "StreamConnection",
    "build_get",
    "build_post",
    "open_connection",
    "open_stream",
]

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.IGNORECASE)


class HttpError(Exception):
    """The connection broke or the peer answered something this client cannot read."""


def build_post(host: str, path: str, body: bytes, headers: str = "") -> bytes:
    """A keep-alive ``POST`` with a JSON body; ``headers`` is extra ``Name: value\\r\\n`` lines."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


def build_get(host: str, path: str, headers: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode()


class ChunkedDecoder:
    """Incremental ``Transfer-Encoding: chunked`` decoder: ``feed(raw) -> body bytes``."""

    __slots__ = ("_buffer", "_remaining", "done")

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0  # body bytes left in the current chunk, plus its CRLF
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out: list[bytes] = []
        while self._buffer and not self.done:
            if self._remaining:
                take = self._buffer[: self._remaining]
                self._buffer = self._buffer[len(take) :]
                self._remaining -= len(take)
                # the last two bytes of every chunk are its CRLF, not body
                body_left = self._remaining - 2
                if body_left >= 0:
                    out.append(take)
                else:
                    out.append(take[: len(take) + body_left])
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                break
            size = int(self._buffer[:end].split(b";")[0], 16)
            self._buffer = self._buffer[end + 2 :]
            if size == 0:
                self.done = True
                break
            self._remaining = size + 2
        return b"".join(out)


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; :meth:`request` sends and awaits ``(status, body)``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._buffer = b""
        self._head_end = -1
        self._length = -1
        self._chunked: ChunkedDecoder | None = None
        self._body: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(HttpError(f"connection lost: {exc}"))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        if self.closed or self.transport is None:
            raise HttpError("connection is closed")
        if self._waiter is not None and not self._waiter.done():
            raise HttpError("a request is already in flight on this connection")
        self._waiter = asyncio.get_running_loop().create_future()
        self._buffer = b""
        self._head_end = -1
        self._chunked = None
        self._body = []
        self.transport.write(data)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._head_end < 0:
            self._buffer += data
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end]
            self._head_end = end
            match = _CONTENT_LENGTH.search(head)
            if match is not None:
                self._length = int(match.group(1))
            elif _CHUNKED.search(head):
                self._chunked = ChunkedDecoder()
                self._length = -1
            else:
                self._length = 0
            data = self._buffer[end + 4 :]
        if self._chunked is not None:
            self._body.append(self._chunked.feed(data))
            if self._chunked.done:
                self._finish()
            return
        self._body.append(data)
        if sum(len(part) for part in self._body) >= self._length:
            self._finish()

    def _finish(self) -> None:
        assert self._waiter is not None
        head = self._buffer[: self._head_end]
        try:
            status = int(head[9:12])
        except ValueError:
            self._waiter.set_exception(HttpError(f"bad status line {head[:40]!r}"))
            return
        self._waiter.set_result((status, b"".join(self._body)))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_connection(host: str, port: int) -> HttpConnection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(HttpConnection, host, port)
    return protocol


@dataclass(slots=True)
class _StreamState:
    head: bytes = b""
    status: int = 0
    chunked: ChunkedDecoder | None = None


class StreamConnection(asyncio.Protocol):
    """A streaming ``GET``: after the head, decoded body bytes go to ``on_body``.

    ``ready`` resolves with the status once the response head has arrived.
    """

    def __init__(self, on_body: Callable[[bytes], None]) -> None:
        self.on_body = on_body
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._state = _StreamState()
        self._in_body = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(HttpError(f"connection lost before the head: {exc}"))

    def data_received(self, data: bytes) -> None:
        state = self._state
        if not self._in_body:
            state.head += data
            end = state.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = state.head[:end], state.head[end + 4 :]
            state.head = head
            try:
                state.status = int(head[9:12])
            except ValueError:
                state.status = 0
            if _CHUNKED.search(head):
                state.chunked = ChunkedDecoder()
            self._in_body = True
            if not self.ready.done():
                self.ready.set_result(state.status)
        if state.chunked is not None:
            data = state.chunked.feed(data)
        if data:
            self.on_body(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_stream(
    host: str, port: int, request: bytes, on_body: Callable[[bytes], None]
) -> StreamConnection:
    """Connect, send ``request`` (a GET or POST), return once the connection is open."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: StreamConnection(on_body), host, port)
    assert protocol.transport is not None
    protocol.transport.write(request)
    return protocol
