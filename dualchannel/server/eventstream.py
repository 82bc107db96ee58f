"""A lean ASGI ``text/event-stream`` response: pre-encoded frames, one helper task.

Why not a general SSE response class: the relay sends the same committed message to every
subscriber of a session, so the hub encodes its frame once (:func:`frame`) and each
stream only hands those bytes to the server. A stream costs one task for the frames plus
one that waits for the client to go away; an idle connection stays small (see the idle
benchmark) and a busy one does no per-subscriber encoding.

A write that the client does not take within ``send_timeout`` seconds (its socket buffer
stays full) ends the stream; so does the client disconnecting. A second task watches for
both, so a write costs no timer of its own. Either way the frame
iterator is closed, so its ``finally`` blocks (unsubscribing from the hub) run at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import anyio

__all__ = ["EventStream", "comment", "frame"]

logger = logging.getLogger("dualchannel.server.stream")

_Scope = Mapping[str, Any]


def frame(data: str | bytes, *, event: str | None = None, id: str | None = None) -> bytes:
    """One SSE event. ``data`` may hold newlines; each line gets its own ``data:`` field.

    Bytes without a line break (an envelope's compact JSON) are framed as they are.
    """
    head = (f"id: {id}\n" if id is not None else "") + (
        f"event: {event}\n" if event is not None else ""
    )
    if isinstance(data, bytes):
        if b"\n" not in data and b"\r" not in data:
            return b"".join((head.encode(), b"data: ", data, b"\n\n"))
        data = data.decode()
    lines = data.splitlines() if ("\n" in data or "\r" in data) else [data]
    return (head + "".join(f"data: {line}\n" for line in lines) + "\n").encode()


def comment(text: str, *, retry_ms: int | None = None) -> bytes:
    """A comment line (ignored by clients), with an optional reconnection-delay hint."""
    retry = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    return f": {text}\n{retry}\n".encode()


class EventStream:
    """Stream the byte frames of an async generator as ``text/event-stream``."""

    def __init__(
        self,
        frames: AsyncGenerator[bytes, None],
        *,
        send_timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.frames = frames
        self.send_timeout = send_timeout
        self.status_code = 200
        self.headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        for name, value in (headers or {}).items():
            if name.lower() not in ("content-type", "cache-control", "x-accel-buffering"):
                self.headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))

    async def __call__(self, scope: _Scope, receive: Any, send: Any) -> None:
        self._sending_since: float | None = None
        self._stalled = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, receive, tg.cancel_scope)
            try:
                await send({"type": "http.response.start", "status": 200, "headers": self.headers})
                async for chunk in self.frames:
                    self._sending_since = time.monotonic()
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    self._sending_since = None
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:  # the connection went away under a write
                pass
            finally:
                with anyio.CancelScope(shield=True):
                    await self.frames.aclose()
                tg.cancel_scope.cancel()
        if self._stalled:
            # Its buffers are full, so a clean end could not be written either: the
            # response stays unfinished and the server drops the connection.
            logger.warning(
                "SSE client took no data for %.1f s; dropping its connection "
                "(it resumes from its last id when it reconnects)",
                self.send_timeout,
            )

    async def _watch(self, receive: Any, scope: anyio.CancelScope) -> None:
        """Cancel the stream when the client leaves or a write stalls past the timeout.

        One watcher per stream instead of a timeout around every write: a write then
        costs two attribute stores, and the stall check runs a few times per timeout.
        """
        check_every = min(1.0, self.send_timeout / 2)
        while True:
            with anyio.move_on_after(check_every):
                message = await receive()
                if message["type"] == "http.disconnect":
                    scope.cancel()
                    return
            since = self._sending_since
            if since is not None and time.monotonic() - since > self.send_timeout:
                self._stalled = True
                scope.cancel()
                return
