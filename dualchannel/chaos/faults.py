"""Faults as small objects: ``await fault.run(stack)`` injects, waits, and clears.

Each fault records itself on the :class:`~dualchannel.chaos.stack.Stack`
(:meth:`~Stack.fault_started` / :meth:`~Stack.fault_cleared`) so the recorder can match
channel switches to it. Processes are signalled by their pid only, through the stack's
:class:`~dualchannel.devserver.LiveKitDevServer` and
:class:`~dualchannel.server.process.RelayProcess`; blocking restarts run in a worker
thread so the event loop (and the subscriber's clock) never stalls.

============================  ==========  ==================================================
fault                         cuts        what it does
============================  ==========  ==================================================
:class:`PausePrimary`         primary     SIGSTOP livekit-server, wait, SIGCONT
:class:`KillPrimary`          primary     SIGKILL livekit-server, wait, restart (same ports)
:class:`KillRelay`            secondary   SIGKILL the relay, wait, restart (same database)
:class:`BothDown`             both        SIGKILL both, wait, restart both
:class:`SimulateScenario`     primary     ``Room.simulate_scenario`` on the agent's room
:class:`RelayRefuses`         secondary   the proxy answers 429/503 for a while
:class:`Garbage`              none        garbage on both channels beside the valid stream
============================  ==========  ==================================================
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Protocol

import anyio
import httpx
from livekit import rtc

from ..envelope import TOPIC, Channel, Envelope
from ..signing import WebhookSigner
from .report import GarbageResult
from .stack import WEBHOOK_SECRET, Stack

__all__ = [
    "BothDown",
    "Fault",
    "Garbage",
    "KillPrimary",
    "KillRelay",
    "PausePrimary",
    "RelayRefuses",
    "SimulateScenario",
]


class Fault(Protocol):
    """Something that goes wrong, and then right again."""

    async def run(self, stack: Stack) -> None: ...


@dataclass(frozen=True, slots=True)
class PausePrimary:
    """livekit-server frozen with SIGSTOP for ``seconds``, then SIGCONT."""

    seconds: float = 3.0

    async def run(self, stack: Stack) -> None:
        index = stack.recorder.fault_started(
            "pause_primary", "primary", f"SIGSTOP livekit-server pid {stack.livekit.pid}"
        )
        stack.livekit.pause()
        try:
            await anyio.sleep(self.seconds)
        finally:
            stack.livekit.resume()
        stack.recorder.fault_cleared(index, detail=f"SIGCONT after {self.seconds:g} s")


@dataclass(frozen=True, slots=True)
class KillPrimary:
    """livekit-server SIGKILLed, restarted on the same ports after ``down`` seconds.

    Rooms reconnect by themselves when the server is back within ~15 s (docs/livekit.md).
    """

    down: float = 0.0

    async def run(self, stack: Stack) -> None:
        index = stack.recorder.fault_started(
            "kill_primary", "primary", f"SIGKILL livekit-server pid {stack.livekit.pid}"
        )
        await anyio.to_thread.run_sync(stack.livekit.kill)
        await anyio.sleep(self.down)
        await anyio.to_thread.run_sync(stack.livekit.start)
        stack.recorder.fault_cleared(index, detail=f"restarted as pid {stack.livekit.pid}")


@dataclass(frozen=True, slots=True)
class KillRelay:
    """The relay SIGKILLed, restarted on the same port and database after ``down`` s."""

    down: float = 0.0

    async def run(self, stack: Stack) -> None:
        index = stack.recorder.fault_started(
            "kill_relay", "secondary", f"SIGKILL relay pid {stack.relay.pid}"
        )
        stack.relay.kill()
        await anyio.sleep(self.down)
        await anyio.to_thread.run_sync(stack.relay.start)
        stack.recorder.fault_cleared(index, detail=f"restarted as pid {stack.relay.pid}")


@dataclass(frozen=True, slots=True)
class BothDown:
    """livekit-server and the relay both SIGKILLed for ``seconds``, then both restarted
    (at once). Counts as cleared when livekit-server is back: recovery is the switch back
    to the primary."""

    seconds: float = 2.0

    async def run(self, stack: Stack) -> None:
        index = stack.recorder.fault_started(
            "both_down",
            "both",
            f"SIGKILL livekit-server pid {stack.livekit.pid} and relay pid {stack.relay.pid}",
        )
        await anyio.to_thread.run_sync(stack.livekit.kill)
        stack.relay.kill()
        await anyio.sleep(self.seconds)
        primary_back: list[float] = []

        async def restart_livekit() -> None:
            await anyio.to_thread.run_sync(stack.livekit.start)
            primary_back.append(time.monotonic())

        async with anyio.create_task_group() as group:
            group.start_soon(restart_livekit)
            group.start_soon(anyio.to_thread.run_sync, stack.relay.start)
        # Recovery is measured against the primary's return: the switch back is to it.
        lag = time.monotonic() - primary_back[0]
        detail = f"both restarted (the relay {lag:.1f} s after livekit-server)"
        stack.recorder.fault_cleared(index, primary_back[0], detail=detail)


@dataclass(frozen=True, slots=True)
class SimulateScenario:
    """``Room.simulate_scenario(kind)`` on the agent's room (livekit 1.2.x).

    ``kind`` names a ``rtc.SimulateScenarioKind``: ``SIMULATE_SIGNAL_RECONNECT``,
    ``SIMULATE_NODE_FAILURE``, ``SIMULATE_MIGRATION``, … The fault counts as cleared
    when the room emits ``reconnected`` (waited for up to ``recover_timeout`` s).
    """

    kind: str = "SIMULATE_SIGNAL_RECONNECT"
    recover_timeout: float = 25.0

    async def run(self, stack: Stack) -> None:
        value = getattr(rtc.SimulateScenarioKind, self.kind)
        label = self.kind.removeprefix("SIMULATE_").lower()
        since = time.monotonic()
        index = stack.recorder.fault_started(
            f"simulate_{label}", "primary", f"{self.kind} on the agent"
        )
        await stack.agent_room.simulate_scenario(value)
        at = await stack.wait_agent_reconnected(since, within=self.recover_timeout)
        if at is None:
            stack.recorder.note(
                f"{self.kind}: the agent's room did not report 'reconnected' within "
                f"{self.recover_timeout:g} s"
            )
        stack.recorder.fault_cleared(index, at, detail="the agent's room reconnected")


@dataclass(frozen=True, slots=True)
class RelayRefuses:
    """The relay (through the stack's proxy) answers ``status`` for ``seconds``."""

    status: int = 503
    seconds: float = 3.0
    retry_after: float = 1.0

    async def run(self, stack: Stack) -> None:
        proxy = stack.proxy
        if proxy is None:
            raise RuntimeError("RelayRefuses needs a stack made with StackConfig(proxy=True)")
        index = stack.recorder.fault_started(
            f"relay_{self.status}",
            "secondary",
            f"the relay answers {self.status} for {self.seconds:g} s",
        )
        proxy.refuse(self.status, self.seconds, retry_after=self.retry_after)
        await anyio.sleep(self.seconds)
        proxy.heal()
        refused = proxy.refused[self.status]
        stack.recorder.fault_cleared(index, detail=f"{refused} requests refused")
        stack.recorder.notes.append(f"the proxy answered {refused} requests with {self.status}")


FOREIGN_SESSION = "someone-elses-lesson"
_OVERSIZE = 16_000  # over the 15,000-byte envelope cap on both ends


@dataclass(frozen=True, slots=True)
class Garbage:
    """Garbage beside the valid stream, on both channels.

    LiveKit (published from the agent's room on the dualchannel topic): bad JSON, an
    envelope of a foreign session, an oversize envelope claiming our session. The
    subscriber must drop each (counted as malformed or foreign).

    Relay (posted straight to it): bad JSON (400), a broken envelope (400), an oversize
    envelope (413), an oversize body (413), a foreign session under our X-Session-ID
    (400), an unsigned envelope (401), and a valid envelope of a foreign session (200,
    stored under that session and never seen on ours).
    """

    settle: float = 1.0

    async def run(self, stack: Stack) -> None:
        index = stack.recorder.fault_started("garbage", "none", "bad packets on both channels")
        before = stack.subscriber.stats()
        session = stack.config.session_id
        epoch = stack.publisher.epoch
        ours = _envelope(session, epoch, 10**9)
        foreign = _envelope(FOREIGN_SESSION, epoch, 1)
        oversize = _oversize(ours)

        publish = stack.agent_room.local_participant.publish_data
        for payload in (b"{this is not json", foreign.to_bytes(), oversize):
            await publish(payload, reliable=True, topic=TOPIC)

        signer = WebhookSigner(WEBHOOK_SECRET)
        posts: list[tuple[str, bytes, str, bool, int]] = [
            # kind, body, X-Session-ID, signed, expected status
            ("bad_json", b"{this is not json", session, True, 400),
            ("invalid_envelope", json.dumps({"type": "transcript"}).encode(), session, True, 400),
            ("oversize_envelope", oversize, session, True, 413),
            ("oversize_body", b"[" + b" " * 300_000 + b"]", session, True, 413),
            ("foreign_under_our_header", foreign.to_bytes(), session, True, 400),
            ("unsigned", ours.to_bytes(), session, False, 401),
            ("foreign_session", foreign.to_bytes(), FOREIGN_SESSION, True, 200),
        ]
        async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
            for kind, body, header, signed, expected in posts:
                headers = {"Content-Type": "application/json", "X-Session-ID": header}
                if signed:
                    headers |= signer.headers(body, timestamp=int(time.time()))
                answer = await client.post(
                    stack.relay.url + "/api/transcription", content=body, headers=headers
                )
                stack.recorder.garbage.append(
                    GarbageResult("relay", kind, str(expected), str(answer.status_code))
                )
                if expected != 200 and header == session:
                    stack.recorder.expected_rejected += 1

        await anyio.sleep(self.settle)
        after = stack.subscriber.stats()
        p = Channel.PRIMARY
        malformed = after.malformed[p] - before.malformed[p]
        foreign_seen = after.foreign[p] - before.foreign[p]
        stack.recorder.garbage.append(
            GarbageResult("livekit", "malformed", "2 dropped", f"{malformed} dropped")
        )
        stack.recorder.garbage.append(
            GarbageResult("livekit", "foreign_session", "1 dropped", f"{foreign_seen} dropped")
        )
        stack.recorder.fault_cleared(index)


def _envelope(session: str, epoch: int, seq: int) -> Envelope:
    return Envelope.transcript(
        session_id=session,
        epoch=epoch,
        seq=seq,
        segments=[{"type": "text", "content": "not part of this lesson"}],
        speaker="intruder",
    )


def _oversize(envelope: Envelope) -> bytes:
    value = envelope.to_json_value()
    value["data"]["segments"][0]["content"] = "x" * _OVERSIZE
    return json.dumps(value).encode()
