"""DualChannelPublisher against the in-memory twins: MemoryHub (LiveKit) and MemoryRelay."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from standardwebhooks.webhooks import Webhook

from dualchannel.channels.livekit import MemoryHub, MemoryLink
from dualchannel.channels.webhook import MemoryRelay
from dualchannel.envelope import Envelope, MessageType
from dualchannel.errors import (
    ClosedError,
    ConfigurationError,
    EnvelopeError,
    OutboxFull,
    RelayAuthError,
    RelayRejected,
    WouldBlock,
)
from dualchannel.publisher import (
    DeliveryFailure,
    DualChannelPublisher,
    HealthPolicy,
    HeartbeatPolicy,
    OutboxPolicy,
    PrimaryPolicy,
    RetryPolicy,
)
from dualchannel.signing import generate_secret
from tests.timing import bound

SESSION = "lesson-42"
FAST_RETRY = RetryPolicy(initial=0.02, max_delay=0.1)
SEG = [{"type": "math", "content": "x² + 1", "confidence": 0.97}]


class Viewer:
    """The other end of the hub: what a subscriber's LiveKit link would receive."""

    def __init__(self, link: MemoryLink) -> None:
        self.envelopes: list[Envelope] = []
        link.set_handlers(
            lambda payload, _sender: self.envelopes.append(Envelope.from_bytes(payload))
        )

    def seqs(self) -> list[int]:
        return [e.seq for e in self.envelopes if not e.is_heartbeat]

    def heartbeats(self) -> list[int]:
        return [e.seq for e in self.envelopes if e.is_heartbeat]


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    with anyio.fail_after(bound(within)):
        while not predicate():
            await anyio.sleep(0.01)


@asynccontextmanager
async def rig(
    relay: MemoryRelay | None = None, **options: Any
) -> AsyncIterator[tuple[DualChannelPublisher, MemoryRelay, MemoryLink, Viewer]]:
    relay = relay if relay is not None else MemoryRelay()
    hub = MemoryHub()
    link, viewer = hub.link("agent"), Viewer(hub.link("viewer"))
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("rng", random.Random(7))
    publisher = DualChannelPublisher(
        SESSION, link=link, relay_url="http://relay.test", transport=relay.transport, **options
    )
    async with publisher:
        yield publisher, relay, link, viewer


def stored(relay: MemoryRelay) -> list[int]:
    return [m["seq"] for m in relay.messages(SESSION)]


@pytest.mark.anyio
async def test_every_message_arrives_once_in_order_on_both_channels() -> None:
    async with rig() as (publisher, relay, _link, viewer):
        sent = [await publisher.send_transcript(SEG) for _ in range(40)]
        await until(lambda: len(stored(relay)) == 40 and len(viewer.seqs()) == 40)
    report = await publisher.aclose()
    assert [e.seq for e in sent] == list(range(1, 41))
    assert {e.epoch for e in sent} == {publisher.epoch}
    assert stored(relay) == list(range(1, 41))
    assert viewer.seqs() == list(range(1, 41))
    first = next(e for e in viewer.envelopes if not e.is_heartbeat)
    assert first.to_bytes() == sent[0].to_bytes()  # the same bytes on the wire
    assert report.complete
    stats = report.stats
    assert (stats.messages, stats.primary.acknowledged, stats.secondary.acknowledged) == (
        40,
        40,
        40,
    )
    assert stats.secondary.queued == stats.primary.queued == 0
    assert stats.rate_limited == 0


@pytest.mark.anyio
async def test_sending_never_waits_on_the_relay_or_livekit() -> None:
    async with rig(MemoryRelay(delay=1.0)) as (publisher, relay, link, _viewer):
        link.publish_delay = 0.8  # under PrimaryPolicy.publish_timeout: slow, not failed
        with anyio.fail_after(bound(0.5)):
            for _ in range(5):
                await publisher.send_transcript(SEG)
        assert publisher.stats().secondary.queued == 5
        assert publisher.stats().primary.acknowledged == 0
        link.publish_delay = relay.delay = 0.0


