"""Standard Webhooks signatures, pure functions shared by the publisher and the relay.

The publisher signs every webhook POST; the relay verifies it. Both sides use this module,
so there is one definition of the scheme (https://www.standardwebhooks.com/)::

    webhook-id:        msg_…        the same for every retry of the same payload
    webhook-timestamp: 1764873600   unix seconds, fresh on every attempt
    webhook-signature: v1,<base64(hmac_sha256(key, f"{id}.{timestamp}.".encode() + body))>

The secret is ``whsec_<base64 key>``, as the ``standardwebhooks`` library reads it; the test
suite proves interoperability by verifying with ``standardwebhooks.webhooks.Webhook``.

Nothing here reads a clock: ``timestamp`` and ``now`` are arguments (unix seconds).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence

from .errors import InvalidSignature

__all__ = [
    "DEFAULT_TOLERANCE",
    "SECRET_PREFIX",
    "InvalidSignature",
    "WebhookSigner",
    "decode_secret",
    "generate_secret",
    "message_id",
    "sign",
    "verify",
]

#: The prefix of a Standard Webhooks secret.
SECRET_PREFIX = "whsec_"
#: How far (seconds) a ``webhook-timestamp`` may be from the verifier's clock.
DEFAULT_TOLERANCE = 300.0


def generate_secret(nbytes: int = 24) -> str:
    """A fresh random secret in the ``whsec_<base64>`` form."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def decode_secret(secret: str | bytes) -> bytes:
    """The HMAC key of a secret: ``whsec_<base64>`` or bare base64 text, or raw key bytes."""
    if isinstance(secret, bytes):
        key = secret
    else:
        text = secret.removeprefix(SECRET_PREFIX)
        try:
            # Padding is added the way standardwebhooks does, for unpadded secrets.
            key = base64.b64decode(text + "==")
        except (binascii.Error, ValueError) as exc:
            raise ValueError("webhook secret is not whsec_<base64>") from exc
    if not key:
        raise ValueError("webhook secret may not be empty")
    return key


def message_id(body: bytes) -> str:
    """A ``webhook-id`` derived from the payload, so every retry of it carries the same id."""
    return "msg_" + hashlib.sha256(body).hexdigest()[:32]


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of ``body`` for this id and timestamp."""
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    key: bytes | Sequence[bytes],
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> str:
    """Check a request's Standard Webhooks headers; return its ``webhook-id``.

    ``key`` may be several keys (rotation): one match with any is enough. ``headers`` may
    use any case. Raises :class:`InvalidSignature` when a header is missing,
    the timestamp is more than ``tolerance`` seconds from ``now``, or no ``v1`` signature
    in the (space-separated) ``webhook-signature`` list matches.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    stamp = lower.get("webhook-timestamp")
    signatures = lower.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise InvalidSignature(f"webhook-timestamp is not unix seconds: {stamp!r}") from None
    if abs(now - timestamp) > tolerance:
        raise InvalidSignature(
            f"webhook-timestamp is {now - timestamp:+.0f}s from now (tolerance {tolerance:.0f}s)"
        )
    offered = [part.encode() for part in signatures.split() if part.startswith("v1,")]
    for one in [key] if isinstance(key, bytes) else key:
        expected = sign(one, msg_id, timestamp, body).encode()
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return msg_id
    raise InvalidSignature("no matching signature")


class WebhookSigner:
    """A decoded secret with the two operations each side needs."""

    __slots__ = ("_key",)

    def __init__(self, secret: str | bytes) -> None:
        self._key = decode_secret(secret)

    def __repr__(self) -> str:
        return "WebhookSigner(<secret>)"

    def headers(self, body: bytes, *, timestamp: int, msg_id: str | None = None) -> dict[str, str]:
        """The three ``webhook-*`` headers for ``body`` (id derived from it unless given)."""
        ident = msg_id or message_id(body)
        return {
            "webhook-id": ident,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, ident, timestamp, body),
        }

    def verify(
        self,
        body: bytes,
        headers: Mapping[str, str],
        *,
        now: float,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> str:
        """See :func:`verify`."""
        return verify(self._key, body, headers, now=now, tolerance=tolerance)
