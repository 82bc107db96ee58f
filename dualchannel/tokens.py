"""LiveKit access tokens: mint one to join a room, verify one against a key pair.

Thin, typed wrappers over ``livekit.api.AccessToken`` and ``TokenVerifier`` with the grants
dualchannel needs (join one room, publish/subscribe data). ``livekit-api`` signs with PyJWT,
which emits ``InsecureKeyLengthWarning`` for a secret under 32 bytes: use a longer secret
(the dev server's :data:`~dualchannel.devserver.DEV_API_SECRET` is one).
"""

from __future__ import annotations

from datetime import timedelta

import jwt
from livekit import api

from .errors import ConfigurationError, TokenError

__all__ = ["TokenError", "mint_token", "verify_token"]


def mint_token(
    *,
    api_key: str,
    api_secret: str,
    identity: str,
    room: str,
    name: str | None = None,
    ttl: float = 3600.0,
    can_publish: bool = True,
    can_subscribe: bool = True,
    can_publish_data: bool = True,
) -> str:
    """A signed JWT that lets ``identity`` join ``room`` for ``ttl`` seconds.

    Raises :class:`ConfigurationError` for an empty key, secret, identity or room, or a
    ``ttl`` that is not positive. Nothing is read from the environment.
    """
    for field, value in (
        ("api_key", api_key),
        ("api_secret", api_secret),
        ("identity", identity),
        ("room", room),
    ):
        if not value:
            raise ConfigurationError(f"{field} must not be empty to mint a LiveKit token")
    if not ttl > 0:
        raise ConfigurationError(f"ttl must be positive seconds, got {ttl!r}")
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=can_publish,
        can_subscribe=can_subscribe,
        can_publish_data=can_publish_data,
    )
    token = (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_ttl(timedelta(seconds=ttl))
        .with_grants(grants)
    )
    if name is not None:
        token = token.with_name(name)
    return token.to_jwt()


def verify_token(token: str, *, api_key: str, api_secret: str) -> api.access_token.Claims:
    """Check ``token``'s signature, issuer and expiry; return its claims.

    Raises :class:`TokenError` when the token is malformed, expired, issued for another key
    or signed with another secret.
    """
    if not api_key or not api_secret:
        # TokenVerifier would fall back to LIVEKIT_API_KEY/SECRET from the environment.
        raise ConfigurationError("api_key and api_secret must not be empty to verify a token")
    verifier = api.TokenVerifier(api_key, api_secret)
    try:
        return verifier.verify(token)
    except jwt.PyJWTError as exc:
        raise TokenError(f"LiveKit token rejected: {exc}") from exc
