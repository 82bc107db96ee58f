"""POST /api/transcription and /api/metrics against the real app (ASGI, real SQLite)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from dualchannel import Envelope
from tests.fixtures.relay import WEBHOOK_SECRET
from tests.timing import bound

from .conftest import JSON, asgi_client, batch_body, envelope, make_app, signed, state

pytestmark = pytest.mark.anyio

RATE_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], list)
    for header in RATE_HEADERS:
        assert header in response.headers, f"{header} missing on {status}"
    return dict(body)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


async def post(client: httpx.AsyncClient, body: bytes, **headers: str) -> httpx.Response:
    return await client.post(
        "/api/transcription", content=body, headers={**signed(body), **headers}
    )


async def test_accepts_one_envelope_and_counts_a_repeat_as_duplicate(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    body = envelope(seq=1).to_bytes()
    first = await post(client, body, **{"X-Session-ID": "lesson-1", "X-Retry-Attempt": "0"})
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["success"] is True
    assert (answer["processed"], answer["duplicates"]) == (1, 0)
    assert answer["id"] and answer["timestamp"].endswith("Z")
    assert first.headers["ratelimit-limit"] == "100"
    assert first.headers["ratelimit-remaining"] == "99"
    assert 0 < int(first.headers["ratelimit-reset"]) <= 60

    again = await post(client, body, **{"X-Retry-Attempt": "2"})
    assert again.status_code == 200
    assert (again.json()["processed"], again.json()["duplicates"]) == (0, 1)

    stored = await state(app).store.replay("lesson-1", 0, 10)
    assert [m.seq for m in stored] == [1]
    assert stored[0].payload == body.decode()  # stored exactly as Envelope.to_bytes()


async def test_batch_is_idempotent_per_envelope(client: httpx.AsyncClient, app: Starlette) -> None:
    first = await post(client, batch_body([envelope(seq=s) for s in (1, 2, 3)]))
    assert (first.json()["processed"], first.json()["duplicates"]) == (3, 0)
    # 2 and 3 again, 4 new, and 4 twice within the same batch.
    second = await post(client, batch_body([envelope(seq=s) for s in (2, 3, 4, 4)]))
    assert second.status_code == 200
    assert (second.json()["processed"], second.json()["duplicates"]) == (1, 3)
    stored = await state(app).store.replay("lesson-1", 0, 100)
    assert [m.seq for m in stored] == [1, 2, 3, 4]
    assert [m.id for m in stored] == sorted(m.id for m in stored)


async def test_bad_json_is_400_with_details(client: httpx.AsyncClient) -> None:
    body = assert_error(await post(client, b'{"type": '), 400, "invalid_json")
    assert body["details"][0]["field"] == "<json>"  # type: ignore[index]
    bare_nan = envelope("lesson-1", 9).to_bytes().replace(b'"hi"', b"NaN")
    body = assert_error(await post(client, bare_nan), 400, "invalid_json")
    assert "NaN is not a JSON value" in body["details"][0]["rule"]  # type: ignore[index]
    in_a_string = envelope("lesson-1", 9, text="NaN").to_bytes()
    assert (await post(client, in_a_string)).status_code == 200


async def test_bad_envelope_names_field_and_rule(client: httpx.AsyncClient) -> None:
    value = envelope().to_json_value()
    value["seq"] = "one"
    del value["sessionId"]
    body = assert_error(await post(client, json.dumps([value]).encode()), 400, "invalid_envelope")
    fields = {d["field"] for d in body["details"]}  # type: ignore[attr-defined]
    assert {"[0].seq", "[0].sessionId"} <= fields


async def test_batch_rules(client: httpx.AsyncClient) -> None:
    too_many = batch_body([envelope(seq=s) for s in range(1, 102)])
    assert_error(await post(client, too_many), 400, "batch_too_large")
    assert_error(await post(client, b"[]"), 400, "empty_batch")
    mixed = batch_body([envelope("a", 1), envelope("b", 1)])
    assert_error(await post(client, mixed), 400, "mixed_sessions")
    mismatch = envelope("a", 1).to_bytes()
    assert_error(await post(client, mismatch, **{"X-Session-ID": "b"}), 400, "session_mismatch")
    beat = Envelope.heartbeat(session_id="lesson-1", epoch=1, last_seq=3).to_bytes()
    assert_error(await post(client, beat), 400, "heartbeat_not_accepted")


async def test_size_limits(tmp_path: Path) -> None:
    app = make_app(tmp_path, webhook_secret=WEBHOOK_SECRET, max_body_bytes=4096)
    async with asgi_client(app) as client:
        big = batch_body([envelope(seq=s, size=1000) for s in range(1, 6)])
        assert len(big) > 4096
        assert_error(await post(client, big), 413, "body_too_large")

        # No Content-Length (chunked): the relay counts while reading.
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 1000

        response = await client.post("/api/transcription", content=chunks(), headers=JSON)
        assert "content-length" not in response.request.headers
        assert_error(response, 413, "body_too_large")

    app = make_app(tmp_path, webhook_secret=WEBHOOK_SECRET)
    async with asgi_client(app) as client:
        huge = envelope(size=20_000).to_bytes(max_size=None)
        assert_error(await post(client, huge), 413, "envelope_too_large")


async def test_content_type_must_be_json(client: httpx.AsyncClient) -> None:
    body = envelope().to_bytes()
    headers = {**signed(body), "content-type": "text/plain"}
    response = await client.post("/api/transcription", content=body, headers=headers)
    assert_error(response, 415, "unsupported_media_type")


async def test_signature_interop_and_rejections(client: httpx.AsyncClient) -> None:
    body = envelope(seq=1).to_bytes()
    # Signed by the standardwebhooks reference library (see conftest.signed).
    assert (await post(client, body)).status_code == 200

    unsigned = await client.post("/api/transcription", content=body, headers=JSON)
    assert_error(unsigned, 401, "bad_signature")

    other = "whsec_" + "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA=="
    wrong = await client.post("/api/transcription", content=body, headers=signed(body, other))
    assert_error(wrong, 401, "bad_signature")

    stale = await client.post("/api/transcription", content=body, headers=signed(body, offset=-301))
    assert_error(stale, 401, "bad_signature")
    skewed = await client.post("/api/transcription", content=body, headers=signed(body, offset=200))
    assert skewed.status_code == 200

    tampered_headers = signed(body)
    tampered = await client.post(
        "/api/transcription", content=body.replace(b"hi", b"ho"), headers=tampered_headers
    )
    assert_error(tampered, 401, "bad_signature")

    # Several signatures in the header: one good one is enough.
    good = signed(body)
    bad = signed(body, other)
    good["webhook-signature"] = bad["webhook-signature"] + " " + good["webhook-signature"]
    assert (await client.post("/api/transcription", content=body, headers=good)).status_code == 200


async def test_secret_rotation_accepts_both(tmp_path: Path) -> None:
    new = "whsec_" + "bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldw=="
    app = make_app(tmp_path, webhook_secrets=[WEBHOOK_SECRET, new])
    async with asgi_client(app) as client:
        for seq, secret in ((1, WEBHOOK_SECRET), (2, new)):
            body = envelope(seq=seq).to_bytes()
            answer = await client.post(
                "/api/transcription", content=body, headers=signed(body, secret)
            )
            assert answer.status_code == 200, answer.text


async def test_rate_limit_429_with_retry_after(tmp_path: Path) -> None:
    app = make_app(tmp_path, dev=True, rate_limit="3/minute")
    async with asgi_client(app) as client:
        remaining = []
        for seq in (1, 2, 3):
            answer = await client.post(
                "/api/transcription", content=envelope(seq=seq).to_bytes(), headers=JSON
            )
            assert answer.status_code == 200
            remaining.append(int(answer.headers["ratelimit-remaining"]))
        assert remaining == [2, 1, 0]
        refused = await client.post(
            "/api/transcription", content=envelope(seq=4).to_bytes(), headers=JSON
        )
        body = assert_error(refused, 429, "rate_limited")
        assert body["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["ratelimit-remaining"] == "0"
        # Another session has its own budget.
        other = await client.post(
            "/api/transcription", content=envelope("lesson-2").to_bytes(), headers=JSON
        )
        assert other.status_code == 200
        assert [m.seq for m in await state(app).store.replay("lesson-1", 0, 10)] == [1, 2, 3]


async def test_audit_rows_for_accepted_duplicate_and_rejected(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    body = envelope(seq=1).to_bytes()
    await post(client, body, **{"X-Retry-Attempt": "0"})
    await post(client, body, **{"X-Retry-Attempt": "1"})
    await post(client, b"{not json", **{"X-Session-ID": "lesson-1", "X-Retry-Attempt": "2"})
    await client.post(
        "/api/transcription", content=body, headers={**JSON, "X-Session-ID": "lesson-1"}
    )
    rows = await state(app).store.audit_rows("lesson-1")
    assert [(r["status"], r["retry_count"]) for r in rows] == [
        ("success", 0),
        ("duplicate", 1),
        ("rejected", 2),
        ("rejected", 0),
    ]
    assert all(r["webhook_type"] == "transcription" for r in rows)
    assert json.loads(rows[0]["payload"])["seq"] == 1
    assert json.loads(rows[0]["processed_items"]) != []
    assert json.loads(rows[1]["processed_items"]) == []
    assert rows[2]["error_message"].startswith("400 invalid_json")
    assert json.loads(rows[2]["payload"])["error"] == "invalid_json"
    assert rows[3]["error_message"].startswith("401 bad_signature")


async def test_metrics_route(client: httpx.AsyncClient, app: Starlette) -> None:
    report = {
        "sessionId": "lesson-1",
        "timestamp": "2026-12-04T19:00:00.000Z",
        "metrics": {"segments_processed": 3},
        "source": "livekit-agent",
    }
    body = json.dumps(report).encode()
    answer = await client.post("/api/metrics", content=body, headers=signed(body))
    assert answer.status_code == 200 and answer.json() == {"success": True}
    bad = json.dumps({"sessionId": "lesson-1", "metrics": 3}).encode()
    refused = await client.post("/api/metrics", content=bad, headers=signed(bad))
    assert refused.status_code == 400 and refused.json()["details"][0]["field"] == "metrics"
    unsigned = await client.post(
        "/api/metrics", content=body, headers={**JSON, "X-Session-ID": "lesson-1"}
    )
    assert unsigned.status_code == 401
    rows = await state(app).store.audit_rows("lesson-1")
    assert [r["status"] for r in rows] == ["success", "rejected", "rejected"]


async def test_store_failure_is_503_never_500(tmp_path: Path) -> None:
    app = make_app(tmp_path, dev=True)
    async with asgi_client(app) as client:
        assert (await client.get("/api/health")).json()["store"] == "ok"
        await state(app).store.close()  # the store is gone: commits fail
        answer = await client.post(
            "/api/transcription", content=envelope().to_bytes(), headers=JSON
        )
        await state(app).store.open()  # so the lifespan can close it cleanly
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "store_unavailable"
        for header in RATE_HEADERS:
            assert header in answer.headers


async def test_health_503_when_store_is_gone(tmp_path: Path) -> None:
    app = make_app(tmp_path, dev=True)
    async with asgi_client(app) as client:
        healthy = await client.get("/api/health")
        assert healthy.status_code == 200
        assert healthy.json()["status"] == "healthy" and healthy.json()["version"]
        await state(app).store.close()
        sick = await client.get("/api/health")
        assert sick.status_code == 503
        assert sick.json()["status"] == "unhealthy" and sick.json()["store"] != "ok"
        await state(app).store.open()  # so the lifespan can close it cleanly


async def test_metrics_and_openapi(client: httpx.AsyncClient) -> None:
    body = envelope().to_bytes()
    await post(client, body)
    await post(client, body)
    text = (await client.get("/metrics")).text
    assert 'dualchannel_relay_requests_total{route="/api/transcription",status="200"} 2.0' in text
    assert "dualchannel_relay_duplicates_total 1.0" in text
    assert "dualchannel_relay_commit_batch_envelopes_bucket" in text
    assert "dualchannel_relay_ingest_seconds_count 2.0" in text
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert {
        "/api/transcription",
        "/api/metrics",
        "/api/health",
        "/metrics",
        "/api/sessions/{session_id}/events",
        "/api/sessions/{session_id}/messages",
    } <= set(document["paths"])


async def test_two_apps_in_one_process_have_separate_metrics(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = make_app(tmp_path / "a", dev=True)
    second = make_app(tmp_path / "b", dev=True)
    async with asgi_client(first) as a, asgi_client(second) as b:
        await a.post("/api/transcription", content=envelope().to_bytes(), headers=JSON)
        assert "dualchannel_relay_stored_total 1.0" in (await a.get("/metrics")).text
        assert "dualchannel_relay_stored_total 0.0" in (await b.get("/metrics")).text


async def test_retention_purges_old_rows(tmp_path: Path) -> None:
    app = make_app(tmp_path, dev=True, retention=0.3, purge_interval=0.1)
    async with asgi_client(app) as client:
        await client.post("/api/transcription", content=envelope(seq=1).to_bytes(), headers=JSON)
        store = state(app).store
        assert len(await store.replay("lesson-1", 0, 10)) == 1
        with anyio.fail_after(bound(5)):
            while await store.replay("lesson-1", 0, 10) or await store.audit_rows():
                await anyio.sleep(0.05)
        # Ids keep growing after a purge: resume tokens are never reused.
        await client.post("/api/transcription", content=envelope(seq=2).to_bytes(), headers=JSON)
        assert [m.id for m in await store.replay("lesson-1", 0, 10)] == [2]


@pytest.mark.parametrize(
    "body",
    [
        envelope("lesson-1", 3).to_bytes(),
        b'  \n{"type":"metrics","sessionId":"s","epoch":1,"seq":7,"timestamp":'
        b'"2026-12-04T19:00:00Z","data":{"cpu":0.5}}',  # leading space
        json.dumps(envelope("lesson-1", 4).to_json_value(), indent=2).encode(),
    ],
)
def test_single_envelope_fast_path_matches_the_general_path(body: bytes) -> None:
    from dualchannel.server.webhooks import _single_envelope

    fast = _single_envelope(body, 15_000)
    assert fast is not None
    general = Envelope.from_json_value(json.loads(body))
    assert fast == general and fast.to_bytes() == general.to_bytes()


@pytest.mark.parametrize(
    "body",
    [
        b'[{"type":"transcript"}]',  # a batch
        b'{"type":"heartbeat","sessionId":"s","epoch":1,"seq":0,'
        b'"timestamp":"2026-12-04T19:00:00Z"}',
        b'{"type":"transcript","sessionId":"s"',  # cut short
        b'{"type":"metrics","sessionId":"s","epoch":1,"seq":1,'
        b'"timestamp":"2026-12-04T19:00:00Z","data":{"x":NaN}}',  # not JSON
        envelope("lesson-1", 5, size=14_000).to_bytes(),  # over the 10,000 B cap below
    ],
)
def test_single_envelope_fast_path_defers_everything_else(body: bytes) -> None:
    from dualchannel.server.webhooks import _single_envelope

    assert _single_envelope(body, 10_000) is None


async def test_unknown_routes_and_methods_get_the_relay_error_shape(
    client: httpx.AsyncClient,
) -> None:
    missing = await client.get("/api/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found" and "/openapi.json" in missing.json()["message"]
    wrong = await client.get("/api/transcription")
    assert wrong.status_code == 405
    assert wrong.json()["error"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]
