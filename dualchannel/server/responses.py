"""The relay's shared state and its one error shape.

Every refusal is JSON ``{"error": "<short_code>", "message": "<sentence naming the fix>",
"details": [{"field": ..., "rule": ...}]}``; :class:`ApiError` carries one from deep in a
handler to the place that answers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..envelope import format_timestamp
from .auth import SubscriberAuth
from .config import RelayConfig
from .hub import Hub
from .ingest import Writer
from .metrics import RelayMetrics
from .ratelimit import SessionRateLimiter
from .store import Store

__all__ = ["ApiError", "RelayState", "error_response", "now_iso", "relay_state"]


class ApiError(Exception):
    """A refusal with its status, code, human message and per-field details."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        details: Iterable[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.details = list(details)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "message": self.message,
            "details": [{"field": f, "rule": r} for f, r in self.details],
        }

    def response(self, extra_headers: Mapping[str, str] | None = None) -> JSONResponse:
        headers = {**(extra_headers or {}), **self.headers}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def error_response(
    status: int,
    error: str,
    message: str,
    details: Iterable[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return ApiError(status, error, message, details, headers).response()


_last_stamp: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """The current UTC time as the spec writes it, formatted at most once per millisecond."""
    global _last_stamp
    now = time.time_ns() // 1_000_000
    if now != _last_stamp[0]:
        moment = datetime.fromtimestamp(now / 1000, UTC)
        _last_stamp = (now, format_timestamp(moment))
    return _last_stamp[1]


@dataclass(eq=False, slots=True)
class RelayState:
    """What a running relay holds; lives on ``app.state.relay``."""

    config: RelayConfig
    store: Store
    hub: Hub
    writer: Writer
    limiter: SessionRateLimiter
    auth: SubscriberAuth
    metrics: RelayMetrics
    started: float = field(default_factory=time.monotonic)


def relay_state(request: Request) -> RelayState:
    state: RelayState = request.app.state.relay
    return state
