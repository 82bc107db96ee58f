"""The publisher's secondary path: the webhook outbox, drained to the relay.

Three tasks share one :class:`~dualchannel.channels.outbox.RateBudget`:

- **drain** posts the outbox in batches, critical first and in seq order within a
  priority, after waiting for the budget (so the wait grows the batch). Timeouts,
  connection errors and 408/425/429/5xx are retried with full-jitter backoff, with the
  same ``webhook-id`` and a growing ``X-Retry-Attempt``; ``Retry-After`` holds every
  request. A final 4xx on a batch splits it in halves until the refused message(s) are
  isolated; those leave the outbox and are reported through ``on_failure``. A message
  leaves the outbox only on a 200 or such a report: nothing is dropped silently.
- **metrics** posts best-effort session metrics, only with budget to spare.
- **health** GETs ``/api/health`` every ``HealthPolicy.interval``, every
  ``unhealthy_interval`` while the relay looks unhealthy; a recovery cuts a backoff short.
"""

from __future__ import annotations

import collections
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from ..envelope import Envelope
from ..errors import (
    ConfigurationError,
    DualChannelError,
    RelayAuthError,
    RelayRejected,
    RelayUnavailable,
)
from ..protocol.backoff import (
    RetryDecision,
    RetryPolicy,
    backoff_delays,
    classify_status,
    parse_retry_after,
)
from ..signing import WebhookSigner
from ._wakeup import Wakeup
from .outbox import Outbox, OutboxEntry, OutboxPolicy, RateBudget, RateLimitInfo
from .webhook import WebhookSender, webhook_headers

__all__ = ["DeliveryFailure", "HealthPolicy", "WebhookPath"]

logger = logging.getLogger("dualchannel.publisher")

TRANSCRIPTION_PATH = "/api/transcription"
METRICS_PATH = "/api/metrics"
HEALTH_PATH = "/api/health"


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthPolicy:
    """``GET /api/health`` every ``interval`` seconds, every ``unhealthy_interval`` while
    the relay looks unhealthy."""

    interval: float = 30.0
    unhealthy_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.unhealthy_interval <= 0:
            raise ConfigurationError("HealthPolicy intervals must be > 0")


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """Messages the relay will never have from this publisher, and why.

    ``status`` is the relay's HTTP status for a refusal; ``None`` when the publisher gave up
    (``RetryPolicy.max_attempts`` exhausted, or closed with the messages still queued).
    """

    envelopes: tuple[Envelope, ...]
    reason: str
    status: int | None = None
    error: DualChannelError | None = None


