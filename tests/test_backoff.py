from __future__ import annotations

import random

import pytest

from dualchannel.protocol import (
    RetryDecision,
    RetryPolicy,
    backoff_delays,
    classify_status,
    parse_retry_after,
)


def test_full_jitter_stays_under_the_growing_ceiling() -> None:
    policy = RetryPolicy(initial=0.5, multiplier=2.0, max_delay=4.0, max_attempts=8)
    delays = list(backoff_delays(policy, rng=random.Random(7)))
    assert len(delays) == 7  # the first attempt waits for nothing
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed ladder


def test_unbounded_policy_keeps_yielding() -> None:
    gen = backoff_delays(RetryPolicy(max_delay=1.0), rng=random.Random(1))
    assert all(0 <= next(gen) <= 1.0 for _ in range(1000))


@pytest.mark.parametrize(
    ("status", "decision"),
    [
        (200, RetryDecision.SUCCESS),
        (204, RetryDecision.SUCCESS),
        (400, RetryDecision.FATAL),
        (401, RetryDecision.FATAL),
        (413, RetryDecision.FATAL),
        (415, RetryDecision.FATAL),
        (408, RetryDecision.RETRY),
        (429, RetryDecision.RETRY),
        (500, RetryDecision.RETRY),
        (503, RetryDecision.RETRY),
    ],
)
def test_status_classification(status: int, decision: RetryDecision) -> None:
    assert classify_status(status) is decision


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 1.5 ", 1.5),
        ("-3", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("100000", 300.0),
    ],
)
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="initial"):
        RetryPolicy(initial=0)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
