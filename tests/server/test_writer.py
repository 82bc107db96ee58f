"""The group-commit writer and the hub on their own: batching, shutdown, heartbeat order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from dualchannel import Envelope
from dualchannel.server.hub import Hub, LiveItem
from dualchannel.server.ingest import WriteJob, Writer, WriterClosed
from dualchannel.server.metrics import RelayMetrics
from dualchannel.server.store import Position, Store
from tests.timing import bound

from .conftest import envelope, opened

pytestmark = pytest.mark.anyio


class CountingStore(Store):
    """A real SQLite store that remembers how many envelopes each transaction held."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.sizes: list[int] = []

    def insert_messages(self, conn, envelopes, now):  # type: ignore[no-untyped-def]
        self.sizes.append(len(envelopes))
        return super().insert_messages(conn, envelopes, now)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    async with opened(CountingStore(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")) as store:
        yield store


async def test_jobs_that_do_not_fit_wait_for_the_next_transaction(store: CountingStore) -> None:
    writer = Writer(store, Hub(), RelayMetrics(), window=0.0, max_items=3)
    results: dict[int, WriteJob] = {}

    async def submit(seq: int) -> None:
        results[seq] = await writer.submit(WriteJob(envelopes=[envelope("w", seq)]))

    with anyio.fail_after(bound(10)):
        async with anyio.create_task_group() as tg:
            await tg.start(writer.run)
            async with anyio.create_task_group() as clients:
                for seq in range(1, 11):
                    clients.start_soon(submit, seq)
            writer.close()
    assert sorted(results) == list(range(1, 11))
    ids = [results[seq].ids[0] for seq in range(1, 11)]
    assert all(i is not None for i in ids) and len(set(ids)) == 10
    assert sum(store.sizes) == 10 and max(store.sizes) <= 3
    assert len(store.sizes) >= 4  # ten envelopes, three at most per transaction


async def test_close_commits_what_is_queued_then_refuses(store: CountingStore) -> None:
    writer = Writer(store, Hub(), RelayMetrics(), window=0.0, max_items=500)
    done: list[WriteJob] = []

    async def submit(seq: int) -> None:
        done.append(await writer.submit(WriteJob(envelopes=[envelope("c", seq)])))

    with anyio.fail_after(bound(10)):
        async with anyio.create_task_group() as tg:
            for seq in range(1, 6):
                tg.start_soon(submit, seq)
            await anyio.sleep(0.05)  # queued, no writer running yet
            writer.close()
            tg.start_soon(writer.run)
    assert len(done) == 5 and all(job.ids[0] is not None for job in done)
    with pytest.raises(WriterClosed):
        await writer.submit(WriteJob(envelopes=[envelope("c", 6)]))


async def test_a_failed_transaction_fails_every_job_in_it(store: CountingStore) -> None:
    writer = Writer(store, Hub(), RelayMetrics(), window=0.0, max_items=500)
    await store.close()  # every commit now fails
    with anyio.fail_after(bound(10)):
        async with anyio.create_task_group() as tg:
            await tg.start(writer.run)
            for seq in (1, 2):
                with pytest.raises(Exception, match=r"."):
                    await writer.submit(WriteJob(envelopes=[envelope("f", seq)]))
            writer.close()
    await store.open()


async def test_heartbeats_queue_behind_messages_and_never_run_ahead() -> None:
    hub = Hub()
    sub = hub.subscribe("s", queue_size=10)
    hub.publish("s", [LiveItem(1, b"id: 1\n\n"), LiveItem(2, b"id: 2\n\n")], Position(1, 2))
    hub.beat()
    received = [sub.receive.receive_nowait() for _ in range(3)]
    assert [item.id for item in received] == [1, 2, None]
    beat = received[2].frame.decode()
    assert beat.startswith("event: heartbeat\ndata: ")
    announced = Envelope.from_bytes(beat.split("data: ", 1)[1].strip().encode())
    assert (announced.epoch, announced.seq) == (1, 2)
    hub.unsubscribe(sub)


async def test_a_full_queue_overflows_on_a_heartbeat_too() -> None:
    hub = Hub()
    sub = hub.subscribe("s", queue_size=1)
    hub.publish("s", [LiveItem(1, b"id: 1\n\n")], Position(1, 1))
    hub.beat()
    assert sub.overflowed and hub.subscriber_count == 0
    hub.unsubscribe(sub)
