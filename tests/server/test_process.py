"""The relay as a process: `dualchannel serve`, SIGKILL mid-stream, restart, resume."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from dualchannel.server.process import RelayProcess, free_port
from dualchannel.signing import WebhookSigner
from tests.fixtures.relay import WEBHOOK_SECRET
from tests.timing import bound

from .conftest import JSON, envelope

pytestmark = pytest.mark.anyio

EVENTS = "/api/sessions/lesson-1/events"


async def test_killed_relay_restarts_on_same_database_and_subscribers_lose_nothing(
    relay: RelayProcess,
) -> None:
    total = 120
    signer = WebhookSigner(WEBHOOK_SECRET)
    acknowledged: list[int] = []
    received: list[int] = []
    killed = anyio.Event()

    async def publish(client: httpx.AsyncClient) -> None:
        for seq in range(1, total + 1):
            body = envelope(seq=seq).to_bytes()
            while True:  # what a publisher does: retry the same envelope until a 200
                headers = {**JSON, **signer.headers(body, timestamp=int(time.time()))}
                try:
                    answer = await client.post(
                        relay.url + "/api/transcription", content=body, headers=headers
                    )
                except httpx.TransportError:
                    await anyio.sleep(0.05)
                    continue
                if answer.status_code == 200:
                    acknowledged.append(seq)
                    break
                assert answer.status_code >= 500, answer.text
                await anyio.sleep(0.05)
            await anyio.sleep(0.005)

    async def subscribe(client: httpx.AsyncClient) -> None:
        last_id: str | None = None
        while len(received) < total:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                async with aconnect_sse(
                    client, "GET", relay.url + EVENTS, headers=headers
                ) as source:
                    async for event in source.aiter_sse():
                        if event.event == "transcript":
                            received.append(json.loads(event.data)["seq"])
                            last_id = event.id
                            if len(received) == total:
                                return
            except httpx.TransportError:
                await anyio.sleep(0.05)

    async def crash() -> None:
        while len(received) < total // 3:
            await anyio.sleep(0.01)
        await anyio.to_thread.run_sync(relay.kill)
        killed.set()
        await anyio.sleep(0.3)
        await anyio.to_thread.run_sync(relay.restart)

    limits = httpx.Timeout(bound(5))
    with anyio.fail_after(bound(45)):
        async with httpx.AsyncClient(timeout=limits) as client, anyio.create_task_group() as tg:
            tg.start_soon(publish, client)
            tg.start_soon(subscribe, client)
            tg.start_soon(crash)
    assert killed.is_set()
    assert acknowledged == list(range(1, total + 1))
    assert received == list(range(1, total + 1))


async def test_graceful_stop_ends_open_streams(relay: RelayProcess) -> None:
    with anyio.fail_after(bound(20)):
        async with httpx.AsyncClient(timeout=bound(5)) as client:
            async with aconnect_sse(client, "GET", relay.url + EVENTS) as source:
                events = source.aiter_sse()
                await anext(events)
                started = time.monotonic()
                await anyio.to_thread.run_sync(relay.stop)
                assert time.monotonic() - started < bound(8)
                rest = [event.event async for event in events]
            assert "overflow" not in rest
        assert not relay.running


def test_serve_without_livekit_credentials_names_the_flag() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dualchannel",
            "serve",
            "--port",
            str(free_port()),
            "--database",
            "sqlite:///:memory:",
        ],
        capture_output=True,
        text=True,
        timeout=bound(30),
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "--livekit-api-key" in result.stderr and "--dev" in result.stderr


def test_relay_process_restarts_on_same_port(relay: RelayProcess) -> None:
    port, first_pid = relay.port, relay.pid
    body = envelope().to_bytes()
    headers = {**JSON, **WebhookSigner(WEBHOOK_SECRET).headers(body, timestamp=int(time.time()))}
    assert (
        httpx.post(relay.url + "/api/transcription", content=body, headers=headers).status_code
        == 200
    )
    relay.kill()
    assert not relay.running
    relay.restart()
    assert relay.port == port and relay.pid != first_pid
    page = httpx.get(relay.url + "/api/sessions/lesson-1/messages").json()
    assert [m["seq"] for m in page["messages"]] == [1]


def test_serve_warns_about_what_it_does_not_check(relay: RelayProcess) -> None:
    # The fixture's relay has a webhook secret and runs with --dev.
    warnings = [line for line in relay.log_path.read_text().splitlines() if "not checking" in line]
    assert len(warnings) == 1
    assert "--dev" in warnings[0] and "webhook signatures" not in warnings[0]
