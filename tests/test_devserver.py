"""The dev server harness: finding the binary, failing clearly, pause/kill/restart, tokens."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from livekit import rtc

from dualchannel.devserver import (
    DEV_API_KEY,
    DEV_API_SECRET,
    LiveKitDevServer,
    default_binary_path,
    find_livekit_server,
)
from dualchannel.envelope import TOPIC
from dualchannel.errors import ConfigurationError, LiveKitError
from dualchannel.tokens import TokenError, mint_token, verify_token
from tests.fixtures.livekit import connect_room, wait_until_delivered
from tests.timing import bound

# -- finding the binary ----------------------------------------------------------------


@pytest.fixture
def no_livekit_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An environment with no binary: empty cache, empty PATH, no LIVEKIT_SERVER_BIN."""
    monkeypatch.delenv("LIVEKIT_SERVER_BIN", raising=False)
    monkeypatch.delenv("LIVEKIT_SERVER_VERSION", raising=False)
    monkeypatch.setenv("DUALCHANNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    return tmp_path


def test_missing_binary_says_how_to_get_one(no_livekit_anywhere: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"scripts/install-livekit-server\.sh"):
        find_livekit_server()
    with pytest.raises(ConfigurationError, match=r"scripts/install-livekit-server\.sh"):
        LiveKitDevServer()


def test_cache_path_follows_the_install_script(no_livekit_anywhere: Path) -> None:
    expected = no_livekit_anywhere / "cache" / "livekit-server-v1.13.5" / "bin" / "server"
    assert default_binary_path() == expected
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"#!/bin/sh\n")
    expected.chmod(expected.stat().st_mode | stat.S_IXUSR)
    assert find_livekit_server() == expected


