"""The I/O adapters: each edge is a small Protocol with a real and an in-memory twin.

- :mod:`.livekit`: :class:`DataLink` — :class:`LiveKitLink` (a ``livekit.rtc.Room``) and
  :class:`MemoryHub` / :class:`MemoryLink`.
- :mod:`.webhook`: :class:`WebhookSender` — :class:`HttpxWebhookSender` and
  :class:`MemoryRelay` (served through ``httpx.MockTransport``).
- :mod:`.outbox`: the pure outbox and rate budget the publisher drains the webhook with.

Third-party errors are converted here into the :mod:`dualchannel.errors` tree.
"""

from .livekit import DataLink, LinkState, LiveKitLink, MemoryHub, MemoryLink
from .outbox import Outbox, OutboxPolicy, RateBudget, RateLimitInfo
from .webhook import HttpxWebhookSender, MemoryRelay, WebhookResponse, WebhookSender

__all__ = [
    "DataLink",
    "HttpxWebhookSender",
    "LinkState",
    "LiveKitLink",
    "MemoryHub",
    "MemoryLink",
    "MemoryRelay",
    "Outbox",
    "OutboxPolicy",
    "RateBudget",
    "RateLimitInfo",
    "WebhookResponse",
    "WebhookSender",
]