@pytest.mark.anyio
async def test_heartbeats_carry_the_last_seq_on_the_primary_channel() -> None:
    async with rig(heartbeat=HeartbeatPolicy(interval=0.05)) as (publisher, _relay, _link, viewer):
        await until(lambda: len(viewer.heartbeats()) >= 2)
        await publisher.send_transcript(SEG)
        await until(lambda: viewer.heartbeats()[-1] == 1)
    assert viewer.heartbeats()[0] == 0
    assert all(e.epoch == publisher.epoch for e in viewer.envelopes)
    assert publisher.stats().heartbeats >= 3


@pytest.mark.anyio
async def test_livekit_failures_never_reach_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    async with rig(primary=PrimaryPolicy(publish_timeout=0.05)) as (publisher, relay, link, viewer):
        link.fail_publishes = True
        for _ in range(3):
            await publisher.send_transcript(SEG)
        await until(lambda: publisher.stats().primary.failed == 3 and len(stored(relay)) == 3)
        assert publisher.health().primary_ok is False
        link.fail_publishes, link.publish_delay = False, 1.0  # now a stalled one
        publisher.send_transcript_nowait(SEG)
        await until(lambda: publisher.stats().primary.failed == 4 and len(stored(relay)) == 4)
        link.publish_delay = 0.0
        await publisher.send_transcript(SEG)
        await until(lambda: viewer.seqs() == [5])
        assert publisher.health().primary_ok is True
    warnings = [
        r
        for r in caplog.records
        if r.name == "dualchannel.publisher" and "livekit publish failed" in r.getMessage()
    ]
    assert warnings[0].levelname == "WARNING"
    assert warnings[0].seq == 1  # type: ignore[attr-defined]
    assert stored(relay) == [1, 2, 3, 4, 5]


@pytest.mark.anyio
async def test_backlog_drains_critical_first_then_in_seq_order_in_batches() -> None:
    async with rig(outbox=OutboxPolicy(batch_max=2)) as (publisher, relay, _link, _viewer):
        # All queued before the drain task runs: the first batch sees the whole backlog.
        publisher.send_transcript_nowait(SEG)
        publisher.send_transcript_nowait(SEG)
        publisher.send_event_nowait("board_cleared", {"by": "teacher"}, priority="high")
        publisher.send_transcript_nowait(SEG, priority="critical")
        publisher.send_transcript_nowait(SEG)
        await until(lambda: len(stored(relay)) == 5)
    assert stored(relay) == [4, 3, 1, 2, 5]
    bodies = [json.loads(r.body) for r in relay.requests if r.path == "/api/transcription"]
    assert [len(b) if isinstance(b, list) else 1 for b in bodies] == [2, 2, 1]
    event = relay.messages(SESSION)[1]
    assert (event["type"], event["data"]) == (
        "event",
        {"name": "board_cleared", "data": {"by": "teacher"}},
    )


@pytest.mark.anyio
async def test_a_relay_outage_is_retried_until_everything_is_stored() -> None:
    relay = MemoryRelay(down=True)
    async with rig(relay, health=HealthPolicy(unhealthy_interval=0.05)) as (publisher, _, _l, _v):
        for _ in range(20):
            await publisher.send_transcript(SEG)
        await until(lambda: publisher.health().relay_healthy is False)
        await until(lambda: publisher.stats().secondary.retried > 0)
        assert "memory relay is down" in (publisher.health().relay_reason or "")
        relay.down = False
        await until(lambda: len(stored(relay)) == 20)
        await until(lambda: publisher.health().relay_healthy is True)
    assert stored(relay) == list(range(1, 21))
    posts = [r for r in relay.requests if r.path == "/api/transcription"]
    assert int(posts[0].headers["x-retry-attempt"]) > 0  # the relay saw a retry succeed
    assert len(posts) <= 3  # the backlog went out in batches, not 20 requests


@pytest.mark.anyio
async def test_a_429_storm_is_waited_out_with_the_same_webhook_id() -> None:
    relay = MemoryRelay()
    relay.fail_next(429, times=2, retry_after=1)
    async with rig(relay, webhook_secret=generate_secret()) as (publisher, _r, _l, _v):
        await publisher.send_transcript(SEG)
        await until(lambda: len(stored(relay)) == 1)
    posts = [r for r in relay.requests if r.path == "/api/transcription"]
    assert [r.status for r in posts] == [429, 429, 200]
    assert [r.headers["x-retry-attempt"] for r in posts] == ["0", "1", "2"]
    assert len({r.headers["webhook-id"] for r in posts}) == 1
    gaps = [b.at - a.at for a, b in itertools.pairwise(posts)]
    assert all(gap >= 0.99 for gap in gaps), gaps  # Retry-After: 1 obeyed
    assert publisher.stats().rate_limited == 2


