"""Shared pytest setup. Fixtures live in tests/fixtures/, one module per real part."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.livekit",
    "tests.fixtures.relay",
]


@pytest.fixture
def anyio_backend() -> str:
    # livekit.rtc runs on asyncio only, so every async test does too.
    return "asyncio"
