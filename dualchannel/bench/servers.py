"""Peers the benchmarks run against, each as a child process on a loopback port.

- ``trivial``: answers every request with ``200 {}`` from a raw asyncio protocol, doing
  no work at all. Driving it shows how fast the load generator itself can go.
- ``naive``: the relay's ingest without its design: a tiny Starlette app under the same
  uvicorn (uvloop + httptools) that validates the envelopes exactly as the relay does, then,
  holding one lock, runs ``INSERT`` for each envelope plus one audit row and ``COMMIT`` —
  one transaction and one fsync per request, on SQLite in WAL mode with
  ``synchronous=FULL`` (the relay's settings). It has no group commit, no rate limiter, no
  metrics, no SSE fan-out.

Run one with ``python -m dualchannel.bench.servers trivial|naive --port N [--database F]``;
:class:`ServerProcess` does that and waits until the port answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, cast

__all__ = ["ServerProcess", "main"]

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_TRIVIAL_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
)


class _Trivial(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _CONTENT_LENGTH.search(self.buffer[: end + 2])
            length = int(match.group(1)) if match else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(_TRIVIAL_ANSWER)


async def _serve_trivial(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Trivial, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id VARCHAR(128) NOT NULL, epoch BIGINT NOT NULL, seq BIGINT NOT NULL,
    type VARCHAR(32) NOT NULL, priority VARCHAR(16) NOT NULL, payload TEXT NOT NULL,
    received_at DATETIME NOT NULL,
    CONSTRAINT uq_messages_key UNIQUE (session_id, epoch, seq));
CREATE INDEX IF NOT EXISTS idx_messages_replay ON messages (session_id, id);
CREATE INDEX IF NOT EXISTS idx_messages_received ON messages (received_at);
CREATE TABLE IF NOT EXISTS webhook_logs (
    id VARCHAR(36) PRIMARY KEY, session_id VARCHAR(128), webhook_type VARCHAR(50) NOT NULL,
    payload TEXT NOT NULL, processed_items TEXT, status VARCHAR(20) NOT NULL,
    error_message TEXT, retry_count INTEGER NOT NULL, created_at DATETIME NOT NULL);
CREATE INDEX IF NOT EXISTS idx_webhook_session ON webhook_logs (session_id);
CREATE INDEX IF NOT EXISTS idx_webhook_created ON webhook_logs (created_at);
"""


def naive_app(database: str) -> Any:
    """The naive relay: one INSERT batch + COMMIT per request, serialised by one lock."""
    import aiosqlite
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from ..envelope import Envelope
    from ..errors import EnvelopeError

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = await aiosqlite.connect(database, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.executescript(_SCHEMA)
        state["db"] = db
        state["lock"] = asyncio.Lock()
        try:
            yield
        finally:
            await db.close()

    async def ingest(request: Request) -> Response:
        body = await request.body()
        try:
            value = json.loads(body)
            items = value if isinstance(value, list) else [value]
            envelopes = [Envelope.from_json_value(item) for item in items]
        except (ValueError, EnvelopeError) as exc:
            return JSONResponse({"success": False, "error": str(exc)}, status_code=400)
        now = datetime.now(UTC).isoformat()
        rows = [
            (
                e.session_id,
                e.epoch,
                e.seq,
                e.type.value,
                e.priority.value,
                e.to_bytes(max_size=None).decode(),
                now,
            )
            for e in envelopes
        ]
        db: aiosqlite.Connection = state["db"]
        async with state["lock"]:
            await db.execute("BEGIN")
            try:
                ids: list[int] = []
                for row in rows:
                    cursor = await db.execute(
                        "INSERT INTO messages (session_id, epoch, seq, type, priority, payload,"
                        " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (session_id, epoch, seq) DO NOTHING RETURNING id",
                        row,
                    )
                    found = await cursor.fetchone()
                    if found is not None:
                        ids.append(int(found[0]))
                audit_id = str(uuid.uuid4())
                await db.execute(
                    "INSERT INTO webhook_logs (id, session_id, webhook_type, payload,"
                    " processed_items, status, retry_count, created_at)"
                    " VALUES (?, ?, 'transcription', ?, ?, 'success', 0, ?)",
                    (audit_id, envelopes[0].session_id, body.decode(), json.dumps(ids), now),
                )
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        return JSONResponse(
            {"success": True, "id": audit_id, "processed": len(ids), "timestamp": now}
        )

    return Starlette(
        routes=[Route("/api/transcription", ingest, methods=["POST"])], lifespan=lifespan
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualchannel.bench.servers")
    parser.add_argument("kind", choices=["trivial", "naive"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", default="naive.db")
    args = parser.parse_args(argv)
    if args.kind == "trivial":
        try:
            import uvloop

            uvloop.run(_serve_trivial(args.host, args.port))
        except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
            asyncio.run(_serve_trivial(args.host, args.port))
        return 0
    import uvicorn

    uvicorn.run(
        naive_app(args.database),
        host=args.host,
        port=args.port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    return 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A child process serving on ``127.0.0.1:port``; started and stopped by pid."""

    def __init__(
        self, command: list[str], *, port: int, log: Path, startup_timeout: float = 30.0
    ) -> None:
        self.command = command
        self.port = port
        self.log_path = log
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @classmethod
    def bench_server(cls, kind: str, workdir: Path, **options: str) -> ServerProcess:
        port = free_port()
        command = [sys.executable, "-m", "dualchannel.bench.servers", kind, "--port", str(port)]
        for name, value in options.items():
            command += [f"--{name}", value]
        return cls(command, port=port, log=workdir / f"{kind}-{port}.log")

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("not running")
        return self._process.pid

    def start(self) -> Self:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop
        self._process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                raise RuntimeError(f"{self.command[:5]} exited with {code}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.command[:5]} did not listen within {self.startup_timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                os.kill(self._process.pid, signal.SIGTERM)
                try:
                    self._process.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.kill(self._process.pid, signal.SIGKILL)
                    self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
