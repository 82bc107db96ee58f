"""SSE delivery on a real uvicorn loopback port: replay, exact resume, heartbeats, overflow."""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import SocketStream
from httpx_sse import aconnect_sse

from dualchannel import Envelope
from tests.timing import bound

from .conftest import JSON, batch_body, envelope, make_app, read_events, served, state

pytestmark = pytest.mark.anyio

EVENTS = "/api/sessions/lesson-1/events"


async def ingest(
    client: httpx.AsyncClient,
    base: str,
    seqs: range,
    *,
    per: int = 1,
    session: str = "lesson-1",
    size: int = 0,
) -> None:
    items = list(seqs)
    for start in range(0, len(items), per):
        chunk = [envelope(session, s, size=size) for s in items[start : start + per]]
        answer = await client.post(
            base + "/api/transcription", content=batch_body(chunk), headers=JSON
        )
        assert answer.status_code == 200, answer.text


async def test_replays_from_start_then_goes_live(tmp_path: Path) -> None:
    app = make_app(tmp_path, dev=True)
    async with served(app) as base, httpx.AsyncClient(timeout=bound(10)) as client:
        await ingest(client, base, range(1, 4))
        received: list[int] = []
        with anyio.fail_after(bound(10)):
            async with aconnect_sse(client, "GET", base + EVENTS) as source:
                assert source.response.headers["content-type"].startswith("text/event-stream")
                async for event in source.aiter_sse():
                    if event.event == "heartbeat" or not event.data:
                        continue
                    assert event.event == "transcript"
                    payload = Envelope.from_bytes(event.data)
                    # data is the envelope exactly as Envelope.to_bytes()
                    assert event.data == payload.to_bytes().decode()
                    received.append(payload.seq)
                    if len(received) == 3:
                        await ingest(client, base, range(4, 6))
                    if len(received) == 5:
                        break
        assert received == [1, 2, 3, 4, 5]


async def test_retry_hint_and_heartbeat_carry_position(tmp_path: Path) -> None:
    app = make_app(tmp_path, dev=True, heartbeat_interval=0.1)
    async with served(app) as base, httpx.AsyncClient(timeout=bound(10)) as client:
        await ingest(client, base, range(1, 3))
        for s in (1, 2, 3):
            await client.post(
                base + "/api/transcription",
                content=envelope(seq=s, epoch=2).to_bytes(),
                headers=JSON,
            )
        retry: int | None = None
        beats: list[Envelope] = []
        with anyio.fail_after(bound(10)):
            async with aconnect_sse(client, "GET", base + EVENTS) as source:
                async for event in source.aiter_sse():
                    retry = event.retry if event.retry is not None else retry
                    if event.event == "heartbeat":
                        # No id line: the resume point stays the last message's (5).
                        assert event.id == "5"
                        beats.append(Envelope.from_bytes(event.data))
                        if len(beats) == 2:
                            break
        assert retry == 1000
        assert all(b.is_heartbeat and b.source == "relay" for b in beats)
        assert (beats[-1].epoch, beats[-1].seq) == (2, 3)

        # A session nobody has published to yet: empty stream, heartbeat at (0, 0).
        with anyio.fail_after(bound(10)):
            beat = (
                await read_events(
                    client, base + "/api/sessions/new-1/events", count=1, skip_heartbeats=False
                )
            )[0]
        assert beat.event == "heartbeat"
        assert (Envelope.from_bytes(beat.data).epoch, Envelope.from_bytes(beat.data).seq) == (0, 0)


