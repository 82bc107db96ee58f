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
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

import anyio
import sqlalchemy as sa
from anyio.abc import TaskStatus

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
    finished: bool = False
    done: anyio.Event | None = None  # the event of the transaction that took this job


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
        capacity: int = 10_000,
    ) -> None:
        self._store = store
        self._hub = hub
        self._metrics = metrics
        self._window = window
        self._max_items = max_items
        self._capacity = capacity
        self._pending: deque[WriteJob] = deque()
        self._next = anyio.Event()  # set when the next transaction has committed
        self._wake = anyio.Event()  # set when the writer has work (or must stop)
        self._space = anyio.Event()  # set when the writer took jobs off a full queue
        self._closed = False

    async def submit(self, job: WriteJob) -> WriteJob:
        """Queue ``job``, wait for its commit; re-raises the transaction's error."""
        while len(self._pending) >= self._capacity and not self._closed:
            await self._space.wait()
        if self._closed:
            raise WriterClosed("the relay is shutting down")
        self._pending.append(job)
        self._wake.set()
        while not job.finished:
            # Until a transaction takes the job, the next one's event, read afresh: a job
            # that did not fit wakes with it and waits again.
            await (job.done or self._next).wait()
        if job.error is not None:
            raise job.error
        return job

    def close(self) -> None:
        """Stop taking jobs; :meth:`run` commits what is queued, then returns."""
        self._closed = True
        self._wake.set()
        self._space.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if not self._pending:
                if self._closed:
                    return
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            if self._window > 0:
                await anyio.sleep(self._window)
            batch, done = self._take()
            with anyio.CancelScope(shield=True):
                await self._commit(batch)
            for job in batch:
                job.finished = True
            done.set()

    def _take(self) -> tuple[list[WriteJob], anyio.Event]:
        """The jobs of the next transaction (up to ``max_items`` envelopes) and its event.

        Queued jobs wait on the current event, and the taken ones keep it as theirs;
        swapping in a fresh one here (no await in between) means jobs left or queued from
        now on wait for a later transaction.
        """
        pending = self._pending
        batch = [pending.popleft()]
        items = len(batch[0].envelopes)
        while pending and items + len(pending[0].envelopes) <= self._max_items:
            job = pending.popleft()
            batch.append(job)
            items += len(job.envelopes)
        done, self._next = self._next, anyio.Event()
        for job in batch:
            job.done = done
        if not self._space.is_set():
            self._space.set()
            self._space = anyio.Event()
        return batch, done

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
            await store.transaction(
                transaction, on_loop=all(job.purge_before is None for job in batch)
            )
        except Exception as exc:
            logger.exception("commit failed", extra={"jobs": len(batch)})
            for job in batch:
                job.error = exc
            return
        envelopes = sum(len(job.envelopes) for job in batch)
        stored = sum(1 for job in batch for row_id in job.ids if row_id is not None)
        self._metrics.commit_batch.observe(envelopes)
        self._metrics.stored.inc(stored)
        self._metrics.duplicates.inc(envelopes - stored)
        self._metrics.commit_seconds.observe(time.perf_counter() - started)
        self._fan_out(batch)

    def _fan_out(self, batch: list[WriteJob]) -> None:
        per_session: dict[str, tuple[list[LiveItem], Position]] = {}
        for job in batch:
            for env, row_id in zip(job.envelopes, job.ids, strict=True):
                if row_id is None or not self._hub.has_subscribers(env.session_id):
                    continue  # a repeat, or nobody listening: nothing to encode
                items, newest = per_session.get(env.session_id, ([], Position()))
                data = env.to_bytes(max_size=None)
                items.append(LiveItem(row_id, frame(data, event=env.type.value, id=str(row_id))))
                per_session[env.session_id] = (items, max(newest, Position(env.epoch, env.seq)))
        for session_id, (items, newest) in per_session.items():
            self._hub.publish(session_id, items, newest)
