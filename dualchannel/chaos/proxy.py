"""A loopback HTTP proxy in front of the relay that can refuse requests for a while.

The relay has no fault hook, and a chaos harness should not need one: :class:`FaultProxy`
listens on ``127.0.0.1``, forwards each request to the relay unchanged (h11 on the client
side, httpx to the relay) and, while a window opened by :meth:`FaultProxy.refuse` lasts,
answers it itself with that status (429 or 503, with ``Retry-After``) instead. The
publisher posts to :attr:`FaultProxy.url`; subscribers keep talking to the relay directly.

It serves plain request/response traffic (webhooks, health checks, replay), one request at
a time per connection with keep-alive, which is what the publisher sends; it does not
stream. When the relay cannot be reached it answers 502, as a real proxy would.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from typing import Self

import anyio
import h11
import httpx
from anyio.abc import Listener, SocketAttribute, SocketStream, TaskGroup

__all__ = ["FaultProxy"]

logger = logging.getLogger("dualchannel.chaos.proxy")

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"host",
        b"content-length",
        b"content-encoding",
    }
)
_MAX_BODY = 4 * 1024 * 1024


class FaultProxy:
    """Forward HTTP to ``upstream`` (the relay), or refuse it during a fault window.

    ``async with FaultProxy(relay.url) as proxy:`` binds a free loopback port and serves
    until the block ends. ``forwarded`` and ``refused`` (a :class:`~collections.Counter`
    by status) count what it did.
    """

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.port = 0
        self.forwarded = 0
        self.refused: Counter[int] = Counter()
        self._timeout = timeout
        self._fault: tuple[int, float, float] | None = None  # status, until, retry_after
        self._client: httpx.AsyncClient | None = None
        self._group: TaskGroup | None = None
        self._listener: Listener[SocketStream] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def refuse(self, status: int, seconds: float, *, retry_after: float = 1.0) -> None:
        """Answer every request with ``status`` for the next ``seconds`` seconds."""
        self._fault = (status, time.monotonic() + seconds, retry_after)
        logger.info("proxy_refusing", extra={"status": status, "seconds": seconds})

    def heal(self) -> None:
        """End the fault window now."""
        self._fault = None

    @property
    def refusing(self) -> int | None:
        """The status being answered now, or None while forwarding."""
        if self._fault is None or time.monotonic() >= self._fault[1]:
            return None
        return self._fault[0]

    async def __aenter__(self) -> Self:
        listener = self._listener = await anyio.create_tcp_listener(
            local_host=self.host, local_port=0
        )
        self.port = listener.extra(SocketAttribute.local_port)
        self._client = httpx.AsyncClient(
            base_url=self.upstream, timeout=self._timeout, trust_env=False
        )
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(listener.serve, self._serve_connection)
        return self

    async def __aexit__(self, *exc: object) -> None:
        group, self._group = self._group, None
        if group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
        if self._listener is not None:
            await self._listener.aclose()
        if self._client is not None:
            await self._client.aclose()

    # -- one client connection ----------------------------------------------------------

    async def _serve_connection(self, stream: SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        async with stream:
            try:
                while True:
                    request, body = await self._read_request(conn, stream)
                    if request is None:
                        return
                    status, headers, content = await self._answer(request, body)
                    await self._send(conn, stream, status, headers, content)
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
            except (anyio.EndOfStream, anyio.BrokenResourceError, h11.ProtocolError, OSError):
                return

    async def _read_request(
        self, conn: h11.Connection, stream: SocketStream
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive()
                except anyio.EndOfStream:
                    data = b""
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > _MAX_BODY:
                    raise h11.LocalProtocolError("request body too large for the proxy")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return request, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None, b""

    async def _answer(
        self, request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        status = self.refusing
        if status is not None:
            assert self._fault is not None
            retry_after = str(max(1, math.ceil(self._fault[2]))).encode()
            self.refused[status] += 1
            content = json.dumps(
                {"success": False, "error": "chaos_fault", "message": f"injected {status}"}
            ).encode()
            headers = [(b"content-type", b"application/json"), (b"retry-after", retry_after)]
            return status, headers, content
        assert self._client is not None
        forward = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers
            if name.lower() not in _HOP_BY_HOP
        ]
        try:
            answer = await self._client.request(
                request.method.decode(), request.target.decode(), headers=forward, content=body
            )
        except httpx.HTTPError as exc:
            content = json.dumps(
                {"success": False, "error": "bad_gateway", "message": str(exc) or repr(exc)}
            ).encode()
            return 502, [(b"content-type", b"application/json")], content
        self.forwarded += 1
        headers = [
            (name, value) for name, value in answer.headers.raw if name.lower() not in _HOP_BY_HOP
        ]
        return answer.status_code, headers, answer.content

    async def _send(
        self,
        conn: h11.Connection,
        stream: SocketStream,
        status: int,
        headers: list[tuple[bytes, bytes]],
        content: bytes,
    ) -> None:
        headers = [*headers, (b"content-length", str(len(content)).encode())]
        events: list[h11.Response | h11.Data | h11.EndOfMessage] = [
            h11.Response(status_code=status, headers=headers)
        ]
        if content:
            events.append(h11.Data(data=content))
        events.append(h11.EndOfMessage())
        for event in events:
            data = conn.send(event)
            if data:
                await stream.send(data)
