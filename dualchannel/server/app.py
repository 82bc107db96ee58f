"""The relay's app factory: routes, and a lifespan that owns the store and its tasks.

``create_app(...)`` returns a Starlette app. Its lifespan opens the store (creating the
tables on first start), starts the group-commit writer and the retention purge in one
task group, and on shutdown ends the SSE streams, lets the writer commit what is queued,
then closes the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .._version import __version__
from .auth import SubscriberAuth
from .config import DEFAULT_DATABASE_URL, RelayConfig
from .hub import Hub
from .ingest import WriteJob, Writer
from .metrics import RelayMetrics
from .openapi import openapi_document
from .ratelimit import SessionRateLimiter
from .responses import ApiError, RelayState, now_iso, relay_state
from .store import Store, utcnow
from .stream import messages_endpoint, session_events
from .webhooks import metrics_webhook, transcription_webhook

__all__ = ["create_app", "end_streams"]

logger = logging.getLogger("dualchannel.server")


def create_app(
    *,
    database_url: str = DEFAULT_DATABASE_URL,
    webhook_secret: str | None = None,
    webhook_secrets: list[str] | tuple[str, ...] | None = None,
    livekit_api_key: str | None = None,
    livekit_api_secret: str | None = None,
    dev: bool = False,
    retention: float = 86_400.0,
    rate_limit: str = "100/minute",
    max_body_bytes: int = 262_144,
    max_batch: int = 100,
    heartbeat_interval: float = 1.0,
    **settings: Any,
) -> Starlette:
    """Build the relay. Extra keyword settings are fields of :class:`RelayConfig`.

    Raises :class:`~dualchannel.errors.ConfigurationError` for a bad or missing setting
    (for instance LiveKit credentials without ``dev=True``).
    """
    config = RelayConfig.create(
        database_url=database_url,
        webhook_secret=webhook_secret,
        webhook_secrets=webhook_secrets,
        livekit_api_key=livekit_api_key,
        livekit_api_secret=livekit_api_secret,
        dev=dev,
        retention=retention,
        rate_limit=rate_limit,
        max_body_bytes=max_body_bytes,
        max_batch=max_batch,
        heartbeat_interval=heartbeat_interval,
        **settings,
    )
    return build_app(config)


def build_app(config: RelayConfig) -> Starlette:
    """The app for an already validated :class:`RelayConfig`."""
    metrics = RelayMetrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = Store(config.database_url)
        await store.open()
        hub = Hub()
        writer = Writer(
            store, hub, metrics, window=config.commit_window, max_items=config.commit_max_items
        )
        limiter = SessionRateLimiter(config.rate_limit)
        auth = SubscriberAuth(config.livekit_api_key, config.livekit_api_secret, dev=config.dev)
        app.state.relay = RelayState(config, store, hub, writer, limiter, auth, metrics)
        app.state.end_streams = _on_loop(asyncio.get_running_loop(), hub.close)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(writer.run)
                purge_scope = anyio.CancelScope()
                tg.start_soon(_purge_forever, writer, config, purge_scope)
                beat_scope = anyio.CancelScope()
                tg.start_soon(_beat_forever, hub, config.heartbeat_interval, beat_scope)
                logger.info("relay started", extra={"database": _redacted(config.database_url)})
                try:
                    yield
                finally:
                    hub.close()  # streams end after what is already queued
                    purge_scope.cancel()
                    beat_scope.cancel()
                    writer.close()  # the writer commits what is queued, then returns
        finally:
            await limiter.close()
            await store.close()
            logger.info("relay stopped")

    routes = [
        Route("/api/transcription", transcription_webhook, methods=["POST"]),
        Route("/api/metrics", metrics_webhook, methods=["POST"]),
        Route("/api/health", health, methods=["GET"]),
        Route("/api/sessions/{session_id}/events", session_events, methods=["GET"]),
        Route("/api/sessions/{session_id}/messages", messages_endpoint, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    app = RelayApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_refusal},
    )
    app.state.config = config
    app.state.metrics = metrics
    return app


class RelayApp(Starlette):
    """The relay's Starlette app, with the hot ingest route served directly.

    ``POST /api/transcription`` skips Starlette's middleware stack and router: its
    handler already answers every failure itself as JSON (a bug in it would reach
    uvicorn, which answers a plain 500). Measured under load that is most of the
    framework's share of an ingest request. Every other route, and the lifespan, go
    through Starlette as usual.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/api/transcription"
            and scope["method"] == "POST"
        ):
            scope["app"] = self
            response = await transcription_webhook(Request(scope, receive))
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


_REFUSALS = {
    404: ("not_found", "no such route; see /openapi.json for the relay's routes"),
    405: ("method_not_allowed", "this route does not take that method; see the Allow header"),
}


async def _http_refusal(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (unknown route, wrong method) in the relay's error shape."""
    assert isinstance(exc, HTTPException)
    error, message = _REFUSALS.get(exc.status_code, ("http_error", str(exc.detail)))
    return ApiError(exc.status_code, error, message, headers=exc.headers).response()


def end_streams(app: Starlette) -> None:
    """End every open SSE stream now, cleanly (clients resume from their last id).

    Call it when your ASGI server starts a graceful shutdown: servers wait for open
    responses before they run the lifespan's shutdown, and an SSE response stays open
    until told. Safe from any thread and from a signal handler. ``dualchannel serve``
    calls it on SIGINT/SIGTERM.
    """
    hook: Callable[[], None] | None = getattr(app.state, "end_streams", None)
    if hook is not None:
        hook()


def _on_loop(loop: asyncio.AbstractEventLoop, func: Callable[[], None]) -> Callable[[], None]:
    def schedule() -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(func)

    return schedule


async def _beat_forever(hub: Hub, interval: float, scope: anyio.CancelScope) -> None:
    with scope:
        await hub.run_heartbeats(interval)


async def _purge_forever(writer: Writer, config: RelayConfig, scope: anyio.CancelScope) -> None:
    """Delete what is older than the retention window, every ``purge_interval`` seconds."""
    with scope:
        while True:
            await anyio.sleep(config.purge_interval)
            before = utcnow() - timedelta(seconds=config.retention)
            try:
                job = await writer.submit(WriteJob(purge_before=before))
            except Exception:
                logger.warning("retention purge failed", exc_info=True)
                continue
            if job.purged:
                logger.info("retention purge", extra={"purged": job.purged})


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


async def health(request: Request) -> Response:
    relay = relay_state(request)
    body: dict[str, Any] = {
        "status": "healthy",
        "store": "ok",
        "uptime": round(time.monotonic() - relay.started, 3),
        "version": __version__,
        "timestamp": now_iso(),
    }
    status = 200
    try:
        with anyio.fail_after(2.0):
            await relay.store.ping()
    except Exception as exc:
        body["status"] = "unhealthy"
        body["store"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        status = 503
    relay.metrics.count_request("/api/health", status)
    return JSONResponse(body, status_code=status)


async def prometheus(request: Request) -> Response:
    relay = relay_state(request)
    relay.metrics.count_request("/metrics", 200)
    return Response(
        relay.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(__version__))
