"""The store's SQLite write path: plain-SQL inserts, the on-loop commit, row ids."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa

from dualchannel.server.store import (
    AuditRow,
    Store,
    messages,
    new_row_id,
    utcnow,
    webhook_logs,
)
from tests.timing import bound

from .conftest import envelope, opened


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    async with opened(Store(f"sqlite+aiosqlite:///{db_path}")) as store:
        yield store


@pytest.mark.anyio
async def test_a_batch_over_one_statement_keeps_order_and_finds_repeats(store: Store) -> None:
    first = envelope("s", 5)
    await store.transaction(lambda conn: store.insert_messages(conn, [first], utcnow()))
    # 300 rows span three multi-row statements; seq 5 is already stored, seq 7 is sent twice.
    batch = [envelope("s", seq) for seq in range(1, 301)] + [envelope("s", 7)]
    ids = await store.transaction(
        lambda conn: store.insert_messages(conn, batch, utcnow()), on_loop=True
    )
    assert ids[4] is None and ids[-1] is None
    new = [i for i in ids if i is not None]
    assert len(new) == 299 and new == sorted(new) and len(set(new)) == 299
    stored = await store.replay("s", 0, 1000)
    assert [m.seq for m in stored] == [5, *range(1, 5), *range(6, 301)]
    sent = {env.seq: env.to_bytes() for env in reversed([first, *batch[:300]])}
    assert all(m.payload.encode() == sent[m.seq] for m in stored)


def _raw_rows(db_path: Path, table: str, order: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()


@pytest.mark.anyio
async def test_plain_sql_stores_exactly_what_sqlalchemy_stores(store: Store, db_path: Path) -> None:
    now = utcnow()
    env = envelope("a", 1)
    audit = AuditRow(session_id="a", webhook_type="transcription", payload="{}", status="pending")
    audit.processed_items = [1]

    def fast(conn: sa.Connection) -> None:
        store.insert_messages(conn, [env], now)
        store.insert_audit(conn, [audit])

    def through_sqlalchemy(conn: sa.Connection) -> None:
        row = {
            "session_id": "b",
            "epoch": env.epoch,
            "seq": env.seq,
            "type": env.type.value,
            "priority": env.priority.value,
            "payload": env.to_bytes().decode(),
            "received_at": now,
        }
        conn.execute(sa.insert(messages), row)
        conn.execute(sa.insert(webhook_logs), {**audit.values(), "id": "second"})

    await store.transaction(fast, on_loop=True)
    await store.transaction(through_sqlalchemy)
    plain, core = _raw_rows(db_path, "messages", "id")
    assert plain[2:] == core[2:] and (plain[1], core[1]) == ("a", "b")
    plain_audit, core_audit = _raw_rows(db_path, "webhook_logs", "id = 'second'")
    assert plain_audit[1:] == core_audit[1:]
    assert plain_audit[4] == "[1]" and plain_audit[8] == core_audit[8]
    # And both read back through SQLAlchemy as the same datetime.
    rows = await store.audit_rows("a")
    assert rows[0]["created_at"] == rows[1]["created_at"] == audit.created_at.replace(tzinfo=None)


@pytest.mark.anyio
async def test_a_locked_database_is_waited_for_on_a_thread_not_on_the_loop(
    store: Store, db_path: Path
) -> None:
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
    ticks = 0
    ids: list[int | None] = []

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    async def write() -> None:
        ids.extend(
            await store.transaction(
                lambda conn: store.insert_messages(conn, [envelope("l", 1)], utcnow()),
                on_loop=True,
            )
        )

    try:
        with anyio.fail_after(bound(10)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(tick)
                tg.start_soon(write)
                await anyio.sleep(0.5)
                assert not ids  # still waiting for the lock...
                assert ticks >= 10  # ...and the event loop kept running meanwhile
                other.execute("COMMIT")
                while not ids:
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
    finally:
        other.close()
    assert ids[0] is not None
    assert [m.seq for m in await store.replay("l", 0, 10)] == [1]


def test_row_ids_are_uuid7_in_time_order() -> None:
    first = [new_row_id() for _ in range(1000)]
    time.sleep(0.002)
    later = new_row_id()
    assert len(set(first)) == 1000
    parsed = uuid.UUID(later)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert abs((parsed.int >> 80) - time.time() * 1000) < 1000  # milliseconds since 1970
    assert all(earlier < later for earlier in first)


@pytest.mark.anyio
async def test_an_in_memory_database_runs_the_same_inserts_through_the_async_driver() -> None:
    # No file, so no stdlib twin: the inserts go through SQLAlchemy's async bridge.
    async with opened(Store("sqlite+aiosqlite://")) as store:
        audit = AuditRow(session_id="m", webhook_type="transcription", payload="{}", status="x")
        batch = [envelope("m", 1), envelope("m", 2), envelope("m", 1)]

        def work(conn: sa.Connection) -> list[int | None]:
            store.insert_audit(conn, [audit])
            return store.insert_messages(conn, batch, utcnow())

        ids = await store.transaction(work, on_loop=True)
        assert ids[0] is not None and ids[1] is not None and ids[2] is None
        assert [m.seq for m in await store.replay("m", 0, 10)] == [1, 2]
        assert [row["id"] for row in await store.audit_rows("m")] == [audit.id]
