"""The examples run, as a user would run them, against the real relay."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from dualchannel.server.process import RelayProcess, free_port
from dualchannel.signing import WebhookSigner

from .fixtures.relay import DEV_API_KEY, DEV_API_SECRET, WEBHOOK_SECRET
from .helpers import SESSION, transcript
from .timing import bound

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def post_sync(relay: RelayProcess, seqs: range) -> None:
    body = b"[" + b",".join(transcript(seq).to_bytes() for seq in seqs) + b"]"
    headers = {"Content-Type": "application/json", "X-Session-ID": SESSION}
    headers |= WebhookSigner(WEBHOOK_SECRET).headers(body, timestamp=int(time.time()))
    response = httpx.post(f"{relay.url}/api/transcription", content=body, headers=headers)
    assert response.status_code == 200, response.text


def test_consumer_example_prints_each_message_once(relay: RelayProcess) -> None:
    post_sync(relay, range(1, 6))
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "consumer.py"), "--session", SESSION,
         "--relay-url", relay.url, "--api-key", DEV_API_KEY, "--api-secret", DEV_API_SECRET,
         "--count", "5"],
        capture_output=True, text=True, timeout=bound(30), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:5]] == ["1", "2", "3", "4", "5"]
    assert "segment 3" in lines[2]
    assert lines[-1].startswith("delivered 5")


def test_agent_example_then_consumer_example_through_the_relay(relay: RelayProcess) -> None:
    agent = subprocess.run(
        [sys.executable, str(EXAMPLES / "agent.py"), "--session", SESSION,
         "--relay-url", relay.url, "--webhook-secret", WEBHOOK_SECRET,
         "--count", "6", "--rate", "50"],
        capture_output=True, text=True, timeout=bound(60), check=False,
    )  # fmt: skip
    assert agent.returncode == 0, agent.stderr
    consumer = subprocess.run(
        [sys.executable, str(EXAMPLES / "consumer.py"), "--session", SESSION,
         "--relay-url", relay.url, "--api-key", DEV_API_KEY, "--api-secret", DEV_API_SECRET,
         "--count", "6"],
        capture_output=True, text=True, timeout=bound(30), check=False,
    )  # fmt: skip
    assert consumer.returncode == 0, consumer.stderr
    lines = consumer.stdout.splitlines()
    assert [line.split()[0] for line in lines[:6]] == ["1", "2", "3", "4", "5", "6"]
    assert "factor quadratics" in lines[0]


async def test_frontend_service_reserves_the_merged_stream(relay: RelayProcess) -> None:
    post_sync(relay, range(1, 4))
    port = free_port()
    service = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "frontend_service.py"), "--relay-url", relay.url,
         "--api-key", DEV_API_KEY, "--api-secret", DEV_API_SECRET, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=bound(10)) as client:
            with anyio.fail_after(bound(15)):
                while True:
                    try:
                        bad = await client.get(f"{base}/sessions/not%20valid/status")
                        break
                    except httpx.ConnectError:
                        await anyio.sleep(0.1)
            assert bad.status_code == 400
            assert "session id must match" in bad.json()["message"]
            seqs: list[int] = []
            with anyio.fail_after(bound(15)):
                async with aconnect_sse(client, "GET", f"{base}/sessions/{SESSION}/stream") as es:
                    async for event in es.aiter_sse():
                        if event.event != "message":
                            continue
                        seqs.append(json.loads(event.data)["seq"])
                        if len(seqs) == 3:
                            await anyio.to_thread.run_sync(post_sync, relay, range(4, 7))
                        if len(seqs) == 6:
                            break
            assert seqs == [1, 2, 3, 4, 5, 6]
            status = (await client.get(f"{base}/sessions/{SESSION}/status")).json()
            assert status["delivered"] == 6
            assert status["lost"] == 0
    finally:
        service.terminate()
        try:
            service.wait(timeout=10)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        assert service.stderr is not None
        service.stderr.close()
