"""Standard Webhooks signature verification (``webhook-id/-timestamp/-signature``).

The signed content is ``"{webhook-id}.{webhook-timestamp}.{raw body}"``, HMAC-SHA256 with
the secret's decoded bytes, sent as ``v1,<base64>``. The header may carry several
space-separated signatures and the relay may hold several secrets (key rotation): one
match between any of them is enough. The timestamp must be within the tolerance (±5 min)
of the relay's clock. Interoperates with the ``standardwebhooks`` reference library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence

from .config import WebhookSecret

__all__ = ["SignatureError", "sign", "verify"]


class SignatureError(Exception):
    """The request's signature headers are missing, stale or match no secret."""


def sign(secret: WebhookSecret, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of ``body`` (what a sender puts in the header)."""
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.key, to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secrets: Sequence[WebhookSecret],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float,
) -> None:
    """Raise :class:`SignatureError` unless one signature matches one secret."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    header = headers.get("webhook-signature")
    if not (msg_id and stamp and header):
        raise SignatureError(
            "missing webhook-id, webhook-timestamp or webhook-signature header"
        )
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer of seconds") from None
    if not math.isfinite(now) or abs(now - timestamp) > tolerance:
        raise SignatureError(
            f"webhook-timestamp is more than {tolerance:.0f} s from the relay's clock"
        )
    offered = [part.encode() for part in header.split() if part.startswith("v1,")]
    for secret in secrets:
        expected = sign(secret, msg_id, timestamp, body).encode()
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return
    raise SignatureError("no webhook-signature matches a configured secret")