@pytest.mark.anyio
async def test_a_refused_message_is_reported_and_its_neighbours_delivered() -> None:
    failures: list[DeliveryFailure] = []
    relay = MemoryRelay(reject=lambda item: "seq 3 is bad" if item["seq"] == 3 else None)
    async with rig(relay, on_failure=failures.append) as (publisher, _r, _l, _v):
        for _ in range(6):
            publisher.send_transcript_nowait(SEG)
        await until(lambda: publisher.stats().secondary.queued == 0)
    assert stored(relay) == [1, 2, 4, 5, 6]
    assert len(failures) == 1
    (failure,) = failures
    assert [e.seq for e in failure.envelopes] == [3]
    assert (failure.status, failure.reason) == (400, "seq 3 is bad")
    assert isinstance(failure.error, RelayRejected)
    assert publisher.stats().secondary.failed == 1


@pytest.mark.anyio
async def test_a_wrong_secret_is_reported_as_an_auth_error() -> None:
    failures: list[DeliveryFailure] = []
    relay = MemoryRelay(secret=generate_secret())
    async with rig(relay, webhook_secret=generate_secret(), on_failure=failures.append) as (
        publisher,
        _r,
        _l,
        _v,
    ):
        publisher.send_transcript_nowait(SEG)
        publisher.send_transcript_nowait(SEG)
        await until(lambda: bool(failures))
    assert [e.seq for e in failures[0].envelopes] == [1, 2]
    assert isinstance(failures[0].error, RelayAuthError)
    assert stored(relay) == []


@pytest.mark.anyio
async def test_signed_webhooks_verify_with_the_reference_library() -> None:
    secret = generate_secret()
    relay = MemoryRelay(secret=secret)
    async with rig(relay, webhook_secret=secret) as (publisher, _r, _l, _v):
        for _ in range(3):
            await publisher.send_transcript(SEG)
            await anyio.sleep(0.02)
        await until(lambda: len(stored(relay)) == 3)
    for request in relay.requests:
        if request.method == "POST":
            Webhook(secret).verify(request.body, dict(request.headers))


@pytest.mark.anyio
async def test_a_full_outbox_waits_then_raises_and_nothing_is_half_sent() -> None:
    relay = MemoryRelay(down=True)
    policy = OutboxPolicy(max_messages=3, put_timeout=0.2)
    async with rig(relay, outbox=policy) as (publisher, _r, _link, viewer):
        for _ in range(3):
            await publisher.send_transcript(SEG)
        with pytest.raises(WouldBlock):
            publisher.send_transcript_nowait(SEG)
        started = anyio.current_time()
        with pytest.raises(OutboxFull, match="stayed full"):
            await publisher.send_transcript(SEG)
        assert anyio.current_time() - started >= 0.19
        assert publisher.last_seq == 3
        assert publisher.stats().outbox_full == 2
        await until(lambda: len(viewer.seqs()) == 3)
        # Room comes back when the relay does; a waiting send then goes through.
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.send_transcript, SEG)
            await anyio.sleep(0.05)
            relay.down = False
        await until(lambda: len(stored(relay)) == 4)
    assert viewer.seqs() == [1, 2, 3, 4]
    assert stored(relay) == [1, 2, 3, 4]


@pytest.mark.anyio
async def test_close_drains_within_its_deadline_and_reports_what_remained() -> None:
    failures: list[DeliveryFailure] = []
    relay = MemoryRelay(down=True)
    async with rig(relay, on_failure=failures.append) as (publisher, _r, _l, _v):
        for _ in range(3):
            await publisher.send_transcript(SEG)
        started = anyio.current_time()
        report = await publisher.aclose(drain_timeout=0.3)
        assert anyio.current_time() - started < bound(1.0)
    assert [e.seq for e in report.undelivered] == [1, 2, 3]
    assert not report.complete
    assert [e.seq for e in failures[0].envelopes] == [1, 2, 3]
    assert failures[0].status is None
    assert report.stats.secondary.failed == 3
    assert await publisher.aclose() is report


