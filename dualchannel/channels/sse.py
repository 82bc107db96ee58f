"""The relay edge of the subscriber: a small :class:`RelayFeed` protocol, SSE, and a twin.

The subscriber reads the secondary channel only through a :class:`RelayFeed`:

- ``await feed.run(on_event, on_state)`` streams the session's events until cancelled,
  reconnecting by itself with ``Last-Event-ID`` so nothing is missed and nothing repeats;
  it returns only by raising :class:`~dualchannel.errors.RelayAuthError` (a bad token is
  final: retrying would be refused again) or when cancelled;
- ``await feed.fetch(epoch, after_seq, limit)`` reads stored envelopes for gap backfill.

:class:`SSEFeed` is the real one (``httpx`` + ``httpx-sse`` against
``/api/sessions/{id}/events`` and ``/api/sessions/{id}/messages``). Reconnects wait with
full-jitter backoff, never less than the server's ``retry:`` hint. :class:`MemoryFeed` is
an in-memory twin that tests drive by hand.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import anyio
import httpx
from httpx_sse import SSEError, aconnect_sse

from ..errors import RelayAuthError, RelayRejected, RelayUnavailable
from ..protocol.backoff import RetryPolicy, backoff_delays
from .livekit import LinkState

__all__ = ["MemoryFeed", "RelayEvent", "RelayFeed", "SSEFeed"]

logger = logging.getLogger("dualchannel.sse")


@dataclass(frozen=True, slots=True)
class RelayEvent:
    """One Server-Sent Event: its ``event`` name, ``data`` text and resume ``id``."""

    event: str
    data: str
    id: str | None = None


EventHandler = Callable[[RelayEvent], None]
StateHandler = Callable[[LinkState], None]


@runtime_checkable
class RelayFeed(Protocol):
    """The session's stream and replay on the relay."""

    async def run(self, on_event: EventHandler, on_state: StateHandler) -> None:
        """Stream events into ``on_event`` until cancelled, reconnecting as needed."""
        ...

    async def fetch(self, epoch: int, after_seq: int, limit: int) -> list[dict[str, Any]]:
        """Stored envelopes of ``epoch`` after ``after_seq``, in seq order, as JSON objects."""
        ...


def _raise_for_status(response: httpx.Response, what: str) -> None:
    if response.status_code < 400:
        return
    reason = f"HTTP {response.status_code}"
    try:
        body = response.json()
        if isinstance(body, dict):
            reason = str(body.get("message") or body.get("error") or reason)
    except (ValueError, httpx.ResponseNotRead):
        pass
    if response.status_code in (401, 403):
        raise RelayAuthError(
            response.status_code,
            f"{reason} ({what}: pass a LiveKit token for this session's room as relay_token)",
        )
    if response.status_code in (408, 425, 429) or response.status_code >= 500:
        raise RelayUnavailable(f"{what}: relay answered {response.status_code}: {reason}")
    raise RelayRejected(response.status_code, f"{reason} ({what})")


