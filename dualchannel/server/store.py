"""The relay's durable store: the per-session message log and the audit tables.

SQLAlchemy 2 async Core over any async driver; SQLite (aiosqlite) by default, Postgres by
changing the URL. Three tables:

* ``messages`` — the durable log. ``id`` is the SSE resume token: it only grows
  (``AUTOINCREMENT`` on SQLite, so purging old rows never lets an id be reused).
  ``unique(session_id, epoch, seq)`` makes ingest idempotent.
* ``webhook_logs`` — one row per ingest request: accepted, duplicate or rejected.
* ``session_metrics`` — what ``POST /api/metrics`` receives.

Only the group-commit writer (:mod:`.ingest`) writes, through :meth:`Store.transaction`:
its whole commit is one plain function over a synchronous connection. For an SQLite file
that is the stdlib driver: the group commit's inserts run on the event loop (a few driver
calls, with plain SQL for the two hot inserts) and only the commit, the fsync, goes to a
worker thread, so a busy loop never has to hand the GIL back and forth per statement.
For other databases the function runs in SQLAlchemy's greenlet bridge over the async
driver. Readers (replay, backfill, health) use their own short async connections. SQLite
runs in WAL mode so readers never block the writer, with ``synchronous=FULL``: a ``200``
promises the message survives power loss, not only a process crash, and group commit
already amortises the extra fsync over every request in the batch.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from ..envelope import Envelope

logger = logging.getLogger("dualchannel.server.store")

__all__ = [
    "AuditRow",
    "MetricsRow",
    "Position",
    "Store",
    "StoredMessage",
    "metadata",
]

metadata = sa.MetaData()

_RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", _RowId, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(128), nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("priority", sa.String(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("session_id", "epoch", "seq", name="uq_messages_key"),
    sa.Index("idx_messages_replay", "session_id", "id"),
    sa.Index("idx_messages_received", "received_at"),
    sqlite_autoincrement=True,
)

webhook_logs = sa.Table(
    "webhook_logs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("session_id", sa.String(128), nullable=True),
    sa.Column("webhook_type", sa.String(50), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("processed_items", sa.Text, nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("retry_count", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("idx_webhook_session", "session_id"),
    sa.Index("idx_webhook_created", "created_at"),
)

session_metrics = sa.Table(
    "session_metrics",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("session_id", sa.String(128), nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("source", sa.String(64), nullable=True),
    sa.Column("reported_at", sa.String(64), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("idx_metrics_session", "session_id"),
    sa.Index("idx_metrics_created", "created_at"),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_row_id() -> str:
    """A UUIDv7 (RFC 9562) string: milliseconds since the epoch, then 74 random bits.

    Time-ordered ids append to the end of a table's primary-key index instead of landing
    on a random page of it (as UUIDv4 ids do), so each group commit dirties, and writes
    to the WAL, a handful of index pages rather than one per row. The random bits come
    from :func:`random.getrandbits`, seeded from the OS and reseeded in forked children:
    these ids must be unique, not secret, and a system call per request showed up in
    the relay's profile. Formatting it here costs a third of ``str(uuid.uuid4())``.
    """
    random_bits = random.getrandbits(74)
    value = (
        (time.time_ns() // 1_000_000) << 80
        | 0x7 << 76  # version 7
        | (random_bits >> 62) << 64  # rand_a: 12 bits
        | 0b10 << 62  # the RFC 9562 variant
        | random_bits & ((1 << 62) - 1)  # rand_b: 62 bits
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(slots=True)
class AuditRow:
    """One ``webhook_logs`` row; the writer fills ``processed_items`` and ``status``."""

    session_id: str | None
    webhook_type: str
    payload: str
    status: str
    error_message: str | None = None
    retry_count: int = 0
    processed_items: list[int] | None = None
    id: str = field(default_factory=new_row_id)
    created_at: datetime = field(default_factory=utcnow)

    def values(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "session_id": self.session_id,
            "webhook_type": self.webhook_type,
            "payload": self.payload,
            "processed_items": (
                None if self.processed_items is None else json.dumps(self.processed_items)
            ),
            "status": self.status,
            "error_message": self.error_message,
            "retry_count": self.retry_count,
            "created_at": self.created_at,
        }


@dataclass(slots=True)
class MetricsRow:
    session_id: str
    metrics: str
    source: str | None
    reported_at: str | None
    id: str = field(default_factory=new_row_id)
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One row of the log: the resume token and the envelope exactly as sent on SSE."""

    id: int
    session_id: str
    epoch: int
    seq: int
    type: str
    payload: str


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """The newest stored message of a session: highest epoch, highest seq within it."""

    epoch: int = 0
    seq: int = 0


