"""The webhook edge: a small :class:`WebhookSender` protocol, the httpx sender, and a twin.

The publisher talks to the relay only through a :class:`WebhookSender`:

- ``await sender.post(path, body, headers)`` returns the relay's :class:`WebhookResponse`
  whatever its status (deciding what a status means is the publisher's job, through
  :func:`~dualchannel.protocol.classify_status`); it raises
  :class:`~dualchannel.errors.RelayUnavailable` only when no answer came (connection
  refused, reset, timed out);
- ``await sender.get(path)`` does the same for a GET (the health check);
- ``await sender.aclose()`` releases connections.

:class:`HttpxWebhookSender` is the real one (one ``httpx.AsyncClient``, connection reuse,
5 s timeout). :class:`MemoryRelay` is an in-memory twin of the relay's HTTP contract —
idempotent store, batches, signatures, a moving-window rate limit with ``RateLimit-*``
headers, 429/503 with ``Retry-After`` — served through ``httpx.MockTransport`` so the real
sender code runs against it.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import anyio
import httpx

from .._version import __version__
from ..errors import RelayUnavailable
from ..signing import InvalidSignature, WebhookSigner

__all__ = [
    "AGENT_TYPE",
    "HttpxWebhookSender",
    "MemoryRelay",
    "RelayRequest",
    "WebhookResponse",
    "WebhookSender",
    "webhook_headers",
]

#: The ``X-Agent-Type`` every webhook carries.
AGENT_TYPE = "dualchannel-python"


@dataclass(frozen=True, slots=True)
class WebhookResponse:
    """What the relay answered: status, headers (lower-case names), parsed JSON body."""

    status: int
    headers: Mapping[str, str]
    json: Any = None

    @property
    def reason(self) -> str:
        """The relay's human-readable reason (its ``message`` or ``error``), or the status."""
        if isinstance(self.json, dict):
            for key in ("message", "error"):
                value = self.json.get(key)
                if isinstance(value, str) and value:
                    return value
        return f"HTTP {self.status}"


@runtime_checkable
class WebhookSender(Protocol):
    """Sends requests to the relay."""

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> WebhookResponse:
        """POST ``body``; return any answer, raise RelayUnavailable when none came."""
        ...

    async def get(self, path: str) -> WebhookResponse:
        """GET ``path``; return any answer, raise RelayUnavailable when none came."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def webhook_headers(
    *,
    session_id: str,
    attempt: int,
    body: bytes,
    signer: WebhookSigner | None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """The headers of one webhook attempt: the spec's, plus Standard Webhooks when signed.

    ``webhook-id`` is derived from ``body``, so every retry of one payload shares it, while
    ``webhook-timestamp`` (default: now) and ``X-Retry-Attempt`` change per attempt.
    """
    headers = {
        "Content-Type": "application/json",
        "X-Session-ID": session_id,
        "X-Retry-Attempt": str(attempt),
        "X-Agent-Version": __version__,
        "X-Agent-Type": AGENT_TYPE,
    }
    if signer is not None:
        stamp = int(time.time()) if timestamp is None else timestamp
        headers.update(signer.headers(body, timestamp=stamp))
    return headers


class HttpxWebhookSender:
    """A :class:`WebhookSender` over one ``httpx.AsyncClient`` (connections are reused).

    Pass ``client`` to share one you own (it is then not closed here), or ``transport`` to
    route requests elsewhere (``MemoryRelay().transport`` in tests).
    """

    def __init__(
        self,
        relay_url: str,
        *,
        timeout: float = 5.0,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.relay_url = relay_url.rstrip("/")
        self._owned = client is None
        self._client = client or httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": f"dualchannel/{__version__}"},
        )
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"HttpxWebhookSender({self.relay_url!r})"

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> WebhookResponse:
        return await self._request("POST", path, body, headers)

    async def get(self, path: str) -> WebhookResponse:
        return await self._request("GET", path, None, {})

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    async def _request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> WebhookResponse:
        url = self.relay_url + path
        try:
            response = await self._client.request(
                method, url, content=body, headers=dict(headers), timeout=self._timeout
            )
        except httpx.TimeoutException as exc:
            raise RelayUnavailable(f"{method} {url} timed out after {self._timeout}s") from exc
        except httpx.TransportError as exc:
            raise RelayUnavailable(f"{method} {url} failed: {exc!r}") from exc
        try:
            payload: Any = response.json() if response.content else None
        except ValueError:
            payload = None
        return WebhookResponse(
            response.status_code, {k.lower(): v for k, v in response.headers.items()}, payload
        )


@dataclass(frozen=True, slots=True)
class RelayRequest:
    """One request the :class:`MemoryRelay` saw, and its answer."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    status: int
    at: float


@dataclass
class _Fault:
    status: int
    retry_after: float | None
    times: int


