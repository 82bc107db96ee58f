"""The chaos scenarios of issue 6, each a short script of faults, and their runner.

:func:`run_scenario` starts a :class:`~dualchannel.chaos.stack.Stack`, waits until both
channels carry the stream, runs the scenario's faults with a little steady stream before
and after, and returns the :class:`~dualchannel.chaos.report.Report`. The whole run is
bounded by ``Scenario.timeout``.

``switch`` says what the consumer must do: ``"always"`` — the primary is cut long
enough that it must switch to the secondary (within 1 s) and back (within
``recovery_limit`` of the recovery: 5 s, 10 s for ``both_down``, see its note);
``"never"`` — the primary stays up, so it must not switch at all; ``"if_silent"`` —
LiveKit decides how long the primary is gone (``simulate_scenario`` may recover in 0.2 s
or in 15 s), so it must switch only if the primary fell silent, within 1 s of its last
signal, and back within 5 s of the recovery.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio

from ..envelope import Channel
from .faults import (
    BothDown,
    Fault,
    Garbage,
    KillPrimary,
    KillRelay,
    PausePrimary,
    RelayRefuses,
    SimulateScenario,
)
from .recorder import ProgressFn
from .report import Report
from .stack import Stack, StackConfig, poll

__all__ = ["SCENARIOS", "Scenario", "run_scenario"]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named fault script. ``faults`` run one after the other, ``gap`` seconds apart."""

    name: str
    title: str
    faults: Sequence[Fault]
    switch: Literal["always", "never", "if_silent"]
    proxy: bool = False
    gap: float = 2.0
    before: float = 1.0
    after: float = 1.5
    settle_limit: float = 10.0
    timeout: float = 60.0
    notes: tuple[str, ...] = field(default=())
    #: Seconds from the fault clearing to the switch back that the checks allow.
    recovery_limit: float = 5.0


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "pause_primary",
            "livekit-server paused (SIGSTOP) for 3 s, then continued",
            [PausePrimary(3.0)],
            switch="always",
        ),
        Scenario(
            "kill_primary",
            "livekit-server killed (SIGKILL) and restarted; the rooms reconnect",
            [KillPrimary()],
            switch="always",
        ),
        Scenario(
            "kill_relay",
            "the relay killed and restarted on the same database; SSE resumes",
            [KillRelay()],
            switch="never",
        ),
        Scenario(
            "both_down",
            "livekit-server and the relay both killed for 2 s, then both back",
            [BothDown(2.0)],
            switch="always",
            # While livekit-server is down the SDK's reconnect attempts fail, and it waits
            # a fixed interval (about 5 s) before the next: the rooms may come back up to
            # that long after the server does, before our switch back can start.
            recovery_limit=10.0,
            notes=(
                "recovery allows 10 s: the LiveKit SDK retries a failed reconnect only every "
                "~5 s, so its rooms rejoin a restarted server up to that late",
            ),
        ),
        Scenario(
            "simulate_reconnect",
            "Room.simulate_scenario on the agent: signal reconnect, then migration",
            [
                SimulateScenario("SIMULATE_SIGNAL_RECONNECT"),
                SimulateScenario("SIMULATE_MIGRATION"),
            ],
            switch="if_silent",
        ),
        Scenario(
            "simulate_node_failure",
            "Room.simulate_scenario on the agent: node failure",
            [SimulateScenario("SIMULATE_NODE_FAILURE")],
            switch="if_silent",
        ),
        Scenario(
            "relay_429_503",
            "the relay answering 429 for 3 s, then 503 for 3 s",
            [RelayRefuses(429, 3.0), RelayRefuses(503, 3.0)],
            switch="never",
            proxy=True,
            gap=0.0,
        ),
        Scenario(
            "garbage",
            "garbage on both channels (bad JSON, foreign sessions, oversize) in a valid stream",
            [Garbage()],
            switch="never",
        ),
    )
}


async def run_scenario(
    scenario: Scenario | str,
    *,
    rate: float = 20.0,
    progress: ProgressFn | None = None,
    work_dir: Path | None = None,
    between: Callable[[Stack], Awaitable[None]] | None = None,
) -> Report:
    """Run ``scenario`` (or its name) on a fresh stack and report.

    ``between`` (optional) is awaited after the warm-up, before the faults: tests use it
    to check the steady state.
    """
    if isinstance(scenario, str):
        scenario = SCENARIOS[scenario]
    config = StackConfig(
        rate=rate,
        proxy=scenario.proxy,
        work_dir=work_dir,
        scenario=scenario.name,
        progress_interval=None,
    )
    with anyio.fail_after(scenario.timeout):
        async with Stack(config, progress=progress) as stack:
            for note in scenario.notes:
                stack.recorder.notes.append(note)
            await stack.wait_flowing()
            if between is not None:
                await between(stack)
            await anyio.sleep(scenario.before)
            for index, fault in enumerate(scenario.faults):
                if index:
                    await anyio.sleep(scenario.gap)
                await fault.run(stack)
            # Run on until the primary is active again (bounded), then a little longer.
            with anyio.move_on_after(scenario.settle_limit):
                await poll(lambda: stack.subscriber.status().active is Channel.PRIMARY)
            await anyio.sleep(scenario.after)
            return await stack.finish()
