"""One constant scales every timing bound in the tests.

Set ``DUALCHANNEL_TEST_TIME_SCALE=3`` on a slow or loaded machine: every deadline, wait and
"within N seconds" bound in the suite is multiplied by it. Tests never assert speed; they
assert that something happened within a generous bound.
"""

from __future__ import annotations

import os

SCALE = float(os.environ.get("DUALCHANNEL_TEST_TIME_SCALE", "1"))


def bound(seconds: float) -> float:
    """``seconds`` scaled by :data:`SCALE`."""
    return seconds * SCALE
