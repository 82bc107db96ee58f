"""The pure outbox and rate budget, driven with plain numbers for time."""

from __future__ import annotations

import pytest

from dualchannel.channels.outbox import Outbox, OutboxPolicy, RateBudget, RateLimitInfo
from dualchannel.envelope import Envelope, Priority
from dualchannel.errors import ConfigurationError, WouldBlock


def env(seq: int, priority: Priority = Priority.NORMAL) -> Envelope:
    return Envelope.transcript(
        session_id="s1",
        epoch=1,
        seq=seq,
        segments=[{"content": f"m{seq}"}],
        speaker="teacher",
        priority=priority,
    )


def fill(outbox: Outbox, *envelopes: Envelope) -> None:
    for e in envelopes:
        outbox.put_nowait(e, e.to_bytes(), now=0.0)


def test_batches_drain_critical_first_then_seq_order() -> None:
    outbox = Outbox(10)
    fill(
        outbox,
        env(1),
        env(2, Priority.HIGH),
        env(3, Priority.CRITICAL),
        env(4),
        env(5, Priority.CRITICAL),
    )
    batch = outbox.peek_batch(10, 10_000)
    assert [e.envelope.seq for e in batch] == [3, 5, 2, 1, 4]
    assert len(outbox) == 5  # peeking leaves them in place
    outbox.remove(batch[:2])
    assert [e.envelope.seq for e in outbox.peek_batch(2, 10_000)] == [2, 1]


def test_batch_limits_count_and_bytes_but_always_takes_one() -> None:
    outbox = Outbox(10)
    fill(outbox, *(env(i) for i in range(1, 6)))
    assert len(outbox.peek_batch(3, 10_000)) == 3
    one = len(env(1).to_bytes())
    assert len(outbox.peek_batch(100, 2 * one + 4)) == 2
    assert len(outbox.peek_batch(100, 1)) == 1


def test_full_outbox_would_block_and_remove_frees_room() -> None:
    outbox = Outbox(2)
    fill(outbox, env(1), env(2))
    assert outbox.free == 0
    with pytest.raises(WouldBlock, match="full"):
        outbox.put_nowait(env(3), b"{}", now=0.0)
    entry = outbox.peek_batch(1, 100)
    outbox.remove(entry)
    outbox.remove(entry)  # removing twice is harmless
    assert outbox.free == 1
    assert [e.envelope.seq for e in outbox.clear()] == [2]
    assert len(outbox) == 0


def test_policy_validation() -> None:
    with pytest.raises(ConfigurationError):
        OutboxPolicy(batch_max=101)
    with pytest.raises(ConfigurationError):
        OutboxPolicy(max_messages=0)
    with pytest.raises(ConfigurationError):
        OutboxPolicy(put_timeout=-1)


def test_rate_limit_headers_parse() -> None:
    headers = {"RateLimit-Limit": "100", "ratelimit-remaining": "7", "RateLimit-Reset": "12"}
    assert RateLimitInfo.from_headers(headers) == RateLimitInfo(100, 7, 12.0)
    assert RateLimitInfo.from_headers({"RateLimit-Limit": "100"}) is None
    assert RateLimitInfo.from_headers({**headers, "RateLimit-Reset": "soon"}) is None


def test_budget_unknown_means_no_pacing() -> None:
    budget = RateBudget()
    assert budget.delay(0.0) == 0.0
    budget.on_response(budget.on_send(0.0), None, 0.1)
    assert budget.delay(0.2) == 0.0


def test_budget_spreads_the_remaining_requests_over_the_window() -> None:
    budget = RateBudget(margin=0.1)
    ticket = budget.on_send(0.0)
    budget.on_response(ticket, RateLimitInfo(100, 99, 60.0), 0.0)
    # 99 left for 60 s: one request every 0.6 s, so a 5 msg/s session batches ~3 per POST.
    assert budget.delay(0.0) == pytest.approx(0.6)
    assert budget.delay(0.5) == pytest.approx(0.1)
    assert budget.delay(0.7) == 0.0
    assert budget.delay(0.0, reserve=19) == pytest.approx(60 / 81)


def test_budget_exhausted_waits_for_the_window_then_probes() -> None:
    budget = RateBudget(margin=0.1)
    budget.on_response(budget.on_send(0.0), RateLimitInfo(100, 0, 2.0), 0.0)
    assert budget.delay(0.0) == pytest.approx(2.1)
    assert budget.delay(1.0) == pytest.approx(1.1)
    assert budget.delay(2.2) == 0.0  # the window freed a slot: one request may probe
    budget.on_send(2.2)
    assert budget.delay(2.3) > 0  # ...but not two while the probe is unanswered


def test_budget_counts_requests_in_flight() -> None:
    budget = RateBudget()
    budget.on_response(budget.on_send(0.0), RateLimitInfo(10, 2, 10.0), 0.0)
    first = budget.on_send(0.0)
    second = budget.on_send(0.0)
    assert budget.remaining == 0
    # The second answer arrives first and does not yet count the first request.
    budget.on_response(second, RateLimitInfo(10, 1, 10.0), 0.1)
    assert budget.remaining == 0
    # An older answer never overrides a newer one.
    budget.on_response(first, RateLimitInfo(10, 5, 10.0), 0.2)
    assert budget.remaining == 0
    assert budget.delay(0.2) == pytest.approx(9.9 + budget.margin)


def test_retry_after_holds_every_request() -> None:
    budget = RateBudget()
    budget.hold(3.0, now=10.0)
    budget.hold(1.0, now=10.0)  # a shorter hold never shortens a longer one
    assert budget.delay(11.0) == pytest.approx(2.0)
    assert budget.delay(13.0) == 0.0