async def test_resume_by_header_and_query(tmp_path: Path) -> None:
    app = make_app(tmp_path, dev=True)
    async with served(app) as base, httpx.AsyncClient(timeout=bound(10)) as client:
        await ingest(client, base, range(1, 6))
        with anyio.fail_after(bound(10)):
            first = await read_events(client, base + EVENTS, count=2)
            cut = first[-1].id
            by_header = await read_events(
                client, base + EVENTS, count=3, headers={"Last-Event-ID": cut}
            )
            by_query = await read_events(client, f"{base}{EVENTS}?lastEventId={cut}", count=3)
        seqs = [json.loads(e.data)["seq"] for e in by_header]
        assert seqs == [3, 4, 5]
        assert [e.id for e in by_query] == [e.id for e in by_header]
        bad = await client.get(base + EVENTS, headers={"Last-Event-ID": "abc"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_last_event_id"


async def test_resume_at_random_cut_points_while_ingest_continues(tmp_path: Path) -> None:
    total = 300
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    app = make_app(tmp_path, dev=True, rate_limit="100000/minute")
    async with served(app) as base, httpx.AsyncClient(timeout=bound(10)) as client:
        received: list[int] = []
        last_id: str | None = None
        reconnects = 0

        async def publish() -> None:
            for start in range(1, total + 1, 3):
                await ingest(client, base, range(start, min(start + 3, total + 1)))
                await anyio.sleep(rng.random() * 0.004)

        with anyio.fail_after(bound(40)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(publish)
                while len(received) < total:
                    headers = {"Last-Event-ID": last_id} if last_id else {}
                    cut = rng.randint(1, 40)
                    events = await read_events(
                        client,
                        base + EVENTS,
                        count=min(cut, total - len(received)),
                        headers=headers,
                    )
                    for event in events:
                        received.append(json.loads(event.data)["seq"])
                        last_id = event.id
                    reconnects += 1
        assert reconnects > 5, f"seed {seed}"
        assert received == list(range(1, total + 1)), f"seed {seed}"


async def test_slow_subscriber_overflows_without_slowing_others(tmp_path: Path) -> None:
    # More bytes than the kernel can buffer between the relay and a reader that stops:
    # the slow reader's receive buffer is pinned small, the relay's send buffer tops out
    # at tcp_wmem's maximum, so the relay's queue for it must overflow.
    size = 12_000
    wmem_max = int((await anyio.Path("/proc/sys/net/ipv4/tcp_wmem").read_text()).split()[2])
    total = max(400, 2 * wmem_max // size)
    app = make_app(
        tmp_path, dev=True, rate_limit="100000/minute", subscriber_queue=64, heartbeat_interval=5.0
    )
    async with served(app) as base, httpx.AsyncClient(timeout=bound(20)) as client:
        fast: list[int] = []
        slow_events: list[str] = []
        slow_ready = anyio.Event()
        publish_done = anyio.Event()

        async def fast_reader() -> None:
            async with aconnect_sse(client, "GET", base + EVENTS) as source:
                async for event in source.aiter_sse():
                    assert event.event != "overflow", "the fast reader fell behind"
                    if event.event == "transcript":
                        fast.append(json.loads(event.data)["seq"])
                        if len(fast) == total:
                            return

        async def slow_reader() -> None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            host, port = base.removeprefix("http://").split(":")
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect((host, int(port)))
            await anyio.wait_writable(sock)
            async with await SocketStream.from_socket(sock) as stream:
                await stream.send(f"GET {EVENTS} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                data = await stream.receive()
                assert b"retry:" in data or b"200" in data
                slow_ready.set()
                await publish_done.wait()  # stop reading while everything is published
                chunks = [data]
                tail = data[-16:]
                with contextlib.suppress(anyio.EndOfStream):
                    while not tail.endswith(b"\r\n0\r\n\r\n"):  # the last chunk
                        chunks.append(await stream.receive())
                        tail = (tail + chunks[-1])[-16:]
            text = b"".join(chunks).decode()
            slow_events.extend(re.findall(r"^event: (\w+)$", text, flags=re.MULTILINE))
            overflow = text[text.index("event: overflow") :].split("data: ", 1)[1]
            reason = json.loads(overflow.split("\n", 1)[0])
            assert "reason" in reason and "lastEventId" in reason

        with anyio.fail_after(bound(40)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fast_reader)
                tg.start_soon(slow_reader)
                await slow_ready.wait()
                with anyio.fail_after(bound(20)):  # ingest is not held up by the slow one
                    await ingest(client, base, range(1, total + 1), per=10, size=size)
                publish_done.set()
        assert fast == list(range(1, total + 1))
        assert slow_events[-1] == "overflow"  # then the stream closed
        assert 0 < slow_events.count("transcript") < total
        metrics = (await client.get(base + "/metrics")).text
        assert "dualchannel_relay_subscriber_overflows_total 1.0" in metrics
        assert state(app).hub.subscriber_count == 0
