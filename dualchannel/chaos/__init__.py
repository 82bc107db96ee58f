"""Chaos harness: the whole product on loopback, real faults, and a report.

- :class:`Stack` starts livekit-server, the relay (SQLite), a publisher and a subscriber,
  sends a steady stream and records deliveries and channel switches.
- :mod:`dualchannel.chaos.faults` holds the faults (pause/kill livekit-server, kill the
  relay, both down, ``Room.simulate_scenario``, 429/503 from the relay, garbage).
- :func:`run_scenario` runs one of :data:`SCENARIOS` and returns a :class:`Report`.
- :mod:`dualchannel.chaos.bench` repeats them for ``docs/reliability.md``.
"""

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
from .proxy import FaultProxy
from .recorder import Delivery, Recorder
from .report import AuditCheck, FaultRecord, GarbageResult, Report, SwitchRecord, format_report
from .scenarios import SCENARIOS, Scenario, run_scenario
from .stack import WEBHOOK_SECRET, Stack, StackConfig

__all__ = [
    "SCENARIOS",
    "WEBHOOK_SECRET",
    "AuditCheck",
    "BothDown",
    "Delivery",
    "Fault",
    "FaultProxy",
    "FaultRecord",
    "Garbage",
    "GarbageResult",
    "KillPrimary",
    "KillRelay",
    "PausePrimary",
    "Recorder",
    "RelayRefuses",
    "Report",
    "Scenario",
    "SimulateScenario",
    "Stack",
    "StackConfig",
    "SwitchRecord",
    "format_report",
    "run_scenario",
]
