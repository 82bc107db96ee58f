"""The webhook outbox and its rate budget: pure, synchronous, time as an argument.

Theory of operation
-------------------
Every message bound for the relay waits in the :class:`Outbox` until the relay has
answered 200 for it (or refused it for good). The outbox keeps one FIFO per priority;
since ``seq`` only grows, each FIFO is in ``seq`` order, and :meth:`Outbox.peek_batch`
takes critical first, then high, then normal. Entries stay in the outbox while their POST
is in flight and leave only through :meth:`Outbox.remove`, so a crash of the drain loop or
a failed POST can never lose one.

:class:`RateBudget` turns the relay's ``RateLimit-Limit`` / ``RateLimit-Remaining`` /
``RateLimit-Reset`` answers into "how long must the next request wait", so the publisher
never provokes a 429:

- requests in flight are subtracted from what the relay last said remained;
- while some budget remains, requests are spread evenly over the time until the window
  frees (``gap = (reset_at - last_send) / (remaining + 1)``), which makes a busy session
  send fewer, larger batches instead of burning its budget and then stalling;
- with nothing left, the next request waits until the window frees (plus a margin);
- a ``Retry-After`` (429/503) holds every request until it has passed.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..envelope import Envelope, Priority
from ..errors import ConfigurationError, WouldBlock

__all__ = ["Outbox", "OutboxEntry", "OutboxPolicy", "RateBudget", "RateLimitInfo"]

_DRAIN_ORDER = (Priority.CRITICAL, Priority.HIGH, Priority.NORMAL)
_POLL = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxPolicy:
    """How the webhook outbox holds and sends messages.

    ``max_messages`` bounds the outbox; when it is full, ``send_*`` waits up to
    ``put_timeout`` seconds for room and then raises :class:`~dualchannel.errors.OutboxFull`
    (``send_*_nowait`` raises :class:`~dualchannel.errors.WouldBlock` at once). A POST carries
    at most ``batch_max`` envelopes (the relay takes 100) and about ``batch_max_bytes``.
    Closing waits up to ``drain_timeout`` seconds for the outbox to empty.
    ``rate_margin`` is added to the relay's ``RateLimit-Reset`` before reusing the budget.
    ``metrics_max`` bounds the best-effort metrics queue (oldest dropped first).
    """

    max_messages: int = 10_000
    put_timeout: float = 5.0
    batch_max: int = 100
    batch_max_bytes: int = 256_000
    drain_timeout: float = 5.0
    rate_margin: float = 0.1
    metrics_max: int = 100

    def __post_init__(self) -> None:
        if self.max_messages < 1 or not 1 <= self.batch_max <= 100:
            raise ConfigurationError(
                "OutboxPolicy needs max_messages >= 1 and 1 <= batch_max <= 100"
            )
        if self.put_timeout < 0 or self.drain_timeout < 0 or self.rate_margin < 0:
            raise ConfigurationError("OutboxPolicy timeouts and margin must be >= 0")
        if self.batch_max_bytes < 1 or self.metrics_max < 1:
            raise ConfigurationError("OutboxPolicy batch_max_bytes and metrics_max must be >= 1")


@dataclass(slots=True, eq=False)
class OutboxEntry:
    """One message waiting for the relay: the envelope and its encoded bytes."""

    envelope: Envelope
    body: bytes
    queued_at: float
    attempts: int = field(default=0)


class Outbox:
    """A bounded set of messages awaiting the relay, drained by priority then ``seq``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queues: dict[Priority, collections.deque[OutboxEntry]] = {
            p: collections.deque() for p in _DRAIN_ORDER
        }
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def free(self) -> int:
        return self.capacity - self._size

    def put_nowait(self, envelope: Envelope, body: bytes, *, now: float) -> OutboxEntry:
        """Queue a message; raise :class:`WouldBlock` when the outbox is full."""
        if self._size >= self.capacity:
            raise WouldBlock(f"the webhook outbox is full ({self.capacity} messages)")
        entry = OutboxEntry(envelope, body, now)
        self._queues[envelope.priority].append(entry)
        self._size += 1
        return entry

    def peek_batch(self, max_messages: int, max_bytes: int) -> list[OutboxEntry]:
        """The next batch to send (left in the outbox): priority order, then seq order.

        Always returns at least one entry when the outbox is not empty, however large.
        """
        batch: list[OutboxEntry] = []
        size = 2  # the brackets of a JSON array
        for priority in _DRAIN_ORDER:
            for entry in self._queues[priority]:
                if len(batch) >= max_messages or (batch and size + len(entry.body) > max_bytes):
                    return batch
                batch.append(entry)
                size += len(entry.body) + 1
        return batch

    def remove(self, entries: Iterable[OutboxEntry]) -> None:
        """Take entries out for good (delivered, or refused and reported)."""
        for entry in entries:
            queue = self._queues[entry.envelope.priority]
            if queue and queue[0] is entry:
                queue.popleft()
            else:
                try:
                    queue.remove(entry)
                except ValueError:
                    continue
            self._size -= 1

    def clear(self) -> list[OutboxEntry]:
        """Empty the outbox, returning what was in it in drain order."""
        left = [entry for priority in _DRAIN_ORDER for entry in self._queues[priority]]
        for queue in self._queues.values():
            queue.clear()
        self._size = 0
        return left


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """The relay's ``RateLimit-*`` answer: the limit, what remains, seconds until it frees."""

    limit: int
    remaining: int
    reset: float

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitInfo | None:
        """Read the three headers (any case); ``None`` if any is missing or malformed."""
        lower = {k.lower(): v for k, v in headers.items()}
        try:
            limit = int(lower["ratelimit-limit"])
            remaining = int(lower["ratelimit-remaining"])
            reset = float(lower["ratelimit-reset"])
        except (KeyError, ValueError):
            return None
        if limit < 0 or reset < 0 or reset != reset:
            return None
        return cls(limit, max(0, remaining), reset)


