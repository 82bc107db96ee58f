"""The public surface: sorted ``__all__`` lists, and every name in them importable."""

from __future__ import annotations

import importlib

import pytest

PUBLIC_MODULES = [
    "dualchannel",
    "dualchannel.protocol",
    "dualchannel.errors",
    "dualchannel.envelope",
]


def _isort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions and dunders
    kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
    return (kind, name)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_and_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported, key=_isort_key), f"{name}.__all__ is not sorted"
    for attr in exported:
        assert hasattr(module, attr), f"{name}.{attr} is in __all__ but missing"


def test_architecture_names_are_public() -> None:
    import dualchannel
    import dualchannel.protocol

    for attr in ["Envelope", "Channel", "ChannelSwitch", "DualChannelError"]:
        assert attr in dualchannel.__all__
    for attr in ["SequenceBuffer", "FallbackManager"]:
        assert attr in dualchannel.protocol.__all__


def test_every_error_descends_from_the_root() -> None:
    import dualchannel.errors as errors

    for attr in errors.__all__:
        assert issubclass(getattr(errors, attr), errors.DualChannelError)
