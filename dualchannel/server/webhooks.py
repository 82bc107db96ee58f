"""``POST /api/transcription`` and ``POST /api/metrics``: checked, rate-limited, committed.

Checks run cheapest first: content type (415), size while reading (413), signature (401),
JSON (400), each envelope (400, or 413 over its cap), batch rules and session agreement
(400), then the session's rate (429). Only then does the request join a group commit; it
answers 200 once the transaction holding it has committed. Every answer, refusal or not,
leaves one ``webhook_logs`` row and carries the ``RateLimit-*`` headers.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..envelope import Envelope, MessageType, session_id_ok
from ..errors import EnvelopeError, EnvelopeTooLarge
from ..signing import InvalidSignature
from ..signing import verify as verify_signature
from .ingest import WriteJob, WriterClosed
from .ratelimit import RateDecision
from .responses import ApiError, RelayState, now_iso, relay_state
from .store import AuditRow, MetricsRow

__all__ = ["metrics_webhook", "transcription_webhook"]

logger = logging.getLogger("dualchannel.server.webhooks")

_REJECTED_BODY_PREVIEW = 2048


async def transcription_webhook(request: Request) -> Response:
    relay = relay_state(request)
    started = time.perf_counter()
    headers = _Headers(request)
    header_session = headers.get(b"x-session-id")
    known_session = header_session if header_session and session_id_ok(header_session) else None
    retry_count = _retry_count(headers)
    body = b""
    try:
        body = await _read_checked_body(request, headers, relay)
        envelopes = _parse_envelopes(body, relay, header_session)
        session_id = envelopes[0].session_id
        known_session = session_id
        decision = await relay.limiter.hit(session_id)
        if not decision.allowed:
            relay.metrics.rate_limited.inc()
            raise ApiError(
                429,
                "rate_limited",
                f"session {session_id!r} is over its rate of {relay.config.rate_limit}; "
                f"wait Retry-After seconds, or batch envelopes into one request",
                headers=decision.headers(),
            )
        audit = AuditRow(
            session_id=session_id,
            webhook_type="transcription",
            payload=body.decode(errors="replace"),
            status="pending",
            retry_count=retry_count,
        )
        job = await relay.writer.submit(WriteJob(envelopes=envelopes, audit=audit))
    except ApiError as exc:
        await _audit_rejection(relay, exc, known_session, "transcription", body, retry_count)
        rate = await relay.limiter.peek(known_session)
        return _answer(relay, exc.response(rate.headers()), started)
    except WriterClosed:
        rate = await relay.limiter.peek(known_session)
        return _answer(
            relay,
            _unavailable(
                "shutting_down",
                "the relay is shutting down; retry against the restarted relay",
                rate,
            ),
            started,
        )
    except Exception:
        logger.exception("transcription ingest failed", extra={"session_id": known_session})
        rate = await relay.limiter.peek(known_session)
        return _answer(
            relay,
            _unavailable(
                "store_unavailable",
                "the relay could not commit the request; retry (ingest is idempotent)",
                rate,
            ),
            started,
        )
    new = sum(1 for i in job.ids if i is not None)  # the writer counts them in the metrics
    duplicates = len(job.ids) - new
    # The spec's answer, written out directly: every value is a number or an ASCII id.
    content = (
        f'{{"success":true,"id":"{audit.id}","processed":{new},'
        f'"duplicates":{duplicates},"timestamp":"{now_iso()}"}}'
    )
    answer = Response(content, media_type="application/json", headers=decision.headers())
    return _answer(relay, answer, started)


async def metrics_webhook(request: Request) -> Response:
    relay = relay_state(request)
    headers = _Headers(request)
    retry_count = _retry_count(headers)
    body = b""
    header_session = headers.get(b"x-session-id")
    session_id = header_session if header_session and session_id_ok(header_session) else None
    try:
        body = await _read_checked_body(request, headers, relay)
        value = _load_json(body)
        claimed = value.get("sessionId") if isinstance(value, dict) else None
        if isinstance(claimed, str) and session_id_ok(claimed):
            session_id = claimed
        session_id, row = _parse_metrics(value)
        audit = AuditRow(
            session_id=session_id,
            webhook_type="metrics",
            payload=body.decode(errors="replace"),
            status="success",
            retry_count=retry_count,
        )
        await relay.writer.submit(WriteJob(metrics=row, audit=audit))
    except ApiError as exc:
        await _audit_rejection(relay, exc, session_id, "metrics", body, retry_count)
        return _count(relay, "/api/metrics", exc.response())
    except WriterClosed:
        return _count(
            relay, "/api/metrics", _unavailable("shutting_down", "the relay is shutting down")
        )
    except Exception:
        logger.exception("metrics ingest failed", extra={"session_id": session_id})
        return _count(
            relay, "/api/metrics", _unavailable("store_unavailable", "the relay could not store it")
        )
    return _count(relay, "/api/metrics", JSONResponse({"success": True}))


# -- checks --------------------------------------------------------------------------


class _Headers:
    """The request headers the ingest routes read, found in one pass over the list.

    Starlette's ``Headers.get`` walks the list again for every name, and raises and
    catches a ``KeyError`` for each absent one; on the relay's hottest route that was
    several microseconds a request. The first of repeated names wins, as in Starlette.
    """

    __slots__ = ("_values",)

    def __init__(self, request: Request) -> None:
        self._values: dict[bytes, bytes] = dict(reversed(request.scope["headers"]))

    def get(self, name: bytes) -> str | None:
        value = self._values.get(name)
        return None if value is None else value.decode("latin-1")


async def _read_checked_body(request: Request, headers: _Headers, relay: RelayState) -> bytes:
    """Content type, size (declared and counted) and signature; the raw body."""
    ctype = (headers.get(b"content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/json" and not (
        ctype.startswith("application/") and ctype.endswith("+json")
    ):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the body as JSON with 'Content-Type: application/json' (got {ctype!r})",
            [("Content-Type", "must be application/json")],
        )
    limit = relay.config.max_body_bytes
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    if relay.config.webhook_secrets:
        try:
            verify_signature(
                [secret.key for secret in relay.config.webhook_secrets],
                body,
                request.headers,
                now=time.time(),
                tolerance=relay.config.signature_tolerance,
            )
        except InvalidSignature as exc:
            raise ApiError(
                401,
                "bad_signature",
                f"{exc}; sign the body with the relay's webhook secret (Standard Webhooks)",
                [("webhook-signature", str(exc))],
            ) from None
    return body


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"the body is over {limit} bytes; send smaller batches",
        [("<body>", f"must be at most {limit} bytes, got at least {size}")],
    )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (RFC 8259); send null or a number")


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_no_constants)
    except ValueError as exc:
        raise ApiError(
            400,
            "invalid_json",
            "the body is not valid JSON; send one envelope object or an array of them",
            [("<json>", str(exc))],
        ) from None


def _parse_envelopes(body: bytes, relay: RelayState, header_session: str | None) -> list[Envelope]:
    single = _single_envelope(body, relay.config.max_envelope_bytes)
    if single is not None and header_session in (None, single.session_id):
        return [single]
    value = _load_json(body)
    items = value if isinstance(value, list) else [value]
    prefix = isinstance(value, list)
    if not items:
        raise ApiError(
            400,
            "empty_batch",
            "send at least one envelope",
            [("<body>", "array must not be empty")],
        )
    cap = relay.config.max_batch
    if len(items) > cap:
        raise ApiError(
            400,
            "batch_too_large",
            f"a batch holds at most {cap} envelopes; split it",
            [("<body>", f"array must have at most {cap} items, got {len(items)}")],
        )
    envelopes: list[Envelope] = []
    for index, item in enumerate(items):
        where = f"[{index}]." if prefix else ""
        try:
            env = Envelope.from_json_value(item, max_size=relay.config.max_envelope_bytes)
        except EnvelopeTooLarge as exc:
            raise ApiError(
                413,
                "envelope_too_large",
                str(exc),
                [(where + f, r) for f, r in exc.problems],
            ) from None
        except EnvelopeError as exc:
            raise ApiError(
                400,
                "invalid_envelope",
                "an envelope breaks a wire rule; fix the fields listed in details",
                [(where + f, r) for f, r in exc.problems],
            ) from None
        if env.type is MessageType.HEARTBEAT:
            raise ApiError(
                400,
                "heartbeat_not_accepted",
                "heartbeats travel on the LiveKit channel only; do not post them",
                [(where + "type", "must not be 'heartbeat' here")],
            )
        envelopes.append(env)
    sessions = {env.session_id for env in envelopes}
    if len(sessions) > 1:
        raise ApiError(
            400,
            "mixed_sessions",
            "a batch must hold envelopes of one session; send one request per session",
            [("sessionId", f"all items must share one session, got {sorted(sessions)}")],
        )
    session_id = envelopes[0].session_id
    if header_session is not None and header_session != session_id:
        raise ApiError(
            400,
            "session_mismatch",
            "the X-Session-ID header and the envelopes' sessionId disagree",
            [("X-Session-ID", f"must equal sessionId {session_id!r}")],
        )
    return envelopes


def _single_envelope(body: bytes, max_size: int) -> Envelope | None:
    """The common case, one valid envelope object, parsed straight from the bytes.

    ``None`` for anything else (a batch, or any rule broken): the general path below then
    parses the body again and names every problem, so the fast path changes no answer.
    """
    if body.lstrip()[:1] != b"{" or b"NaN" in body or b"Infinity" in body:
        return None  # pydantic's parser would take NaN and Infinity; JSON does not
    try:
        env = Envelope.model_validate_json(body)
    except ValueError:
        return None
    if env.type is MessageType.HEARTBEAT or len(env.to_bytes(max_size=None)) > max_size:
        return None
    return env


def _parse_metrics(value: Any) -> tuple[str, MetricsRow]:
    problems: list[tuple[str, str]] = []
    if not isinstance(value, dict):
        raise ApiError(
            400, "invalid_metrics", "send a JSON object", [("<body>", "must be an object")]
        )
    session_id = value.get("sessionId")
    if not isinstance(session_id, str) or not session_id_ok(session_id):
        problems.append(("sessionId", "must be a session id string"))
    metrics = value.get("metrics")
    if not isinstance(metrics, dict):
        problems.append(("metrics", "must be an object"))
    source = value.get("source")
    if source is not None and not isinstance(source, str):
        problems.append(("source", "must be a string"))
    timestamp = value.get("timestamp")
    if timestamp is not None and not isinstance(timestamp, str):
        problems.append(("timestamp", "must be an ISO 8601 string"))
    if problems:
        raise ApiError(
            400,
            "invalid_metrics",
            "the metrics report breaks a rule; fix the fields in details",
            problems,
        )
    assert isinstance(session_id, str)
    row = MetricsRow(session_id, json.dumps(metrics), source, timestamp)
    return session_id, row


# -- answers -------------------------------------------------------------------------


def _retry_count(headers: _Headers) -> int:
    raw = (headers.get(b"x-retry-attempt") or "0").strip()
    return int(raw) if raw.isdigit() else 0


async def _audit_rejection(
    relay: RelayState,
    exc: ApiError,
    session_id: str | None,
    kind: str,
    body: bytes,
    retry_count: int,
) -> None:
    reason = exc.body()
    reason["status"] = exc.status
    reason["bodyPreview"] = body[:_REJECTED_BODY_PREVIEW].decode(errors="replace")
    row = AuditRow(
        session_id=session_id,
        webhook_type=kind,
        payload=json.dumps(reason),
        status="rate_limited" if exc.status == 429 else "rejected",
        error_message=f"{exc.status} {exc.error}: {exc.message}",
        retry_count=retry_count,
    )
    try:
        await relay.writer.submit(WriteJob(audit=row))
    except Exception:
        logger.warning("could not write audit row", exc_info=True, extra={"session_id": session_id})


def _unavailable(error: str, message: str, rate: RateDecision | None = None) -> JSONResponse:
    headers = rate.headers() if rate is not None else {}
    return ApiError(503, error, message, headers={**headers, "Retry-After": "1"}).response()


def _count(relay: RelayState, route: str, response: Response) -> Response:
    relay.metrics.count_request(route, response.status_code)
    return response


def _answer(relay: RelayState, response: Response, started: float) -> Response:
    relay.metrics.ingest_seconds.observe(time.perf_counter() - started)
    return _count(relay, "/api/transcription", response)