@dataclass
class MemoryRelay:
    """An in-memory twin of the relay's HTTP contract, for tests and examples.

    Use ``HttpxWebhookSender("http://relay.test", transport=relay.transport)`` (or
    ``DualChannelPublisher(..., transport=relay.transport)``). It implements
    ``POST /api/transcription`` (one envelope or a batch of up to 100, idempotent on
    ``(session, epoch, seq)``), ``POST /api/metrics`` and ``GET /api/health``, answers with
    ``RateLimit-*`` headers from a moving window of ``limit`` requests per ``window`` seconds
    per session, and 429 + ``Retry-After`` over it. With ``secret`` set, unsigned or badly
    signed requests get 401.

    Fault knobs: ``down = True`` refuses connections; :meth:`fail_next` answers the next
    POSTs with a status (503, 500…) and maybe a ``Retry-After``; ``reject`` returns a reason
    to refuse an envelope with 400; ``delay`` holds every answer that many seconds (past
    the client's read timeout, a ``ReadTimeout``); ``healthy = False`` makes the health
    check answer 503.
    """

    limit: int = 100
    window: float = 60.0
    secret: str | None = None
    max_batch: int = 100
    reject: Callable[[dict[str, Any]], str | None] | None = None
    delay: float = 0.0
    down: bool = False
    healthy: bool = True
    clock: Callable[[], float] = time.monotonic
    requests: list[RelayRequest] = field(default_factory=list, init=False)
    metrics: list[dict[str, Any]] = field(default_factory=list, init=False)
    _log: dict[str, dict[tuple[int, int], dict[str, Any]]] = field(
        default_factory=dict, init=False, repr=False
    )
    _hits: dict[str, deque[float]] = field(default_factory=dict, init=False, repr=False)
    _faults: deque[_Fault] = field(default_factory=deque, init=False, repr=False)

    @property
    def transport(self) -> httpx.MockTransport:
        """An httpx transport that routes every request to this relay."""
        return httpx.MockTransport(self.handle)

    def fail_next(self, status: int, *, times: int = 1, retry_after: float | None = None) -> None:
        """Answer the next ``times`` POSTs with ``status`` (after counting them)."""
        self._faults.append(_Fault(status, retry_after, times))

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        """The session's stored envelopes, in the order the relay stored them."""
        return list(self._log.get(session_id, {}).values())

    def statuses(self, path: str = "/api/transcription") -> list[int]:
        """The status of every request to ``path``, in order."""
        return [r.status for r in self.requests if r.path == path]

    # -- the contract ------------------------------------------------------------------

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("memory relay is down", request=request)
        if self.delay:
            # Honour the client's read timeout as a real server's silence would.
            read_timeout = request.extensions.get("timeout", {}).get("read")
            if read_timeout is not None and self.delay > read_timeout:
                await anyio.sleep(read_timeout)
                raise httpx.ReadTimeout("memory relay answered too slowly", request=request)
            await anyio.sleep(self.delay)
        body = await request.aread()
        path = request.url.path
        response = self._answer(request.method, path, request.headers, body)
        self.requests.append(
            RelayRequest(
                request.method,
                path,
                dict(request.headers),
                body,
                response.status_code,
                self.clock(),
            )
        )
        return response

    def _answer(
        self, method: str, path: str, headers: httpx.Headers, body: bytes
    ) -> httpx.Response:
        if method == "GET" and path == "/api/health":
            status = 200 if self.healthy else 503
            return httpx.Response(status, json={"status": "ok" if self.healthy else "down"})
        if method != "POST" or path not in ("/api/transcription", "/api/metrics"):
            return _error(404, "not_found", f"no route for {method} {path}")
        session = headers.get("x-session-id", "")
        limit_headers, allowed = self._hit(session)
        if not allowed:
            reset = limit_headers["RateLimit-Reset"]
            return _error(429, "rate_limited", "rate limit exceeded", limit_headers, reset)
        if self._faults:
            fault = self._faults[0]
            fault.times -= 1
            if fault.times <= 0:
                self._faults.popleft()
            retry = None if fault.retry_after is None else str(math.ceil(fault.retry_after))
            return _error(fault.status, "injected", "fault injected", limit_headers, retry)
        if self.secret is not None:
            try:
                WebhookSigner(self.secret).verify(body, headers, now=time.time())
            except InvalidSignature as exc:
                return _error(401, "invalid_signature", str(exc), limit_headers)
        try:
            payload = json.loads(body)
        except ValueError:
            return _error(400, "invalid_json", "body is not JSON", limit_headers)
        if path == "/api/metrics":
            self.metrics.append(payload)
            return httpx.Response(200, json={"success": True}, headers=limit_headers)
        return self._store(payload, session, limit_headers)

    def _store(self, payload: Any, session: str, limit_headers: dict[str, str]) -> httpx.Response:
        items = payload if isinstance(payload, list) else [payload]
        if not items or len(items) > self.max_batch:
            return _error(413, "batch_too_large", f"1 to {self.max_batch} per batch", limit_headers)
        problems: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or item.get("sessionId") != session:
                problems.append({"index": index, "reason": "sessionId must match X-Session-ID"})
            elif self.reject is not None and (reason := self.reject(item)):
                problems.append({"index": index, "reason": reason})
        if problems:
            return _error(
                400, "invalid_envelope", problems[0]["reason"], limit_headers, None, problems
            )
        log = self._log.setdefault(session, {})
        processed = duplicates = 0
        for item in items:
            key = (int(item["epoch"]), int(item["seq"]))
            if key in log:
                duplicates += 1
            else:
                log[key] = item
                processed += 1
        answer = {
            "success": True,
            "id": f"{session}:{items[-1]['epoch']}:{items[-1]['seq']}",
            "processed": processed,
            "duplicates": duplicates,
            "timestamp": time.time(),
        }
        return httpx.Response(200, json=answer, headers=limit_headers)

    def _hit(self, session: str) -> tuple[dict[str, str], bool]:
        now = self.clock()
        hits = self._hits.setdefault(session, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        allowed = len(hits) < self.limit
        if allowed:
            hits.append(now)
        reset = (hits[0] + self.window - now) if hits else self.window
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.limit - len(hits)),
            "RateLimit-Reset": str(max(1, math.ceil(reset))),
        }, allowed


def _error(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    retry_after: str | None = None,
    details: list[Any] | None = None,
) -> httpx.Response:
    out = dict(headers or {})
    if retry_after is not None:
        out["Retry-After"] = retry_after
    return httpx.Response(
        status, json={"error": code, "message": message, "details": details or []}, headers=out
    )