class WebhookPath:
    """The relay side of one publisher. Counters are plain attributes."""

    def __init__(
        self,
        sender: WebhookSender,
        *,
        session_id: str,
        signer: WebhookSigner | None,
        retry: RetryPolicy,
        policy: OutboxPolicy,
        health: HealthPolicy,
        on_failure: Callable[[DeliveryFailure], object] | None,
        progress: Wakeup,
        rng: random.Random,
    ) -> None:
        self.sender = sender
        self.outbox = Outbox(policy.max_messages)
        self.budget = RateBudget(margin=policy.rate_margin)
        self.healthy: bool | None = None
        self.reason: str | None = None
        self.sent = self.acknowledged = self.retried = self.failed = 0
        self.requests = self.rate_limited = self.metrics_sent = self.metrics_dropped = 0
        self.space = Wakeup()  # the outbox has room again
        self._session_id = session_id
        self._signer = signer
        self._retry = retry
        self._policy = policy
        self._health = health
        self._on_failure = on_failure
        self._progress = progress
        self._rng = rng
        self._metrics: collections.deque[bytes] = collections.deque()
        self._drain_wakeup = Wakeup()
        self._metrics_wakeup = Wakeup()
        self._recovered = Wakeup()
        self._health_kick = Wakeup()
        self._extra = {"session_id": session_id}

    # -- the caller's side (synchronous) -----------------------------------------------

    def enqueue(self, envelope: Envelope, body: bytes) -> None:
        """Queue a message; raises WouldBlock when full (check ``outbox.free`` first)."""
        self.outbox.put_nowait(envelope, body, now=anyio.current_time())
        self._drain_wakeup.set()

    def enqueue_metrics(self, payload: dict[str, Any]) -> None:
        """Queue a metrics payload; beyond ``metrics_max`` the oldest is dropped."""
        if len(self._metrics) >= self._policy.metrics_max:
            self._metrics.popleft()
            self.metrics_dropped += 1
        self._metrics.append(json.dumps(payload, separators=(",", ":")).encode())
        self._metrics_wakeup.set()

    def abandon_all(self, reason: str) -> list[Envelope]:
        """Empty the outbox (at close), report it, and return what was in it."""
        left = [entry.envelope for entry in self.outbox.clear()]
        if left:
            self.failed += len(left)
            logger.warning(
                "undelivered webhook messages",
                extra={**self._extra, "count": len(left), "seqs": [e.seq for e in left][:20]},
            )
            self._report(DeliveryFailure(tuple(left), reason))
        return left

    # -- tasks -------------------------------------------------------------------------

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._drain_loop)
            tg.start_soon(self._metrics_loop)
            tg.start_soon(self._health_loop)

    async def _drain_loop(self) -> None:
        while True:
            if not len(self.outbox):
                await self._drain_wakeup.wait()
                continue
            await self._wait_budget()
            batch = self.outbox.peek_batch(self._policy.batch_max, self._policy.batch_max_bytes)
            if batch:
                await self._deliver(batch)

    async def _wait_budget(self, reserve: int = 0) -> None:
        # The wait is a duration computed from the relay's answers, not a condition that
        # another task sets, so sleeping in a loop is the right shape here.
        while (delay := self.budget.delay(anyio.current_time(), reserve=reserve)) > 0:  # noqa: ASYNC110
            await anyio.sleep(delay)

    async def _deliver(self, batch: list[OutboxEntry]) -> None:
        """Post ``batch`` until the relay takes it or refuses it for good."""
        bodies = [entry.body for entry in batch]
        body = bodies[0] if len(bodies) == 1 else b"[" + b",".join(bodies) + b"]"
        delays = backoff_delays(self._retry, rng=self._rng)
        self.sent += sum(1 for entry in batch if entry.attempts == 0)
        attempt = 0
        while True:
            if attempt:
                await self._wait_budget()
                self.retried += len(batch)
            for entry in batch:
                entry.attempts += 1
            headers = webhook_headers(
                session_id=self._session_id, attempt=attempt, body=body, signer=self._signer
            )
            ticket = self.budget.on_send(anyio.current_time())
            self.requests += 1
            retry_after: float | None = None
            try:
                response = await self.sender.post(TRANSCRIPTION_PATH, body, headers)
            except RelayUnavailable as exc:
                self.budget.on_response(ticket, None, anyio.current_time())
                reason, retry_after = str(exc), exc.retry_after
                self._set_health(False, reason)
            else:
                info = RateLimitInfo.from_headers(response.headers)
                self.budget.on_response(ticket, info, anyio.current_time())
                decision = classify_status(response.status)
                reason = f"{response.status} {response.reason}"
                if decision is RetryDecision.SUCCESS:
                    self.acknowledged += len(batch)
                    self._remove(batch)
                    self._set_health(True, None)
                    return
                if response.status in (429, 503):
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                if response.status == 429:
                    self.rate_limited += 1
                elif response.status >= 500:
                    self._set_health(False, reason)
                if decision is RetryDecision.FATAL:
                    await self._refused(batch, response.status, response.reason)
                    return
            delay = next(delays, None)
            if delay is None:
                self._give_up(batch, f"gave up after {attempt + 1} attempts; last: {reason}")
                return
            attempt += 1
            wait = retry_after if retry_after is not None else delay
            logger.info(
                "webhook attempt failed; retrying",
                extra={
                    **self._extra,
                    "reason": reason,
                    "attempt": attempt,
                    "delay": wait,
                    "count": len(batch),
                },
            )
            if retry_after is not None:
                self.budget.hold(retry_after, anyio.current_time())  # every request obeys it
            else:
                await self._recovered.wait(delay)  # a health recovery cuts the backoff short

    async def _refused(self, batch: list[OutboxEntry], status: int, reason: str) -> None:
        if len(batch) > 1 and status not in (401, 403):
            # Isolate the refused message(s): the rest of the batch is fine.
            half = len(batch) // 2
            await self._deliver(batch[:half])
            await self._deliver(batch[half:])
            return
        error = (RelayAuthError if status in (401, 403) else RelayRejected)(status, reason)
        self.failed += len(batch)
        self._remove(batch)
        seqs = [entry.envelope.seq for entry in batch]
        logger.warning(
            "relay refused webhook messages",
            extra={**self._extra, "status": status, "reason": reason, "seqs": seqs[:20]},
        )
        self._report(DeliveryFailure(tuple(e.envelope for e in batch), reason, status, error))

    def _give_up(self, batch: list[OutboxEntry], reason: str) -> None:
        self.failed += len(batch)
        self._remove(batch)
        seqs = [entry.envelope.seq for entry in batch]
        logger.warning(
            "webhook messages abandoned", extra={**self._extra, "reason": reason, "seqs": seqs}
        )
        envelopes = tuple(entry.envelope for entry in batch)
        self._report(DeliveryFailure(envelopes, reason, None, RelayUnavailable(reason)))

    def _remove(self, batch: list[OutboxEntry]) -> None:
        self.outbox.remove(batch)
        self.space.set()
        self._progress.set()

    def _report(self, failure: DeliveryFailure) -> None:
        if self._on_failure is None:
            return
        try:
            self._on_failure(failure)
        except Exception:
            logger.exception("on_failure callback raised", extra=self._extra)

    # -- metrics and health ------------------------------------------------------------

    def _metrics_may_go(self) -> float:
        """0.0 when a metrics POST may go now, else how long to wait first."""
        limit = self.budget.limit
        reserve = max(2, limit // 5) if limit else 0
        delay = self.budget.delay(anyio.current_time(), reserve=reserve)
        # Never ahead of waiting transcripts unless the budget clearly has room.
        spare = limit is None or self.budget.remaining - reserve > 0
        if delay <= 0 and (spare or not len(self.outbox)):
            return 0.0
        return max(0.05, delay)

    async def _metrics_loop(self) -> None:
        while True:
            if not self._metrics:
                await self._metrics_wakeup.wait()
                continue
            while (delay := self._metrics_may_go()) > 0:  # noqa: ASYNC110 (see _wait_budget)
                await anyio.sleep(delay)
            body = self._metrics.popleft()
            headers = webhook_headers(
                session_id=self._session_id, attempt=0, body=body, signer=self._signer
            )
            ticket = self.budget.on_send(anyio.current_time())
            self.requests += 1
            try:
                response = await self.sender.post(METRICS_PATH, body, headers)
            except RelayUnavailable as exc:
                self.budget.on_response(ticket, None, anyio.current_time())
                self.metrics_dropped += 1
                logger.debug("metrics post failed", extra={**self._extra, "reason": str(exc)})
                continue
            info = RateLimitInfo.from_headers(response.headers)
            self.budget.on_response(ticket, info, anyio.current_time())
            if response.status == 200:
                self.metrics_sent += 1
                continue
            self.metrics_dropped += 1
            if response.status == 429:
                self.rate_limited += 1
                after = parse_retry_after(response.headers.get("retry-after"))
                if after is not None:
                    self.budget.hold(after, anyio.current_time())
            logger.debug(
                "metrics refused",
                extra={**self._extra, "status": response.status, "reason": response.reason},
            )

    async def _health_loop(self) -> None:
        while True:
            try:
                response = await self.sender.get(HEALTH_PATH)
            except RelayUnavailable as exc:
                self._set_health(False, str(exc))
            else:
                ok = response.status == 200
                self._set_health(ok, None if ok else f"health answered {response.status}")
            policy = self._health
            await self._health_kick.wait(
                policy.interval if self.healthy else policy.unhealthy_interval
            )

    def _set_health(self, healthy: bool, reason: str | None) -> None:
        was = self.healthy
        self.healthy, self.reason = healthy, reason
        if healthy and was is False:
            logger.info("relay healthy again", extra=self._extra)
            self._recovered.set()
        elif not healthy and was is not False:
            logger.warning("relay unhealthy", extra={**self._extra, "reason": reason})
            self._health_kick.set()  # poll every unhealthy_interval from now on