_T = TypeVar("_T")


def _insert_new(conn: sa.Connection) -> Any:
    """``INSERT ... ON CONFLICT (session_id, epoch, seq) DO NOTHING`` for the dialect.

    Without values: executed with a list of rows, SQLAlchemy's "insertmanyvalues" turns it
    into a few multi-row statements whose compiled form is cached.
    """
    keys = ["session_id", "epoch", "seq"]
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    return insert(messages).on_conflict_do_nothing(index_elements=keys)


_WAIT_FOR_LOCKS_MS = 5000


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={_WAIT_FOR_LOCKS_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _never_wait_for_locks(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # The writer's connection fails at once on another process's lock (see transaction);
    # only _waiting_transaction, on a worker thread, turns the wait back on.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.close()


def _waiting_transaction(sync_engine: sa.Engine, work: Callable[[sa.Connection], _T]) -> _T:
    with sync_engine.begin() as conn:
        conn.exec_driver_sql(f"PRAGMA busy_timeout={_WAIT_FOR_LOCKS_MS}")
        try:
            return work(conn)
        finally:
            conn.exec_driver_sql("PRAGMA busy_timeout=0")


class _Locked(Exception):
    """The on-loop attempt found another connection holding the write lock."""


def _is_locked(exc: BaseException) -> bool:
    error = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    if not isinstance(error, sqlite3.OperationalError):
        return False
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF  # the primary result code
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _sync_sqlite_url(url: str) -> str | None:
    """The stdlib-driver twin of an async SQLite file URL; ``None`` if there is none.

    An in-memory database is private to its connection, so it has no twin: writes then go
    through the async engine like any other database's.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or "mode=memory" in str(parsed):
        return None
    return parsed.set(drivername="sqlite+pysqlite").render_as_string(hide_password=False)


_MESSAGE_COLUMNS = ("session_id", "epoch", "seq", "type", "priority", "payload", "received_at")
_AUDIT_COLUMNS = tuple(column.name for column in webhook_logs.columns)


class _SqliteWrites:
    """The writer's two hot inserts on SQLite, as plain SQL on the driver's cursor.

    Through SQLAlchemy's Core statements each row costs tens of microseconds of Python on
    the writer's thread (parameter processing, "insertmanyvalues" batching, result rows),
    and that thread competes with the event loop for the GIL: measured, most of a busy
    relay's commit time. Here a batch is one multi-row ``INSERT ... RETURNING`` per
    :data:`CHUNK` rows plus one ``executemany`` for the audit rows. The cursor belongs to
    the SQLAlchemy connection, so this runs inside :meth:`Store.transaction`'s
    transaction, and values are formatted by SQLAlchemy's own SQLite ``DATETIME``
    processor, so every row reads back exactly as if SQLAlchemy had written it.
    """

    #: Rows per statement: 7 parameters each stays under SQLite's oldest limit of 999.
    CHUNK = 128

    def __init__(self) -> None:
        dialect = sqlite.dialect()
        processor = sa.DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
        assert processor is not None
        self._datetime: Callable[[datetime], str] = processor
        self._message_sql: dict[int, str] = {}
        marks = ", ".join("?" * len(_AUDIT_COLUMNS))
        self._audit_sql = (
            f"INSERT INTO {webhook_logs.name} ({', '.join(_AUDIT_COLUMNS)}) VALUES ({marks})"
        )

    def _messages_sql(self, count: int) -> str:
        sql = self._message_sql.get(count)
        if sql is None:
            group = "(" + ", ".join("?" * len(_MESSAGE_COLUMNS)) + ")"
            sql = (
                f"INSERT INTO {messages.name} ({', '.join(_MESSAGE_COLUMNS)}) "
                f"VALUES {', '.join([group] * count)} "
                "ON CONFLICT (session_id, epoch, seq) DO NOTHING "
                "RETURNING id, session_id, epoch, seq"
            )
            self._message_sql[count] = sql
        return sql

    def insert_messages(
        self,
        conn: sa.Connection,
        rows: Sequence[tuple[str, int, int, str, str, str]],
        now: datetime,
    ) -> list[Any]:
        received_at = self._datetime(now)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        returned: list[Any] = []
        try:
            for start in range(0, len(rows), self.CHUNK):
                chunk = rows[start : start + self.CHUNK]
                params = [value for row in chunk for value in (*row, received_at)]
                cursor.execute(self._messages_sql(len(chunk)), params)
                returned.extend(cursor.fetchall())
        finally:
            cursor.close()
        return returned

    def insert_audit(self, conn: sa.Connection, rows: Sequence[AuditRow]) -> None:
        params = []
        for row in rows:
            values = row.values()
            values["created_at"] = self._datetime(values["created_at"])
            params.append(tuple(values[name] for name in _AUDIT_COLUMNS))
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(self._audit_sql, params)
        finally:
            cursor.close()


_sqlite = _SqliteWrites()


class Store:
    """Async access to the relay's tables. :meth:`open` creates them on first start."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None
        self._sync_engine: sa.Engine | None = None
        self._write_lock = anyio.Lock()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("store is not open")
        return self._engine

    async def open(self) -> None:
        engine = create_async_engine(self.url)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        self._engine = engine
        sync_url = _sync_sqlite_url(self.url)
        if sync_url is not None:
            # The same file through the stdlib driver, for the writer only (see transaction).
            sync_engine = sa.create_engine(
                sync_url, connect_args={"check_same_thread": False}, pool_size=1
            )
            event.listen(sync_engine, "connect", _sqlite_pragmas)
            event.listen(sync_engine, "connect", _never_wait_for_locks)
            self._sync_engine = sync_engine
        await self.transaction(metadata.create_all)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        if self._sync_engine is not None:
            await anyio.to_thread.run_sync(self._sync_engine.dispose)
            self._sync_engine = None

    # -- writes (only the group-commit writer calls these) -----------------------------

    async def transaction(
        self, work: Callable[[sa.Connection], _T], *, on_loop: bool = False
    ) -> _T:
        """Run ``work(conn)`` in one transaction, committed (fsynced) before this returns.

        ``work`` is synchronous and gets a synchronous connection: the methods below are
        its building blocks. Transactions run one at a time.

        On an SQLite file ``work`` runs on a worker thread, or with ``on_loop=True`` on
        the event loop's own thread, with only the commit (the fsync) handed to a worker
        thread. That is for short work made of a few driver calls, like the group
        commit's inserts: each call releases the GIL, and a worker thread that must win
        it back from a busy event loop waits up to the interpreter's switch interval
        (5 ms) every time. Measured at 5,500 ingest requests/s: ingest p99 13-24 ms with
        the inserts on the loop, 55-167 ms with them on the thread. So that the loop
        never stalls on another process's write lock, the on-loop attempt does not wait
        for it: it rolls back and ``work`` runs again on a worker thread that does wait.
        ``work`` must therefore be safe to run twice. Other databases run ``work``
        through SQLAlchemy's greenlet bridge.
        """
        sync_engine = self._sync_engine
        async with self._write_lock:
            if sync_engine is None:
                async with self.engine.begin() as conn:
                    return await conn.run_sync(work)
            if on_loop:
                try:
                    return await self._on_loop(sync_engine, work)
                except _Locked:
                    logger.info("database locked by another writer; committing on a thread")
            return await anyio.to_thread.run_sync(_waiting_transaction, sync_engine, work)

    async def _on_loop(self, sync_engine: sa.Engine, work: Callable[[sa.Connection], _T]) -> _T:
        with sync_engine.connect() as conn:
            transaction = conn.begin()
            try:
                result = work(conn)
            except BaseException as exc:
                transaction.rollback()
                if _is_locked(exc):
                    raise _Locked from exc
                raise
            with anyio.CancelScope(shield=True):  # the connection is the thread's until then
                await anyio.to_thread.run_sync(transaction.commit)
            return result

    def insert_messages(
        self, conn: sa.Connection, envelopes: Sequence[Envelope], now: datetime
    ) -> list[int | None]:
        """Insert envelopes in order; the row id of each new one, ``None`` for a repeat.

        ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` over many rows at once: the
        group-commit writer hands over everything that arrived in its window, so a
        statement is paid per window, not per message. Returned rows are matched back by
        their key, since neither dialect promises RETURNING order; a key repeated in the
        same call is new only the first time.
        """
        ids: list[int | None] = [None] * len(envelopes)
        first_index: dict[tuple[str, int, int], int] = {}
        rows: list[tuple[str, int, int, str, str, str]] = []
        for index, env in enumerate(envelopes):
            key = (env.session_id, env.epoch, env.seq)
            if key in first_index:
                continue
            first_index[key] = index
            payload = env.to_bytes(max_size=None).decode()
            rows.append((*key, env.type.value, env.priority.value, payload))
        if not rows:
            return ids
        returned: Sequence[Any]
        if conn.dialect.name == "sqlite":
            returned = _sqlite.insert_messages(conn, rows, now)
        else:
            c = messages.c
            statement = _insert_new(conn).returning(c.id, c.session_id, c.epoch, c.seq)
            names = _MESSAGE_COLUMNS[:-1]
            values = [{**dict(zip(names, row, strict=True)), "received_at": now} for row in rows]
            returned = conn.execute(statement, values).all()
        for row_id, session_id, epoch, seq in returned:
            ids[first_index[(session_id, epoch, seq)]] = int(row_id)
        return ids

    def insert_audit(self, conn: sa.Connection, rows: Sequence[AuditRow]) -> None:
        if not rows:
            return
        if conn.dialect.name == "sqlite":
            _sqlite.insert_audit(conn, rows)
        else:
            conn.execute(sa.insert(webhook_logs), [row.values() for row in rows])

    def insert_metrics(self, conn: sa.Connection, rows: Sequence[MetricsRow]) -> None:
        if rows:
            conn.execute(
                sa.insert(session_metrics),
                [
                    {
                        "id": r.id,
                        "session_id": r.session_id,
                        "metrics": r.metrics,
                        "source": r.source,
                        "reported_at": r.reported_at,
                        "created_at": r.created_at,
                    }
                    for r in rows
                ],
            )

    def purge(self, conn: sa.Connection, before: datetime) -> int:
        """Delete everything older than ``before``; the number of log rows removed."""
        result = conn.execute(sa.delete(messages).where(messages.c.received_at < before))
        conn.execute(sa.delete(webhook_logs).where(webhook_logs.c.created_at < before))
        conn.execute(sa.delete(session_metrics).where(session_metrics.c.created_at < before))
        return int(result.rowcount or 0)

    # -- reads -------------------------------------------------------------------------

    async def replay(self, session_id: str, after_id: int, limit: int) -> list[StoredMessage]:
        """The session's log after resume token ``after_id``, oldest first."""
        query = (
            sa.select(
                messages.c.id,
                messages.c.session_id,
                messages.c.epoch,
                messages.c.seq,
                messages.c.type,
                messages.c.payload,
            )
            .where(messages.c.session_id == session_id, messages.c.id > after_id)
            .order_by(messages.c.id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [StoredMessage(*row) for row in rows]

    async def messages_page(
        self, session_id: str, *, epoch: int | None, after_seq: int, limit: int
    ) -> tuple[list[str], bool]:
        """Payloads ordered by (epoch, seq) for backfill, and whether more follow."""
        query = sa.select(messages.c.payload).where(messages.c.session_id == session_id)
        if epoch is not None:
            query = query.where(messages.c.epoch == epoch, messages.c.seq > after_seq)
        query = query.order_by(messages.c.epoch, messages.c.seq).limit(limit + 1)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).scalars().all()
        return list(rows[:limit]), len(rows) > limit

    async def position(self, session_id: str) -> Position:
        """Highest stored epoch of the session and the highest seq within it."""
        latest = (
            sa.select(sa.func.max(messages.c.epoch))
            .where(messages.c.session_id == session_id)
            .scalar_subquery()
        )
        query = (
            sa.select(messages.c.epoch, sa.func.max(messages.c.seq))
            .where(messages.c.session_id == session_id, messages.c.epoch == latest)
            .group_by(messages.c.epoch)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return Position() if row is None else Position(int(row[0]), int(row[1]))

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def audit_rows(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """``webhook_logs`` rows, oldest first (for tests and operators)."""
        query = sa.select(webhook_logs).order_by(webhook_logs.c.created_at)
        if session_id is not None:
            query = query.where(webhook_logs.c.session_id == session_id)
        async with self.engine.connect() as conn:
            return [dict(row._mapping) for row in (await conn.execute(query)).all()]
