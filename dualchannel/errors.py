"""The exceptions dualchannel raises, all under one root.

The tree::

    DualChannelError
    ├── EnvelopeError              an envelope broke a wire rule (field, type, size)
    │   └── EnvelopeTooLarge       its encoded size is over the cap
    ├── ClosedError                a publisher, subscriber or channel was used after close
    ├── WouldBlock                 a ``*_nowait`` call could not proceed without waiting
    ├── OutboxFull                 the publisher's webhook outbox stayed full past its timeout
    ├── ConfigurationError         a setting is missing or contradicts another one
    ├── TokenError                 a LiveKit access token is malformed, expired or foreign
    ├── InvalidSignature           a webhook's signature headers are missing, stale or wrong
    └── ChannelError               a channel failed; raised at the I/O adapters
        ├── LiveKitError           the LiveKit data channel (``livekit.rtc``) failed
        ├── RelayError             the relay (webhook POST, SSE, backfill) failed
        │   ├── RelayUnavailable   could not reach it, or it answered 5xx / timed out (retryable)
        │   └── RelayRejected      it answered a final 4xx; ``status`` and ``reason`` say why
        │       └── RelayAuthError 401/403: the token or signature is wrong (not retried)

Local errors (something this process did wrong: a bad envelope, a closed object) are kept
apart from remote ones (``ChannelError``: a peer or the network failed). Third-party
exceptions are converted at the adapter that called the library, with ``raise ... from exc``
so the original stays on ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ChannelError",
    "ClosedError",
    "ConfigurationError",
    "DualChannelError",
    "EnvelopeError",
    "EnvelopeTooLarge",
    "InvalidSignature",
    "LiveKitError",
    "OutboxFull",
    "RelayAuthError",
    "RelayError",
    "RelayRejected",
    "RelayUnavailable",
    "TokenError",
    "WouldBlock",
]


class DualChannelError(Exception):
    """Root of every exception dualchannel raises on purpose."""


class EnvelopeError(DualChannelError, ValueError):
    """An envelope broke a wire rule.

    ``problems`` lists ``(field, rule)`` pairs, field names as they appear on the wire
    (``sessionId``, ``data.segments.0.content``), so callers can report every problem at once.
    """

    def __init__(self, message: str, problems: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.problems: list[tuple[str, str]] = list(problems)


class EnvelopeTooLarge(EnvelopeError):
    """The encoded envelope is larger than the size cap."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"envelope is {size} bytes encoded, over the {limit}-byte cap "
            "(split the transcript into smaller messages, or raise max_size on both ends)",
            [("<envelope>", f"encoded size must be at most {limit} bytes, got {size}")],
        )
        self.size = size
        self.limit = limit


class ClosedError(DualChannelError, RuntimeError):
    """The object was closed and cannot be used again; create a new one."""


class WouldBlock(DualChannelError):
    """A ``*_nowait`` call would have had to wait; use the async method instead."""


class OutboxFull(DualChannelError):
    """The publisher's webhook outbox stayed full for longer than its put timeout."""


class ConfigurationError(DualChannelError, ValueError):
    """A setting is missing, out of range or contradicts another one."""


class TokenError(DualChannelError, ValueError):
    """A LiveKit access token is malformed, expired, or not signed by the given key pair."""


class InvalidSignature(DualChannelError, ValueError):
    """A webhook's signature headers are missing, stale, or match no signature."""


class ChannelError(DualChannelError):
    """A channel (LiveKit or the relay) failed. Raised by the I/O adapters."""


class LiveKitError(ChannelError):
    """The LiveKit data channel failed (publish, connect, or the room went away)."""


class RelayError(ChannelError):
    """Talking to the relay failed."""


class RelayUnavailable(RelayError):
    """The relay could not be reached, timed out, or answered 5xx. Worth retrying.

    ``retry_after`` carries the relay's ``Retry-After`` in seconds when it sent one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RelayRejected(RelayError):
    """The relay answered a final 4xx. ``status`` is the HTTP status, ``reason`` its words."""

    def __init__(self, status: int, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"relay answered {status}: {reason}")
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class RelayAuthError(RelayRejected):
    """The relay refused the credentials (401/403). Check the token or webhook secret."""
