"""DualChannelPublisher against the real relay (``dualchannel serve`` under uvicorn).

Each test reads back what the relay stored through ``GET /api/sessions/{id}/messages``.
The full two-minute 5 msg/s run belongs to ``dualchannel bench``; here a time-compressed
version (limit window and message rate both scaled by 5) proves the pacing logic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from dualchannel.publisher import (
    DeliveryFailure,
    DualChannelPublisher,
    HealthPolicy,
    OutboxPolicy,
    RetryPolicy,
)
from dualchannel.server.process import RelayProcess
from dualchannel.signing import generate_secret
from tests.fixtures.relay import WEBHOOK_SECRET
from tests.timing import bound

SEG = [{"type": "text", "content": "Let us factor x² + 5x + 6."}]


async def stored(relay: RelayProcess, session_id: str) -> list[dict[str, Any]]:
    """Every message the relay holds for the session, in its order, across pages."""
    messages: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=relay.url, timeout=bound(5.0)) as client:
        after = 0
        while True:
            answer = await client.get(
                f"/api/sessions/{session_id}/messages",
                params={"after_seq": after, "limit": 1000},
            )
            answer.raise_for_status()
            page = answer.json()
            messages += page["messages"]
            if not page["hasMore"] or not page["messages"]:
                return messages
            after = page["messages"][-1]["seq"]


@pytest.mark.anyio
async def test_everything_arrives_exactly_once_in_seq_order(relay: RelayProcess) -> None:
    async with DualChannelPublisher(
        "relay-once", relay_url=relay.url, webhook_secret=WEBHOOK_SECRET
    ) as publisher:
        for i in range(150):
            priority = "high" if i % 10 == 0 else "normal"
            await publisher.send_transcript(SEG, priority=priority)
            if i % 25 == 0:
                await anyio.sleep(0.05)
        await publisher.send_metrics({"latency_ms": 40})
    report = publisher.stats()
    messages = await stored(relay, "relay-once")
    seqs = sorted(m["seq"] for m in messages)
    assert seqs == list(range(1, 151))  # every seq exactly once
    assert {m["epoch"] for m in messages} == {publisher.epoch}
    assert report.secondary.acknowledged == 150
    assert report.secondary.failed == 0
    assert report.rate_limited == 0
    assert report.requests < 150  # batched


@pytest.mark.anyio
async def test_a_wrong_secret_is_refused_and_reported(relay: RelayProcess) -> None:
    failures: list[DeliveryFailure] = []
    async with DualChannelPublisher(
        "relay-wrong-secret",
        relay_url=relay.url,
        webhook_secret=generate_secret(),
        on_failure=failures.append,
    ) as publisher:
        await publisher.send_transcript(SEG)
        with anyio.fail_after(bound(5.0)):
            while not failures:
                await anyio.sleep(0.02)
    (failure,) = failures
    assert failure.status == 401
    assert "signature" in failure.reason
    assert await stored(relay, "relay-wrong-secret") == []


@pytest.mark.anyio
async def test_the_relay_killed_for_ten_seconds_loses_nothing(relay: RelayProcess) -> None:
    """5 messages a second throughout; the relay is SIGKILLed and restarted 10 s later."""
    session = "relay-outage"
    async with DualChannelPublisher(
        session,
        relay_url=relay.url,
        webhook_secret=WEBHOOK_SECRET,
        retry=RetryPolicy(initial=0.1, max_delay=2.0),
        health=HealthPolicy(unhealthy_interval=0.5),
        outbox=OutboxPolicy(drain_timeout=bound(20.0)),
    ) as publisher:

        async def produce(seconds: float) -> None:
            for _ in range(int(seconds * 5)):
                await publisher.send_transcript(SEG)
                await anyio.sleep(0.2)

        await produce(2.0)
        await anyio.to_thread.run_sync(relay.kill)
        await produce(10.0)
        assert publisher.health().relay_healthy is False
        assert publisher.stats().secondary.queued > 0
        await anyio.to_thread.run_sync(relay.start)
        await produce(2.0)
    report = await publisher.aclose()
    assert report.complete
    seqs = sorted(m["seq"] for m in await stored(relay, session))
    assert seqs == list(range(1, publisher.last_seq + 1))
    assert publisher.last_seq == 70
    assert report.stats.secondary.retried > 0


@pytest.mark.anyio
async def test_paced_session_never_sees_a_429(tmp_path: Path) -> None:
    """5 msg/s for 2 min under 100 req/min, compressed 5x: 25 msg/s for 24 s under 100/12 s."""
    relay = RelayProcess(
        tmp_path / "paced.db",
        webhook_secret=WEBHOOK_SECRET,
        extra_args=["--rate-limit", "100/12 seconds"],
    )
    relay.start()
    try:
        async with DualChannelPublisher(
            "relay-paced",
            relay_url=relay.url,
            webhook_secret=WEBHOOK_SECRET,
            outbox=OutboxPolicy(drain_timeout=bound(15.0)),
        ) as publisher:
            started = anyio.current_time()
            for n in range(600):
                await publisher.send_transcript(SEG)
                # Keep the schedule (25/s) even if the loop runs late.
                await anyio.sleep(max(0.0, started + (n + 1) / 25 - anyio.current_time()))
                if n % 125 == 0:
                    await publisher.send_metrics()
        report = await publisher.aclose()
        seqs = sorted(m["seq"] for m in await stored(relay, "relay-paced"))
    finally:
        relay.kill()
    assert report.complete
    assert seqs == list(range(1, 601))
    assert report.stats.rate_limited == 0  # the relay never answered 429
    # It had to batch to stay under the limit: 24 s at 100 per 12 s allows ~300 requests.
    assert report.stats.requests <= 100 * (24 / 12 + 1)
