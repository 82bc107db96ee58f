"""The chaos suite: every scenario of issue 6 against real livekit-server, relay and SQLite.

Each scenario (see :data:`dualchannel.chaos.SCENARIOS`) runs a steady 20 msg/s stream from
a real publisher to a real subscriber while faults are injected by pid, then checks:

- every seq delivered exactly once and in order (nothing lost, nothing twice);
- when the primary dies: a switch to the secondary within 1 s of the fault (and of the
  primary's last signal), and a switch back within 5 s of the recovery (10 s for
  ``both_down``: LiveKit's SDK retries a failed reconnect only every ~5 s);
- when the primary stays up: no switch at all;
- the relay's audit tables agree with what was sent (``messages`` holds seqs 1..sent, the
  ``webhook_logs`` success rows list each stored row once, rejections are exactly the
  garbage we posted);
- garbage is refused with the expected status and dropped by the subscriber.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dualchannel.chaos import SCENARIOS, Report, Scenario, format_report, run_scenario

from ..timing import bound

pytestmark = [pytest.mark.anyio, pytest.mark.livekit]


def check(report: Report, scenario: Scenario) -> None:
    text = format_report(report)
    assert report.sent > 0, text
    assert report.lost == 0, text
    assert report.duplicates_delivered == 0, text
    assert report.out_of_order == 0, text
    assert report.delivered == report.sent, text
    assert report.audit is not None and report.audit.agrees, text
    assert all(g.ok for g in report.garbage), text
    assert report.false_switches == 0, text

    one_second = bound(1.0) * 1000
    recovery_limit = bound(scenario.recovery_limit) * 1000
    away = [s for s in report.switches if s.from_channel == "primary"]
    back = [s for s in report.switches if s.to_channel == "primary"]
    primary_faults = [f for f in report.faults if f.channels in ("primary", "both")]

    if scenario.switch == "never":
        assert not report.switches, text
        return
    if scenario.switch == "always":
        # every fault that cut the primary caused exactly one switch away from it
        assert len(away) == len(primary_faults), text
    for switch in away:
        assert switch.detection_ms is not None, text
        assert switch.detection_ms <= one_second, text
        assert switch.silent_ms <= one_second, text
    # every switch away was followed by one back, within the scenario's recovery limit
    # (5 s; both_down allows for LiveKit's reconnect retry interval, see its note)
    assert len(back) == len(away), text
    for switch in back:
        assert switch.recovery_ms is not None, text
        assert switch.recovery_ms <= recovery_limit, text
    assert len(report.recovery_ms) == len(away), text


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_scenario(name: str, tmp_path: Path) -> None:
    scenario = SCENARIOS[name]
    lines: list[str] = []
    report = await run_scenario(scenario, work_dir=tmp_path, progress=lines.append)
    print("\n".join(lines))  # shown by pytest when the test fails
    print(format_report(report))
    check(report, scenario)
    if name == "garbage":
        check_garbage(report)


def check_garbage(report: Report) -> None:
    """The garbage scenario really exercised the refusals it claims to."""
    got = {(g.channel, g.kind): g.got for g in report.garbage}
    assert got[("relay", "bad_json")] == "400"
    assert got[("relay", "oversize_envelope")] == "413"
    assert got[("relay", "oversize_body")] == "413"
    assert got[("relay", "unsigned")] == "401"
    assert got[("relay", "foreign_session")] == "200"
    assert report.malformed["primary"] == 2
    assert report.foreign["primary"] == 1
    assert report.audit is not None
    assert report.audit.webhook_rows.get("rejected") == 6