class SSEFeed:
    """A :class:`RelayFeed` over the relay's HTTP routes.

    ``token`` is sent as ``Authorization: Bearer``; the same LiveKit access token that joins
    the room works. ``client`` may be shared; otherwise one is made and closed with the feed.
    ``read_timeout`` bounds silence on an open stream (the relay beats every second) before
    the connection is dropped and resumed.
    """

    def __init__(
        self,
        relay_url: str,
        session_id: str,
        *,
        token: str | None = None,
        client: httpx.AsyncClient | None = None,
        retry: RetryPolicy = RetryPolicy(initial=0.25, max_delay=5.0),
        read_timeout: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._base = relay_url.rstrip("/")
        self._session = session_id
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(5.0, read=read_timeout),
        )
        self._read_timeout = read_timeout
        self._retry = retry
        self._rng = rng or random.Random()
        self.last_event_id: str | None = None
        self.server_retry: float | None = None
        self.connects = 0

    @property
    def events_url(self) -> str:
        return f"{self._base}/api/sessions/{self._session}/events"

    async def run(self, on_event: EventHandler, on_state: StateHandler) -> None:
        delays = backoff_delays(self._retry, rng=self._rng)
        while True:
            delivered = False
            try:
                delivered = await self._stream_once(on_event, on_state)
            except RelayAuthError:
                on_state(LinkState.DISCONNECTED)
                raise
            except (httpx.HTTPError, SSEError, RelayUnavailable, RelayRejected) as exc:
                logger.info(
                    "sse_disconnected",
                    extra={"session_id": self._session, "error": repr(exc)},
                )
            on_state(LinkState.DISCONNECTED)
            if delivered:  # a healthy connection resets the backoff
                delays = backoff_delays(self._retry, rng=self._rng)
            wait = next(delays, self._retry.max_delay)
            if self.server_retry is not None:
                wait = max(wait, self.server_retry)
            await anyio.sleep(wait)

    async def _stream_once(self, on_event: EventHandler, on_state: StateHandler) -> bool:
        headers = dict(self._headers)
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        delivered = False
        async with aconnect_sse(self._client, "GET", self.events_url, headers=headers) as source:
            response = source.response
            if response.status_code >= 400:
                await response.aread()
                _raise_for_status(response, "SSE subscribe")
            self.connects += 1
            on_state(LinkState.RECONNECTED if self.connects > 1 else LinkState.CONNECTED)
            async for sse in source.aiter_sse():
                if sse.retry is not None:
                    self.server_retry = sse.retry / 1000
                if sse.id:
                    self.last_event_id = sse.id
                if not sse.data:
                    continue
                delivered = True
                on_event(RelayEvent(sse.event or "message", sse.data, sse.id or None))
                if sse.event == "overflow":
                    logger.warning(
                        "sse_overflow", extra={"session_id": self._session, "reason": sse.data}
                    )
                    break
        return delivered

    async def fetch(self, epoch: int, after_seq: int, limit: int) -> list[dict[str, Any]]:
        url = f"{self._base}/api/sessions/{self._session}/messages"
        params = {"epoch": epoch, "after_seq": after_seq, "limit": min(limit, 1000)}
        try:
            response = await self._client.get(url, params=params, headers=self._headers)
        except httpx.HTTPError as exc:
            raise RelayUnavailable(f"backfill: {exc!r}") from exc
        _raise_for_status(response, "backfill")
        try:
            messages = response.json()["messages"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RelayUnavailable(f"backfill: unexpected answer {response.text[:200]!r}") from exc
        if not isinstance(messages, list):
            raise RelayUnavailable("backfill: 'messages' is not a list")
        return [m for m in messages if isinstance(m, dict)]

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()


class MemoryFeed:
    """An in-memory :class:`RelayFeed`: tests call :meth:`emit` and fill :attr:`stored`.

    ``stored`` maps ``(epoch, seq)`` to the envelope JSON that :meth:`fetch` answers with.
    :meth:`disconnect` drops the current "connection" (the state handler hears it);
    ``fail_fetch`` makes backfill raise :class:`RelayUnavailable`.
    """

    def __init__(self) -> None:
        self.stored: dict[tuple[int, int], dict[str, Any]] = {}
        self.fail_fetch = False
        self.fetches: list[tuple[int, int, int]] = []
        self._send, self._receive = anyio.create_memory_object_stream[RelayEvent | None](math.inf)

    def emit(self, event: RelayEvent) -> None:
        self._send.send_nowait(event)

    def disconnect(self) -> None:
        self._send.send_nowait(None)

    async def run(self, on_event: EventHandler, on_state: StateHandler) -> None:
        on_state(LinkState.CONNECTED)
        async for item in self._receive:
            if item is None:
                on_state(LinkState.DISCONNECTED)
                on_state(LinkState.RECONNECTED)
                continue
            on_event(item)
        await anyio.sleep_forever()

    async def fetch(self, epoch: int, after_seq: int, limit: int) -> list[dict[str, Any]]:
        self.fetches.append((epoch, after_seq, limit))
        if self.fail_fetch:
            raise RelayUnavailable("backfill: the memory feed is set to fail")
        seqs = sorted(s for (e, s) in self.stored if e == epoch and s > after_seq)[:limit]
        return [self.stored[(epoch, s)] for s in seqs]

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()