@pytest.mark.anyio
async def test_close_waits_for_a_relay_that_comes_back() -> None:
    relay = MemoryRelay(down=True)
    async with rig(relay) as (publisher, _r, _l, _v):
        for _ in range(5):
            await publisher.send_transcript(SEG)

        async def recover() -> None:
            await anyio.sleep(0.2)
            relay.down = False

        async with anyio.create_task_group() as tg:
            tg.start_soon(recover)
            report = await publisher.aclose(drain_timeout=bound(5.0))
    assert report.complete
    assert stored(relay) == [1, 2, 3, 4, 5]


@pytest.mark.anyio
async def test_pacing_from_ratelimit_headers_never_provokes_a_429() -> None:
    # 10 requests per 2 s and 25 messages a second for 3 s: only batching keeps it under.
    relay = MemoryRelay(limit=10, window=2.0)
    async with rig(relay, outbox=OutboxPolicy(rate_margin=0.05)) as (publisher, _r, _l, _v):
        for _ in range(75):
            await publisher.send_transcript(SEG)
            await anyio.sleep(0.04)
        await until(lambda: len(stored(relay)) == 75, within=10.0)
    assert 429 not in relay.statuses()
    assert stored(relay) == list(range(1, 76))
    assert publisher.stats().rate_limited == 0


@pytest.mark.anyio
async def test_metrics_are_posted_best_effort_with_session_totals() -> None:
    async with rig() as (publisher, relay, _link, _viewer):
        await publisher.send_transcript([{"content": "abc"}, {"content": "de"}])
        await publisher.send_metrics({"latency_ms": 12})
        await until(lambda: len(relay.metrics) == 1)
    (posted,) = relay.metrics
    assert posted["sessionId"] == SESSION
    assert posted["source"] == "livekit-agent"
    assert posted["metrics"] == {
        "segments_processed": 2,
        "total_characters": 5,
        "delivery_channels": ["livekit", "webhook"],
        "latency_ms": 12,
    }
    assert publisher.stats().metrics_sent == 1


@pytest.mark.anyio
async def test_lifecycle_is_owned_and_reuse_is_refused() -> None:
    publisher = DualChannelPublisher(SESSION, link=MemoryHub().link("a"))
    with pytest.raises(ClosedError, match="not open"):
        publisher.send_transcript_nowait(SEG)
    async with publisher:
        with pytest.raises(EnvelopeError):
            await publisher.send_transcript([{"content": "x", "confidence": 2.0}])
        assert publisher.last_seq == 0  # a refused envelope uses no seq
        await publisher.send_transcript(SEG)
    with pytest.raises(ClosedError, match="closed"):
        await publisher.send_transcript(SEG)
    with pytest.raises(ClosedError):
        await publisher.__aenter__()
    assert publisher.health().relay_healthy is None


def test_configuration_is_checked_up_front() -> None:
    with pytest.raises(ConfigurationError, match="room=/link="):
        DualChannelPublisher(SESSION)
    with pytest.raises(ConfigurationError, match="not both"):
        DualChannelPublisher(SESSION, room=object(), link=MemoryHub().link("a"))  # type: ignore[arg-type]
    with pytest.raises(EnvelopeError, match="session_id"):
        DualChannelPublisher("bad session/id", relay_url="http://relay.test")
    with pytest.raises(ConfigurationError):
        HeartbeatPolicy(interval=0)


@pytest.mark.anyio
async def test_webhook_only_publisher() -> None:
    relay = MemoryRelay()
    async with DualChannelPublisher(
        SESSION, relay_url="http://relay.test", transport=relay.transport, epoch=5
    ) as publisher:
        envelope = await publisher.send_transcript(SEG, speaker="student")
        await until(lambda: len(stored(relay)) == 1)
    assert envelope.type is MessageType.TRANSCRIPT
    assert relay.messages(SESSION)[0]["epoch"] == 5
    assert relay.messages(SESSION)[0]["data"]["speaker"] == "student"
    assert publisher.health().primary_state is None


@pytest.mark.anyio
async def test_aclose_inside_async_with_leaves_the_callers_code_running() -> None:
    async with DualChannelPublisher("lesson-42", link=MemoryHub().link("agent")) as publisher:
        report = await publisher.aclose()
        await anyio.sleep(0.01)  # not cancelled
        assert report.complete
        with pytest.raises(ClosedError):
            await publisher.send_transcript([{"content": "late"}])
