"""Retry decisions in one place: a pure backoff generator and one retryable-or-fatal rule.

Nothing here sleeps or reads a clock; randomness comes from an injectable ``random.Random``
so tests can fix it.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["RetryDecision", "RetryPolicy", "backoff_delays", "classify_status", "parse_retry_after"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter.

    The n-th delay (from 0) is drawn uniformly from ``[0, min(max_delay, initial * multiplier**n)]``
    (AWS's "full jitter"), so many clients retrying at once spread out instead of
    stampeding. ``max_attempts`` of ``None`` retries forever (the outbox's choice: a message
    is never dropped silently).
    """

    initial: float = 0.25
    multiplier: float = 2.0
    max_delay: float = 10.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.multiplier < 1 or self.max_delay < self.initial:
            raise ValueError(
                "RetryPolicy needs initial > 0, multiplier >= 1 and max_delay >= initial"
            )
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1 (or None)")


def backoff_delays(
    policy: RetryPolicy = RetryPolicy(), *, rng: random.Random | None = None
) -> Iterator[float]:
    """Yield the delays to wait before each retry, with full jitter.

    Stops after ``policy.max_attempts - 1`` delays (the first attempt needs none).
    """
    draw = (rng or random.Random()).uniform
    ceiling = policy.initial
    attempt = 1
    while policy.max_attempts is None or attempt < policy.max_attempts:
        yield draw(0.0, ceiling)
        ceiling = min(policy.max_delay, ceiling * policy.multiplier)
        attempt += 1


class RetryDecision(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"
    FATAL = "fatal"


def classify_status(status: int) -> RetryDecision:
    """What an HTTP status means for a webhook delivery.

    2xx succeeded. 408, 425, 429 and every 5xx are worth retrying (the relay is busy, slow
    or restarting). Any other 4xx is final for that message: the relay understood it and
    refused it, and sending it again would be refused again.
    """
    if 200 <= status < 300:
        return RetryDecision.SUCCESS
    if status in (408, 425, 429) or status >= 500:
        return RetryDecision.RETRY
    return RetryDecision.FATAL


def parse_retry_after(value: str | None, *, cap: float = 300.0) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; ``None`` if absent or odd.

    HTTP dates are not supported (the relay never sends them) and read as absent.
    """
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, cap)