def test_a_wrong_livekit_server_bin_is_an_error(
    no_livekit_anywhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVEKIT_SERVER_BIN", str(no_livekit_anywhere / "nope"))
    with pytest.raises(ConfigurationError, match="LIVEKIT_SERVER_BIN"):
        find_livekit_server()


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_a_server_that_exits_at_start_reports_its_output(tmp_path: Path) -> None:
    binary = _script(tmp_path / "server", 'echo "could not parse config: boom" >&2\nexit 3')
    server = LiveKitDevServer(binary=binary, work_dir=tmp_path / "work")
    with pytest.raises(LiveKitError, match=r"(?s)exited with status 3.*could not parse config"):
        server.start()
    assert server.pid is None


def test_a_server_that_never_answers_times_out_and_is_killed(tmp_path: Path) -> None:
    binary = _script(tmp_path / "server", "echo listening-never >&2\nexec sleep 60")
    server = LiveKitDevServer(binary=binary, work_dir=tmp_path / "work", startup_timeout=0.5)
    with pytest.raises(LiveKitError, match=r"(?s)did not answer.*listening-never"):
        server.start()
    assert server.pid is None
    assert not server.running()


# -- tokens ----------------------------------------------------------------------------


def test_token_round_trip() -> None:
    token = mint_token(
        api_key=DEV_API_KEY, api_secret=DEV_API_SECRET, identity="agent", room="lesson-42"
    )
    claims = verify_token(token, api_key=DEV_API_KEY, api_secret=DEV_API_SECRET)
    assert claims.identity == "agent"
    assert claims.video is not None
    assert claims.video.room == "lesson-42"
    assert claims.video.room_join
    assert claims.video.can_publish_data


def test_token_signed_with_another_secret_is_rejected() -> None:
    token = mint_token(
        api_key=DEV_API_KEY, api_secret="another-secret-" * 3, identity="agent", room="r"
    )
    with pytest.raises(TokenError, match="rejected"):
        verify_token(token, api_key=DEV_API_KEY, api_secret=DEV_API_SECRET)
    with pytest.raises(TokenError):
        verify_token("not-a-jwt", api_key=DEV_API_KEY, api_secret=DEV_API_SECRET)


def test_token_needs_identity_and_room() -> None:
    with pytest.raises(ConfigurationError, match="identity"):
        mint_token(api_key=DEV_API_KEY, api_secret=DEV_API_SECRET, identity="", room="r")
    with pytest.raises(ConfigurationError, match="ttl"):
        mint_token(api_key=DEV_API_KEY, api_secret=DEV_API_SECRET, identity="a", room="r", ttl=0)


# -- a real server: lifecycle ----------------------------------------------------------


@pytest.mark.livekit
def test_stop_ends_even_a_paused_process_by_pid(fresh_livekit_server: LiveKitDevServer) -> None:
    pid = fresh_livekit_server.pid
    assert pid is not None
    config = fresh_livekit_server.config_path.read_text()
    assert "127.0.0.1" in config
    assert "0.0.0.0" not in config
    fresh_livekit_server.pause()  # stop() resumes a paused server so it sees SIGTERM
    fresh_livekit_server.stop()
    assert fresh_livekit_server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(LiveKitError, match="not running"):
        fresh_livekit_server.pause()


class Events:
    """Which connection events a room emitted, and when the last one came."""

    def __init__(self, room: rtc.Room) -> None:
        self.seen: list[str] = []
        self.changed = anyio.Event()
        for name in ("reconnecting", "reconnected", "disconnected"):
            room.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(*_: object) -> None:
            self.seen.append(name)
            self.changed.set()
            self.changed = anyio.Event()

        return record

    async def wait_for(self, name: str) -> None:
        while name not in self.seen:
            await self.changed.wait()


@pytest.mark.anyio
@pytest.mark.livekit
async def test_paused_server_holds_packets_and_delivers_them_on_resume(
    fresh_livekit_server: LiveKitDevServer,
) -> None:
    server = fresh_livekit_server
    async with (
        connect_room(server, "pause", "agent") as agent,
        connect_room(server, "pause", "consumer") as consumer,
    ):
        await wait_until_delivered(agent, consumer)
        agent_events, consumer_events = Events(agent), Events(consumer)
        sent = [f"held-{i}".encode() for i in range(10)]
        received: list[bytes] = []
        all_received = anyio.Event()

        def on_data(packet: rtc.DataPacket) -> None:
            if packet.topic == TOPIC:
                received.append(packet.data)
                if len(received) == len(sent):
                    all_received.set()

        consumer.on("data_received", on_data)

        server.pause()
        try:
            # While the SFU is stopped, publish_data neither raises nor blocks: the packets
            # wait in the sender's SCTP queue and the stopped server's socket buffer.
            with anyio.fail_after(bound(2.0)):
                for payload in sent:
                    await agent.local_participant.publish_data(payload, reliable=True, topic=TOPIC)
                    await anyio.sleep(0.1)
            assert received == []
        finally:
            server.resume()

        with anyio.fail_after(bound(5.0)):
            await all_received.wait()
        assert received == sent
        # A pause this short (well under the signal ping timeout) is not noticed as a
        # connection problem: no reconnect happens.
        assert agent_events.seen == []
        assert consumer_events.seen == []


@pytest.mark.anyio
@pytest.mark.livekit
async def test_rooms_reconnect_after_kill_and_restart(
    fresh_livekit_server: LiveKitDevServer,
) -> None:
    server = fresh_livekit_server
    url = server.url
    async with (
        connect_room(server, "restart", "agent") as agent,
        connect_room(server, "restart", "consumer") as consumer,
    ):
        await wait_until_delivered(agent, consumer)
        agent_events, consumer_events = Events(agent), Events(consumer)

        server.kill()
        with anyio.fail_after(bound(5.0)):
            await agent_events.wait_for("reconnecting")
            await consumer_events.wait_for("reconnecting")
        server.restart()
        assert server.url == url

        # The SDK retries for about 15 s; a server back within that window gets both rooms
        # back by themselves, and data flows again.
        with anyio.fail_after(bound(20.0)):
            await agent_events.wait_for("reconnected")
            await consumer_events.wait_for("reconnected")
        assert "disconnected" not in agent_events.seen + consumer_events.seen
        await wait_until_delivered(agent, consumer, topic="after-restart")

        # A room that joins the restarted server gets data too.
        async with connect_room(server, "restart", "late") as late:
            await wait_until_delivered(agent, late, topic="to-late")
