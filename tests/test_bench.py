"""``dualchannel bench <suite> --quick`` runs end to end and writes the expected figures.

Only the cheap suites run here (buffer, delivery, idle: a few seconds each, on loopback
servers the suites start and stop themselves); ingest, centrifugo and failover take longer
or need built binaries and run in ``nox -s bench``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def _dualchannel_bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dualchannel", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _bench(tmp_path: Path, *suites: str) -> dict[str, object]:
    done = _dualchannel_bench(*suites, "--quick", "--output", str(tmp_path))
    assert done.returncode in (0, 1), done.stderr[-2000:]
    raw = json.loads((tmp_path / "benchmarks.json").read_text())
    assert isinstance(raw, dict)
    return raw


def test_quick_suites_write_json_and_markdown(tmp_path: Path) -> None:
    raw = _bench(tmp_path, "buffer", "delivery", "idle")
    assert set(raw) == {"buffer", "delivery", "idle"}

    assert set(raw["buffer"]["cases"]) == {"in_order", "both_channels"}  # type: ignore[index]

    delivery = raw["delivery"]
    assert isinstance(delivery, dict)
    assert [(c["subscribers"], c["rate_msg_s"]) for c in delivery["cases"]] == [
        (10, 1000.0),
        (100, 100.0),
    ]
    for case in delivery["cases"]:
        assert {"p50_ms", "p99_ms", "delivered_fraction"} <= set(case["median"])
        assert case["median"]["delivered_fraction"] > 0.9
        assert isinstance(case["met"], bool)

    idle = raw["idle"]
    assert isinstance(idle, dict)
    assert {"kib_per_connection", "target_kib", "met", "runs"} <= set(idle)
    assert idle["runs"][0]["alive_after_settle"] == idle["connections"]
    assert idle["kib_per_connection"] > 0

    page = (tmp_path / "benchmarks.md").read_text()
    for title in ("SequenceBuffer cost", "POST-to-SSE delivery", "Idle SSE subscribers"):
        assert title in page


def test_unknown_suite_is_refused(tmp_path: Path) -> None:
    done = _dualchannel_bench("nope", "--output", str(tmp_path), timeout=30)
    assert done.returncode == 2
    assert "unknown suite nope" in done.stderr


def test_report_writes_the_page_and_its_plots_again_from_the_json(tmp_path: Path) -> None:
    measured = Path(__file__).parent.parent / "docs" / "benchmarks.json"
    (tmp_path / "benchmarks.json").write_text(measured.read_text())
    done = _dualchannel_bench("--report", "--output", str(tmp_path))
    assert done.returncode in (0, 1), done.stderr[-2000:]
    page = (tmp_path / "benchmarks.md").read_text()
    for plot in ("benchmarks-ingest.png", "benchmarks-failover.png"):
        assert f"]({plot})" in page
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "benchmarks.json").read_text() == measured.read_text()  # untouched


def test_report_without_results_names_the_fix(tmp_path: Path) -> None:
    done = _dualchannel_bench("--report", "--output", str(tmp_path), timeout=30)
    assert done.returncode == 2
    assert "run 'dualchannel bench' first" in done.stderr
