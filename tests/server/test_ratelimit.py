"""The per-session moving window: in process, and through a ``limits`` storage."""

from __future__ import annotations

import pytest
from limits.aio.storage import MemoryStorage

from dualchannel.server.ratelimit import SessionRateLimiter, _MovingLog

pytestmark = pytest.mark.anyio


def test_moving_log_frees_one_slot_per_expired_hit() -> None:
    log = _MovingLog(3, 10.0)
    answers = [log.hit("s", t) for t in (0.0, 1.0, 2.0, 3.0)]
    assert [a.allowed for a in answers] == [True, True, True, False]
    assert [a.remaining for a in answers] == [2, 1, 0, 0]
    assert answers[-1].reset == 7  # the hit at 0.0 leaves the window at 10.0
    assert answers[-1].headers()["Retry-After"] == "7"
    assert log.hit("s", 10.0).allowed  # exactly one slot back
    assert not log.hit("s", 10.5).allowed
    assert log.peek("s", 11.5).remaining == 1  # the hit at 1.0 expired; peek spends none
    assert log.peek("other", 11.5).remaining == 3  # sessions are independent


def test_moving_log_forgets_idle_sessions() -> None:
    log = _MovingLog(2, 10.0)
    for index in range(100):
        log.hit(f"s{index}", 1.0)
    log.hit("late", 25.0)  # past the sweep time: every session idle for a window goes
    assert set(log._hits) == {"late"}


@pytest.mark.parametrize("storage", [None, "memory"])
async def test_in_process_and_limits_storage_agree(storage: str | None) -> None:
    limiter = SessionRateLimiter("5/minute", MemoryStorage() if storage else None)
    answers = [await limiter.hit("lesson-1") for _ in range(7)]
    assert [a.allowed for a in answers] == [True] * 5 + [False] * 2
    assert [a.remaining for a in answers] == [4, 3, 2, 1, 0, 0, 0]
    assert 59 <= answers[-1].reset <= 60
    assert (await limiter.peek("lesson-1")).remaining == 0
    assert (await limiter.peek("lesson-2")).remaining == 5
    assert (await limiter.peek(None)).allowed
    await limiter.close()