class RateBudget:
    """Paces requests from the relay's rate-limit answers (see the module docstring)."""

    def __init__(self, *, margin: float = 0.1) -> None:
        self.margin = margin
        self.limit: int | None = None
        self.remaining = 0
        self.reset_at = 0.0
        self.in_flight = 0
        self.last_sent = float("-inf")
        self.hold_until = float("-inf")
        self._tickets = 0
        self._applied = 0

    def on_send(self, now: float) -> int:
        """Account for a request going out; returns a ticket for :meth:`on_response`."""
        self.in_flight += 1
        self.remaining -= 1
        self.last_sent = now
        self._tickets += 1
        return self._tickets

    def on_response(self, ticket: int, info: RateLimitInfo | None, now: float) -> None:
        """Account for an answer (``info`` from its headers), or a failure (``None``)."""
        self.in_flight = max(0, self.in_flight - 1)
        if info is None or ticket < self._applied:
            return
        self._applied = ticket
        self.limit = info.limit
        # Requests still in flight may not be counted in this answer yet: assume they will be.
        self.remaining = info.remaining - self.in_flight
        self.reset_at = now + info.reset

    def hold(self, seconds: float, now: float) -> None:
        """Send nothing for ``seconds`` (a ``Retry-After``)."""
        self.hold_until = max(self.hold_until, now + seconds)

    def delay(self, now: float, *, reserve: int = 0) -> float:
        """Seconds to wait before the next request may go out (0.0: now).

        ``reserve`` keeps that many requests back: best-effort traffic (metrics) passes a
        reserve so it never takes the budget transcripts need.
        """
        wait = max(0.0, self.hold_until - now)
        if self.limit is None:  # the relay has not told us its limit (yet)
            return wait if reserve == 0 or self.in_flight == 0 else max(wait, _POLL)
        available = self.remaining - reserve
        if available > 0:
            span = max(0.0, self.reset_at - self.last_sent)
            return max(wait, self.last_sent + span / (available + 1) - now, 0.0)
        freed_at = self.reset_at + self.margin
        if now < freed_at:
            return max(wait, freed_at - now)
        if self.in_flight == 0:
            return wait  # the window has freed a slot since the last answer: probe it
        return max(wait, _POLL)  # wait for the answer in flight to tell us more
