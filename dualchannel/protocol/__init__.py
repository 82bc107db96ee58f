"""The sans-I/O protocol core: pure, synchronous state machines.

Nothing in this package awaits, sleeps, opens a socket or reads a clock. Time is always an
argument (``now``, in seconds, from any monotonic source the caller picks), so tests drive
it with plain numbers. Imports are limited to the standard library and
:mod:`dualchannel.envelope`; ``tests/test_protocol_purity.py`` fails if that ever changes.

- :class:`SequenceBuffer` merges both channels into one exactly-once, in-order stream.
- :class:`FallbackManager` decides which channel is alive and emits :class:`ChannelSwitch`.
- :func:`backoff_delays` and :func:`classify_status` hold every retry decision.
"""

from .backoff import RetryDecision, RetryPolicy, backoff_delays, classify_status, parse_retry_after
from .buffer import BufferEvent, BufferPolicy, BufferStats, Gap, MessageLost, SequenceBuffer
from .fallback import (
    BothDown,
    ChannelDown,
    ChannelRecovered,
    ChannelSwitch,
    FallbackEvent,
    FallbackManager,
    FallbackPolicy,
    Health,
)

__all__ = [
    "BothDown",
    "BufferEvent",
    "BufferPolicy",
    "BufferStats",
    "ChannelDown",
    "ChannelRecovered",
    "ChannelSwitch",
    "FallbackEvent",
    "FallbackManager",
    "FallbackPolicy",
    "Gap",
    "Health",
    "MessageLost",
    "RetryDecision",
    "RetryPolicy",
    "SequenceBuffer",
    "backoff_delays",
    "classify_status",
    "parse_retry_after",
]
