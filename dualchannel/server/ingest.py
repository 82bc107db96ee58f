"""Group commit: one writer task turns many requests into one transaction.

Theory of operation: request handlers never touch the database for writes. They build a
:class:`WriteJob` (envelopes to store, an audit row, a metrics row, or a purge) and
``await writer.submit(job)``. The single writer task takes the first waiting job (after
an optional ``commit_window`` sleep, 0 by default: requests that arrive while a commit is
in flight already form the next batch), drains whatever else is queued (up to
``commit_max_items`` envelopes), and commits everything in one transaction: one fsync and
one thread hop for the whole batch. Only after the commit does it fan the new rows out
(in row-id order, which is resume-token order) and wake the handlers, so a ``200``
always means durable. A failed transaction fails every job in the batch; their handlers
answer 503 and publishers retry, which is safe because ingest is idempotent on
``(session, epoch, seq)``.

One writer also means SQLite never sees two writers contend for its lock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

import anyio
import sqlalchemy as sa
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..envelope import Envelope
from .eventstream import frame
from .hub import Hub, LiveItem
from .metrics import RelayMetrics
from .store import AuditRow, MetricsRow, Position, Store, utcnow

__all__ = ["WriteJob", "Writer", "WriterClosed"]

logger = logging.getLogger("dualchannel.server.ingest")


class WriterClosed(Exception):
    """The relay is shutting down and takes no more writes."""


@dataclass(eq=False, slots=True)
class WriteJob:
    """Work for one transaction slot. ``ids`` gets one row id (or ``None``) per envelope."""

    envelopes: list[Envelope] = field(default_factory=list)
    audit: AuditRow | None = None
    metrics: MetricsRow | None = None
    purge_before: datetime | None = None
    ids: list[int | None] = field(default_factory=list)
    purged: int = 0
    error: BaseException | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


class Writer:
    """The single task that owns every write to the store."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        metrics: RelayMetrics,
        *,
        window: float,
        max_items: int,
    ) -> None:
        self._store = store
        self._hub = hub
        self._metrics = metrics
        self._window = window
        self._max_items = max_items
        self._send: MemoryObjectSendStream[WriteJob]
        self._receive: MemoryObjectReceiveStream[WriteJob]
        self._send, self._receive = anyio.create_memory_object_stream[WriteJob](10_000)

    async def submit(self, job: WriteJob) -> WriteJob:
        """Queue ``job``, wait for its commit; re-raises the transaction's error."""
        try:
            await self._send.send(job)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise WriterClosed("the relay is shutting down") from exc
        await job.done.wait()
        if job.error is not None:
            raise job.error
        return job

    def close(self) -> None:
        """Stop taking jobs; :meth:`run` commits what is queued, then returns."""
        self._send.close()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with self._receive:
            while True:
                try:
                    first = await self._receive.receive()
                except anyio.EndOfStream:
                    return
                batch = [first]
                if self._window > 0:
                    await anyio.sleep(self._window)
                items = len(first.envelopes)
                while items < self._max_items:
                    try:
                        job = self._receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    batch.append(job)
                    items += len(job.envelopes)
                with anyio.CancelScope(shield=True):
                    await self._commit(batch)

    async def _commit(self, batch: list[WriteJob]) -> None:
        started = time.perf_counter()
        now = utcnow()
        store = self._store

        def transaction(conn: sa.Connection) -> None:
            # Every envelope of the window in one insert; ids are handed back per job.
            everything = [env for job in batch for env in job.envelopes]
            ids = store.insert_messages(conn, everything, now) if everything else []
            audits: list[AuditRow] = []
            metrics_rows: list[MetricsRow] = []
            offset = 0
            for job in batch:
                if job.envelopes:
                    job.ids = ids[offset : offset + len(job.envelopes)]
                    offset += len(job.envelopes)
                    if job.audit is not None:
                        new = [i for i in job.ids if i is not None]
                        job.audit.processed_items = new
                        job.audit.status = "success" if new else "duplicate"
                if job.audit is not None:
                    audits.append(job.audit)
                if job.metrics is not None:
                    metrics_rows.append(job.metrics)
                if job.purge_before is not None:
                    job.purged = store.purge(conn, job.purge_before)
            store.insert_audit(conn, audits)
            store.insert_metrics(conn, metrics_rows)

        try:
            await store.transaction(transaction)
        except Exception as exc:
            logger.exception("commit failed", extra={"jobs": len(batch)})
            for job in batch:
                job.error = exc
                job.done.set()
            return
        self._metrics.commit_batch.observe(sum(len(job.envelopes) for job in batch))
        self._metrics.commit_seconds.observe(time.perf_counter() - started)
        self._fan_out(batch)
        for job in batch:
            job.done.set()

    def _fan_out(self, batch: list[WriteJob]) -> None:
        per_session: dict[str, tuple[list[LiveItem], Position]] = {}
        for job in batch:
            for env, row_id in zip(job.envelopes, job.ids, strict=True):
                if row_id is None or not self._hub.has_subscribers(env.session_id):
                    continue  # a repeat, or nobody listening: nothing to encode
                items, newest = per_session.get(env.session_id, ([], Position()))
                data = env.to_bytes(max_size=None).decode()
                items.append(LiveItem(row_id, frame(data, event=env.type.value, id=str(row_id))))
                per_session[env.session_id] = (items, max(newest, Position(env.epoch, env.seq)))
        for session_id, (items, newest) in per_session.items():
            self._hub.publish(session_id, items, newest)
