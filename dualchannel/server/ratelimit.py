"""Per-session ingest rate limits: a moving window, in process by default.

Every ingest answer carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and
``RateLimit-Reset`` (seconds until the window frees a slot) so a publisher can pace
itself; a refusal adds ``Retry-After`` in whole seconds.

The rate is a ``limits`` string (``"100/minute"``). By default the window lives in this
process as one deque of hit times per session: a hit drops the expired times from the
front and appends its own, O(1) per request. (``limits``' in-memory moving window
inserts at the front of a list and needed a second call for the headers: together about
9% of an ingest request's CPU under load.) Give a ``limits`` async ``Storage`` (Redis,
say) to share the window between several relay processes; the semantics are the same.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from limits import RateLimitItem
from limits import parse as parse_rate
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter

__all__ = ["RateDecision", "SessionRateLimiter"]


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset))
        return headers


class _MovingLog:
    """Hit times per key within the last ``window`` seconds, oldest first."""

    def __init__(self, amount: int, window: float) -> None:
        self.amount = amount
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._next_sweep = 0.0

    def hit(self, key: str, now: float) -> RateDecision:
        log = self._current(key, now)
        allowed = len(log) < self.amount
        if allowed:
            log.append(now)
        return self._decision(log, allowed, now)

    def peek(self, key: str, now: float) -> RateDecision:
        return self._decision(self._current(key, now), True, now)

    def _current(self, key: str, now: float) -> deque[float]:
        if now >= self._next_sweep:
            self._sweep(now)
        log = self._hits.get(key)
        if log is None:
            log = self._hits[key] = deque()
        horizon = now - self.window
        while log and log[0] <= horizon:
            log.popleft()
        return log

    def _decision(self, log: deque[float], allowed: bool, now: float) -> RateDecision:
        reset = max(0, math.ceil(log[0] + self.window - now)) if log else 0
        return RateDecision(allowed, self.amount, self.amount - len(log), reset)

    def _sweep(self, now: float) -> None:
        """Forget sessions with no hit inside the window (once per window)."""
        horizon = now - self.window
        for key in [k for k, log in self._hits.items() if not log or log[-1] <= horizon]:
            del self._hits[key]
        self._next_sweep = now + self.window


class SessionRateLimiter:
    """``hit(session)`` consumes one request of the session's budget."""

    def __init__(self, rate: str, storage: Storage | None = None) -> None:
        self.item: RateLimitItem = parse_rate(rate)
        self.storage = storage
        self._limiter = MovingWindowRateLimiter(storage) if storage is not None else None
        self._log = _MovingLog(self.item.amount, float(self.item.get_expiry()))

    async def hit(self, session_id: str) -> RateDecision:
        if self._limiter is None:
            return self._log.hit(session_id, time.monotonic())
        allowed = await self._limiter.hit(self.item, "session", session_id)
        return await self._shared_decision(session_id, allowed)

    async def peek(self, session_id: str | None) -> RateDecision:
        """The session's budget without spending it (for answers refused before the hit)."""
        if session_id is None:
            return RateDecision(True, self.item.amount, self.item.amount, 0)
        if self._limiter is None:
            return self._log.peek(session_id, time.monotonic())
        return await self._shared_decision(session_id, True)

    async def _shared_decision(self, session_id: str, allowed: bool) -> RateDecision:
        assert self._limiter is not None
        stats = await self._limiter.get_window_stats(self.item, "session", session_id)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return RateDecision(allowed, self.item.amount, stats.remaining, reset)

    async def close(self) -> None:
        if self.storage is not None:
            await self.storage.reset()
