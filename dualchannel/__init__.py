"""dualchannel: a LiveKit agent's data over two channels, merged exactly once, in order.

The publisher sends every message on the LiveKit data channel (primary) and as a webhook
to the relay, which fans it out over Server-Sent Events (secondary). The subscriber merges
both through a sequence buffer and switches channels within a second when one goes silent.
"""

from ._version import __version__
from .envelope import Channel, Envelope, MessageType, Priority, Segment, TranscriptData
from .errors import (
    ChannelError,
    ClosedError,
    ConfigurationError,
    DualChannelError,
    EnvelopeError,
    EnvelopeTooLarge,
    InvalidSignature,
    LiveKitError,
    OutboxFull,
    RelayAuthError,
    RelayError,
    RelayRejected,
    RelayUnavailable,
    TokenError,
    WouldBlock,
)
from .protocol.fallback import ChannelSwitch
from .publisher import (
    CloseReport,
    DeliveryFailure,
    DualChannelPublisher,
    HealthPolicy,
    HeartbeatPolicy,
    OutboxPolicy,
    PrimaryPolicy,
    PublisherHealth,
    PublisherStats,
    RetryPolicy,
)
from .subscriber import DualChannelSubscriber, SubscriberStats, SubscriberStatus

__all__ = [
    "Channel",
    "ChannelError",
    "ChannelSwitch",
    "CloseReport",
    "ClosedError",
    "ConfigurationError",
    "DeliveryFailure",
    "DualChannelError",
    "DualChannelPublisher",
    "DualChannelSubscriber",
    "Envelope",
    "EnvelopeError",
    "EnvelopeTooLarge",
    "HealthPolicy",
    "HeartbeatPolicy",
    "InvalidSignature",
    "LiveKitError",
    "MessageType",
    "OutboxFull",
    "OutboxPolicy",
    "PrimaryPolicy",
    "Priority",
    "PublisherHealth",
    "PublisherStats",
    "RelayAuthError",
    "RelayError",
    "RelayRejected",
    "RelayUnavailable",
    "RetryPolicy",
    "Segment",
    "SubscriberStats",
    "SubscriberStatus",
    "TokenError",
    "TranscriptData",
    "WouldBlock",
    "__version__",
]
