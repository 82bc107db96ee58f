"""The webhook sender against the in-memory relay twin, and the twin's contract."""

from __future__ import annotations

import json

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from dualchannel import __version__
from dualchannel.channels.webhook import (
    AGENT_TYPE,
    HttpxWebhookSender,
    MemoryRelay,
    WebhookSender,
    webhook_headers,
)
from dualchannel.envelope import Envelope
from dualchannel.errors import RelayUnavailable
from dualchannel.signing import WebhookSigner, generate_secret

URL = "http://relay.test"


def body(*seqs: int, session: str = "s1") -> bytes:
    items = [
        Envelope.transcript(
            session_id=session, epoch=7, seq=s, segments=[{"content": "x"}], speaker="t"
        ).to_json_value()
        for s in seqs
    ]
    return json.dumps(items[0] if len(items) == 1 else items).encode()


@pytest.mark.anyio
async def test_post_stores_batches_idempotently_with_the_spec_headers() -> None:
    relay = MemoryRelay()
    sender = HttpxWebhookSender(URL, transport=relay.transport)
    assert isinstance(sender, WebhookSender)
    headers = webhook_headers(session_id="s1", attempt=0, body=body(1, 2), signer=None)
    first = await sender.post("/api/transcription", body(1, 2), headers)
    again = await sender.post("/api/transcription", body(2, 3), headers)
    await sender.aclose()
    assert first.status == 200
    assert first.json["processed"] == 2
    assert again.json["processed"] == 1
    assert again.json["duplicates"] == 1
    assert [m["seq"] for m in relay.messages("s1")] == [1, 2, 3]
    seen = relay.requests[0].headers
    assert seen["x-session-id"] == "s1"
    assert seen["x-retry-attempt"] == "0"
    assert seen["x-agent-type"] == AGENT_TYPE
    assert seen["x-agent-version"] == __version__
    assert seen["content-type"] == "application/json"
    assert first.headers["ratelimit-limit"] == "100"
    assert first.headers["ratelimit-remaining"] == "99"


@pytest.mark.anyio
async def test_signed_headers_verify_with_the_reference_library() -> None:
    secret = generate_secret()
    relay = MemoryRelay(secret=secret)
    sender = HttpxWebhookSender(URL, transport=relay.transport)
    payload = body(1)
    signed = webhook_headers(session_id="s1", attempt=2, body=payload, signer=WebhookSigner(secret))
    Webhook(secret).verify(payload, signed)
    ok = await sender.post("/api/transcription", payload, signed)
    unsigned = webhook_headers(session_id="s1", attempt=0, body=payload, signer=None)
    refused = await sender.post("/api/transcription", payload, unsigned)
    await sender.aclose()
    assert ok.status == 200
    assert refused.status == 401
    assert refused.json["error"] == "invalid_signature"
    assert "missing" in refused.reason


@pytest.mark.anyio
async def test_rate_limit_answers_429_with_retry_after() -> None:
    relay = MemoryRelay(limit=2, window=30.0)
    sender = HttpxWebhookSender(URL, transport=relay.transport)
    headers = webhook_headers(session_id="s1", attempt=0, body=body(1), signer=None)
    answers = [await sender.post("/api/transcription", body(1), headers) for _ in range(3)]
    await sender.aclose()
    assert [a.status for a in answers] == [200, 200, 429]
    assert answers[1].headers["ratelimit-remaining"] == "0"
    assert answers[2].headers["retry-after"] == "30"
    assert answers[2].reason == "rate limit exceeded"


@pytest.mark.anyio
async def test_faults_and_rejections_come_back_as_answers() -> None:
    relay = MemoryRelay(reject=lambda item: "seq 2 is bad" if item["seq"] == 2 else None)
    relay.fail_next(503, retry_after=2)
    sender = HttpxWebhookSender(URL, transport=relay.transport)
    headers = webhook_headers(session_id="s1", attempt=0, body=b"", signer=None)
    busy = await sender.post("/api/transcription", body(1), headers)
    bad = await sender.post("/api/transcription", body(1, 2), headers)
    wrong_session = await sender.post("/api/transcription", body(1, session="other"), headers)
    relay.healthy = False
    health = await sender.get("/api/health")
    await sender.aclose()
    assert (busy.status, busy.headers["retry-after"]) == (503, "2")
    assert (bad.status, bad.reason) == (400, "seq 2 is bad")
    assert bad.json["details"] == [{"index": 1, "reason": "seq 2 is bad"}]
    assert wrong_session.status == 400
    assert health.status == 503
    assert relay.messages("s1") == []


@pytest.mark.anyio
async def test_no_answer_becomes_relay_unavailable() -> None:
    relay = MemoryRelay(down=True)
    sender = HttpxWebhookSender(URL, transport=relay.transport)
    with pytest.raises(RelayUnavailable, match="failed") as caught:
        await sender.get("/api/health")
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    relay.down, relay.delay = False, 1.0
    slow = HttpxWebhookSender(URL, transport=relay.transport, timeout=0.05)
    with pytest.raises(RelayUnavailable, match="timed out"):
        await slow.post("/api/transcription", body(1), {"X-Session-ID": "s1"})
    await sender.aclose()
    await slow.aclose()


@pytest.mark.anyio
async def test_refused_connection_on_loopback_is_relay_unavailable() -> None:
    from dualchannel.server.process import free_port

    sender = HttpxWebhookSender(f"http://127.0.0.1:{free_port()}", timeout=2.0)
    with pytest.raises(RelayUnavailable) as caught:
        await sender.get("/api/health")
    await sender.aclose()
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


@pytest.mark.anyio
async def test_a_shared_client_is_not_closed() -> None:
    relay = MemoryRelay()
    async with httpx.AsyncClient(transport=relay.transport) as client:
        sender = HttpxWebhookSender(URL + "/", client=client)
        await sender.aclose()
        answer = await sender.get("/api/health")
        assert answer.status == 200
        assert repr(sender) == "HttpxWebhookSender('http://relay.test')"
