"""The relay: webhook ingest, a durable audited log, and SSE fan-out with exact resume.

Needs the ``server`` extra (``pip install 'dualchannel[server]'``). Run it with
``dualchannel serve`` or mount :func:`create_app` in any ASGI server. See docs/relay.md.
"""

from __future__ import annotations

from .app import build_app, create_app, end_streams
from .config import RelayConfig

__all__ = ["RelayConfig", "build_app", "create_app", "end_streams"]
