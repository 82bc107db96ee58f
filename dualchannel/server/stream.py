"""``GET /api/sessions/{id}/events`` (SSE) and ``GET /api/sessions/{id}/messages``.

Exact resume, theory of operation: a stream first subscribes to the hub's live fan-out,
*then* reads the store after the client's ``Last-Event-ID`` page by page, remembering the
last id it sent. Anything committed while it was reading is either in a later page or in
its live queue (or both); live items with an id at or below the last one sent are dropped.
So the seam between replay and live has no gap and no duplicate, however fast ingest runs.

Each message goes out as ``id: <row id>``, ``event: <type>``, ``data: <envelope JSON>``.
Right after the replay, and then every ``heartbeat_interval`` seconds (queued by the hub,
see :mod:`.hub`), a ``heartbeat`` event (no id) carries the relay's newest stored
``(epoch, seq)`` for the session. Whatever is queued when a stream wakes up goes out in
one write. A subscriber whose queue overflows gets an
``overflow`` event and the stream ends; it reconnects with its last id.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..envelope import session_id_ok
from .eventstream import EventStream, comment, frame
from .hub import LiveItem, Subscription, heartbeat_frame
from .responses import ApiError, RelayState, relay_state

__all__ = ["messages_endpoint", "session_events"]

logger = logging.getLogger("dualchannel.server.stream")

_MAX_LIMIT = 1000


async def session_events(request: Request) -> Response | EventStream:
    relay = relay_state(request)
    try:
        session_id = _checked_session(request, relay)
        after = _last_event_id(request)
    except ApiError as exc:
        return _count(relay, "/api/sessions/{session_id}/events", exc.response())
    frames = _events(relay, session_id, after)
    relay.metrics.count_request("/api/sessions/{session_id}/events", 200)
    return EventStream(frames, send_timeout=relay.config.send_timeout)


async def messages_endpoint(request: Request) -> Response:
    relay = relay_state(request)
    route = "/api/sessions/{session_id}/messages"
    try:
        session_id = _checked_session(request, relay)
        epoch, after_seq, limit = _page_params(request)
        payloads, more = await relay.store.messages_page(
            session_id, epoch=epoch, after_seq=after_seq, limit=limit
        )
    except ApiError as exc:
        return _count(relay, route, exc.response())
    except Exception:
        logger.exception("backfill read failed")
        error = ApiError(
            503,
            "store_unavailable",
            "the relay could not read its store; retry",
            headers={"Retry-After": "1"},
        )
        return _count(relay, route, error.response())
    body = {
        "sessionId": session_id,
        "messages": [json.loads(p) for p in payloads],
        "hasMore": more,
    }
    return _count(relay, route, JSONResponse(body))


# -- the stream ----------------------------------------------------------------------


async def _events(relay: RelayState, session_id: str, after: int) -> AsyncGenerator[bytes, None]:
    config = relay.config
    hub = relay.hub
    sub = hub.subscribe(session_id, config.subscriber_queue)
    relay.metrics.subscribers.inc()
    try:
        yield comment("dualchannel relay", retry_ms=config.retry_hint_ms)
        hub.note_position(session_id, await relay.store.position(session_id))
        last = after
        while True:
            page = await relay.store.replay(session_id, last, config.replay_page)
            for row in page:
                yield frame(row.payload, id=str(row.id), event=row.type)
                last = row.id
            if len(page) < config.replay_page:
                break
        # Hand out what is already queued, then a first heartbeat at once; later ones
        # come through the queue from the hub's ticker, behind the messages they count.
        batch, ended = _drain(sub, [])
        chunk, last = _frames(batch, last)
        if chunk:
            yield chunk
        if not ended:
            yield heartbeat_frame(session_id, hub.position(session_id))
        while not ended:
            try:
                first = await sub.receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                break
            batch, ended = _drain(sub, [first])
            if first.id is not None:  # a message, not a heartbeat: commit-to-send time
                relay.metrics.fanout_seconds.observe(time.monotonic() - first.committed_at)
            chunk, last = _frames(batch, last)
            if chunk:
                yield chunk  # every frame that was waiting, in one write
        if sub.overflowed:
            relay.metrics.overflows.inc()
            reason = {
                "reason": "subscriber queue overflowed: the client read too slowly",
                "lastEventId": last,
            }
            yield frame(json.dumps(reason), event="overflow")
    finally:
        hub.unsubscribe(sub)
        relay.metrics.subscribers.dec()


def _drain(sub: Subscription, batch: list[LiveItem]) -> tuple[list[LiveItem], bool]:
    """Add what the queue holds now to ``batch``; whether the queue has ended."""
    while True:
        try:
            batch.append(sub.receive.receive_nowait())
        except anyio.WouldBlock:
            return batch, False
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return batch, True


def _frames(batch: list[LiveItem], last: int) -> tuple[bytes, int]:
    """The frames of ``batch`` not sent yet (ids above ``last``; heartbeats always)."""
    out: list[bytes] = []
    for item in batch:
        if item.id is None:
            out.append(item.frame)
        elif item.id > last:
            out.append(item.frame)
            last = item.id
    return b"".join(out), last


# -- request checks ------------------------------------------------------------------


def _checked_session(request: Request, relay: RelayState) -> str:
    session_id = str(request.path_params["session_id"])
    if not session_id_ok(session_id):
        raise ApiError(
            400,
            "invalid_session_id",
            "the session id must be a LiveKit room name: letters, digits, '_.:-'",
            [("session_id", "must match " + r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")],
        )
    failure = relay.auth.check(request, session_id)
    if failure is not None:
        raise ApiError(
            failure.status,
            failure.error,
            failure.message,
            headers={"WWW-Authenticate": "Bearer"} if failure.status == 401 else {},
        )
    return session_id


def _last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    if raw is None or raw == "":
        return 0
    if not raw.strip().isdigit():
        raise ApiError(
            400,
            "invalid_last_event_id",
            "Last-Event-ID must be an id this relay sent (a non-negative integer)",
            [("Last-Event-ID", "must be a non-negative integer")],
        )
    return int(raw.strip())


def _page_params(request: Request) -> tuple[int | None, int, int]:
    query = request.query_params
    problems: list[tuple[str, str]] = []

    def number(name: str, default: int | None, low: int, high: int | None) -> int | None:
        raw = query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            problems.append((name, "must be an integer"))
            return default
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            problems.append((name, f"must be {bound}"))
        return value

    epoch = number("epoch", None, 0, None)
    after_seq = number("after_seq", 0, 0, None)
    limit = number("limit", 100, 1, _MAX_LIMIT)
    if problems:
        raise ApiError(400, "invalid_query", "fix the query parameters listed in details", problems)
    assert after_seq is not None and limit is not None
    return epoch, after_seq, limit


def _count(relay: RelayState, route: str, response: Response) -> Response:
    relay.metrics.count_request(route, response.status_code)
    return response
