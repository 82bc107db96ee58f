"""Subscriber auth (LiveKit tokens) on both GET routes, and the backfill page API."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from tests.timing import bound

from .conftest import JSON, asgi_client, batch_body, envelope, make_app, read_events, served, token

pytestmark = pytest.mark.anyio

ROUTES = ("/api/sessions/lesson-1/messages", "/api/sessions/lesson-1/events")


@pytest.fixture
def closed_app(tmp_path: Path) -> Starlette:
    return make_app(tmp_path)  # not dev: a token is required


@pytest.mark.parametrize("route", ROUTES)
async def test_refusals(closed_app: Starlette, route: str) -> None:
    async with asgi_client(closed_app) as client:
        cases = [
            ({}, 401, "missing_token"),
            ({"authorization": "Bearer not-a-jwt"}, 401, "invalid_token"),
            (
                {"authorization": "Bearer " + token("lesson-1", secret="x" * 40)},
                401,
                "invalid_token",
            ),
            ({"authorization": "Bearer " + token("lesson-2")}, 403, "wrong_room"),
            (
                {"authorization": "Bearer " + token("lesson-1", subscribe=False)},
                403,
                "missing_grant",
            ),
            ({"authorization": "Bearer " + token("lesson-1", join=False)}, 403, "missing_grant"),
        ]
        for headers, status, code in cases:
            answer = await client.get(route, headers=headers)
            assert answer.status_code == status, (code, answer.text)
            assert answer.json()["error"] == code
            assert answer.json()["message"]


async def test_token_opens_both_routes(closed_app: Starlette) -> None:
    async with served(closed_app) as base, httpx.AsyncClient(timeout=bound(10)) as client:
        await client.post(base + "/api/transcription", content=envelope().to_bytes(), headers=JSON)
        good = token("lesson-1")
        page = await client.get(base + ROUTES[0], headers={"authorization": f"Bearer {good}"})
        assert page.status_code == 200 and len(page.json()["messages"]) == 1
        with anyio.fail_after(bound(10)):
            by_header = await read_events(
                client, base + ROUTES[1], count=1, headers={"authorization": f"Bearer {good}"}
            )
            by_query = await read_events(client, f"{base}{ROUTES[1]}?token={good}", count=1)
        assert by_header[0].id == by_query[0].id == "1"


async def test_dev_mode_needs_no_token_but_checks_one_given(tmp_path: Path) -> None:
    async with asgi_client(make_app(tmp_path, dev=True)) as client:
        assert (await client.get(ROUTES[0])).status_code == 200
        other = await client.get(ROUTES[0], headers={"authorization": "Bearer " + token("x")})
        assert other.status_code == 403


async def test_backfill_pages_by_epoch_and_seq(tmp_path: Path) -> None:
    async with asgi_client(make_app(tmp_path, dev=True)) as client:
        body = batch_body([envelope(seq=s, epoch=e) for e in (2, 1) for s in range(1, 6)])
        assert (
            await client.post("/api/transcription", content=body, headers=JSON)
        ).status_code == 200

        def keys(answer: httpx.Response) -> list[tuple[int, int]]:
            return [(m["epoch"], m["seq"]) for m in answer.json()["messages"]]

        everything = await client.get(ROUTES[0])
        assert everything.json()["sessionId"] == "lesson-1"
        assert keys(everything) == [(e, s) for e in (1, 2) for s in range(1, 6)]
        assert everything.json()["hasMore"] is False

        page = await client.get(ROUTES[0], params={"epoch": 2, "after_seq": 1, "limit": 3})
        assert keys(page) == [(2, 2), (2, 3), (2, 4)] and page.json()["hasMore"] is True
        rest = await client.get(ROUTES[0], params={"epoch": 2, "after_seq": 4})
        assert keys(rest) == [(2, 5)] and rest.json()["hasMore"] is False
        assert (await client.get("/api/sessions/nobody-yet/messages")).json()["messages"] == []

        for params, field in (
            ({"limit": 0}, "limit"),
            ({"limit": 1001}, "limit"),
            ({"epoch": "x"}, "epoch"),
            ({"after_seq": -1}, "after_seq"),
        ):
            bad = await client.get(ROUTES[0], params=params)
            assert bad.status_code == 400
            assert bad.json()["details"][0]["field"] == field
        bad_id = await client.get("/api/sessions/bad id!/messages")
        assert bad_id.status_code == 400 and bad_id.json()["error"] == "invalid_session_id"
