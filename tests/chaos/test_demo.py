"""`dualchannel demo --json` as a user runs it: a subprocess, one JSON object, exit 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ..timing import bound

pytestmark = pytest.mark.livekit


def test_demo_json_short_run() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dualchannel", "demo", "--json", "--duration", "10", "--rate", "5"],
        capture_output=True,
        text=True,
        timeout=bound(90),
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    for key in ("sent", "delivered", "lost", "duplicates_delivered", "switches"):
        assert key in report, key
    assert report["sent"] >= 30
    assert report["lost"] == 0 and report["duplicates_delivered"] == 0
    assert report["delivered"] == report["sent"]
    # the livekit-server pause forces one switch away and one back
    away = [s for s in report["switches"] if s["from_channel"] == "primary"]
    assert away and all(s["detection_ms"] is not None for s in away)
    assert all(s["detection_ms"] <= bound(1.0) * 1000 for s in away)
    assert report["audit"]["agrees"]
    # progress went to stderr, the JSON alone to stdout
    assert "SWITCH" in done.stderr


def test_demo_without_livekit_server_says_how_to_get_one(tmp_path: object) -> None:
    env = {**os.environ, "LIVEKIT_SERVER_BIN": "/nonexistent/livekit-server"}
    done = subprocess.run(
        [sys.executable, "-m", "dualchannel", "demo", "--no-build"],
        capture_output=True,
        text=True,
        timeout=bound(30),
        env=env,
        check=False,
    )
    assert done.returncode == 2
    assert "scripts/install-livekit-server.sh" in done.stderr
