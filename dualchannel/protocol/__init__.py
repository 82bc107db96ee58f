"""The sans-I/O protocol core: pure, synchronous state machines.

Nothing in this package awaits, sleeps, opens a socket or reads a clock. Time is always an
argument (``now``, in seconds, from any monotonic source the caller picks), so tests drive
it with plain numbers. Imports are limited to the standard library and
:mod:`dualchannel.envelope`; ``tests/test_protocol_purity.py`` fails if that ever changes.
"""

from .backoff import RetryDecision, RetryPolicy, backoff_delays, classify_status, parse_retry_after

__all__ = [
    "RetryDecision",
    "RetryPolicy",
    "backoff_delays",
    "classify_status",
    "parse_retry_after",
]
