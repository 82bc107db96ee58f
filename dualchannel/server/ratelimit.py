"""Per-session ingest rate limits (``limits``, moving window, in-memory by default).

Every ingest answer carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and
``RateLimit-Reset`` (seconds until the window frees a slot) so a publisher can pace
itself; a refusal adds ``Retry-After`` in whole seconds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem
from limits import parse as parse_rate
from limits.aio.storage import MemoryStorage, Storage
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


class SessionRateLimiter:
    """``hit(session)`` consumes one request of the session's budget."""

    def __init__(self, rate: str, storage: Storage | None = None) -> None:
        self.item: RateLimitItem = parse_rate(rate)
        self.storage: Storage = storage if storage is not None else MemoryStorage()
        self._limiter = MovingWindowRateLimiter(self.storage)

    async def hit(self, session_id: str) -> RateDecision:
        allowed = await self._limiter.hit(self.item, "session", session_id)
        return await self._decision(session_id, allowed)

    async def peek(self, session_id: str | None) -> RateDecision:
        """The session's budget without spending it (for answers refused before the hit)."""
        if session_id is None:
            return RateDecision(True, self.item.amount, self.item.amount, 0)
        return await self._decision(session_id, True)

    async def _decision(self, session_id: str, allowed: bool) -> RateDecision:
        stats = await self._limiter.get_window_stats(self.item, "session", session_id)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return RateDecision(allowed, self.item.amount, stats.remaining, reset)

    async def close(self) -> None:
        await self.storage.reset()
