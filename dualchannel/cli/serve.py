"""``dualchannel serve``: run the relay under uvicorn.

Every flag can also come from a ``DUALCHANNEL_*`` environment variable (the flag's name in
upper case, dashes as underscores: ``--webhook-secret`` → ``DUALCHANNEL_WEBHOOK_SECRET``);
a flag on the command line wins. Several webhook secrets (key rotation) are given by
repeating ``--webhook-secret`` or, in the environment, separated by spaces or commas.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from typing import Any

ENV_PREFIX = "DUALCHANNEL_"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name, default)


def _env_flag(name: str) -> bool:
    value = _env(name, "") or ""
    return value.strip().lower() in {"1", "true", "yes", "on"}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the relay (webhook ingest, durable log, SSE fan-out)",
        description="Run the dualchannel relay under uvicorn. Each flag also reads "
        "DUALCHANNEL_<FLAG> from the environment.",
    )
    parser.add_argument(
        "--host",
        default=_env("HOST", "127.0.0.1"),
        help="address to bind (default 127.0.0.1; env DUALCHANNEL_HOST)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(_env("PORT", "8000") or "8000"),
        help="port to bind (default 8000; env DUALCHANNEL_PORT)",
    )
    parser.add_argument(
        "--database",
        default=_env("DATABASE", "sqlite:///dualchannel.db"),
        help="SQLAlchemy URL of the store (default sqlite:///dualchannel.db)",
    )
    parser.add_argument(
        "--webhook-secret",
        action="append",
        default=None,
        help="whsec_<base64> secret webhooks must be signed with; repeat to "
        "accept several during rotation (env DUALCHANNEL_WEBHOOK_SECRET)",
    )
    parser.add_argument(
        "--livekit-api-key",
        default=_env("LIVEKIT_API_KEY"),
        help="LiveKit API key that subscriber tokens are verified with",
    )
    parser.add_argument(
        "--livekit-api-secret",
        default=_env("LIVEKIT_API_SECRET"),
        help="LiveKit API secret that subscriber tokens are verified with",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        default=_env_flag("DEV"),
        help="let subscribers in without a token (local work only)",
    )
    parser.add_argument(
        "--retention",
        type=float,
        default=float(_env("RETENTION", "86400") or "86400"),
        help="seconds messages and audit rows are kept (default 86400)",
    )
    parser.add_argument(
        "--rate-limit",
        default=_env("RATE_LIMIT", "100/minute"),
        help="ingest rate per session, 'N/second|minute|hour' (default 100/minute)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=int(_env("MAX_BODY_BYTES", "262144") or "262144"),
        help="largest ingest body (default 262144)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=int(_env("MAX_BATCH", "100") or "100"),
        help="most envelopes in one batch (default 100)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=float(_env("HEARTBEAT_INTERVAL", "1.0") or "1.0"),
        help="seconds between SSE heartbeats (default 1.0)",
    )
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default info)",
    )
    parser.set_defaults(func=run)


def _secrets(args: argparse.Namespace) -> list[str]:
    if args.webhook_secret:
        return list(args.webhook_secret)
    raw = _env("WEBHOOK_SECRET", "") or ""
    return [part for part in raw.replace(",", " ").split() if part]


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..errors import ConfigurationError
        from ..server import create_app, end_streams
    except ImportError as exc:  # pragma: no cover - depends on the install
        print(
            f"error: the relay needs the server extra: pip install 'dualchannel[server]' ({exc})",
            file=sys.stderr,
        )
        return 2
    try:
        app = create_app(
            database_url=args.database,
            webhook_secrets=_secrets(args),
            livekit_api_key=args.livekit_api_key,
            livekit_api_secret=args.livekit_api_secret,
            dev=args.dev,
            retention=args.retention,
            rate_limit=args.rate_limit,
            max_body_bytes=args.max_body_bytes,
            max_batch=args.max_batch,
            heartbeat_interval=args.heartbeat_interval,
        )
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    unchecked = []
    if not _secrets(args):
        unchecked.append("webhook signatures (no --webhook-secret)")
    if args.dev:
        unchecked.append("subscriber tokens when none is sent (--dev)")
    if unchecked:
        logging.getLogger("dualchannel.serve").warning(
            "not checking %s: fine on loopback, not in production", " or ".join(unchecked)
        )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.log_level in ("info", "debug"),  # skip the per-request work otherwise
        timeout_graceful_shutdown=5,
        lifespan="on",
    )

    class RelayServer(uvicorn.Server):
        """Ends the SSE streams as soon as a shutdown signal arrives, not at the timeout."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            end_streams(app)
            super().handle_exit(sig, frame)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            # Everything loaded so far lives as long as the process: keep the cyclic
            # garbage collector from scanning it again. Without this a full collection
            # paused the loop for ~50 ms every few seconds under load.
            gc.collect()
            gc.freeze()

    server = RelayServer(config)
    server.run()
    return 0 if server.started else 1
