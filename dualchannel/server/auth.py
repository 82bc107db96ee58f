"""Subscriber authentication: a LiveKit access token whose room is the session.

The same credential a frontend uses to join the LiveKit room opens the relay's stream
for that room: ``Authorization: Bearer <token>`` (or ``?token=`` for a browser
``EventSource``, which cannot set headers). The token is verified with livekit-api's
``TokenVerifier`` and the relay's API key and secret, and must grant ``roomJoin`` and
``canSubscribe`` for a room equal to the session id.

In ``--dev`` mode a request without a token is let through; a token that is presented is
still checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt
from livekit.api import TokenVerifier
from starlette.requests import Request

__all__ = ["AuthFailure", "SubscriberAuth"]


@dataclass(frozen=True, slots=True)
class AuthFailure:
    status: int
    error: str
    message: str


class SubscriberAuth:
    def __init__(self, api_key: str | None, api_secret: str | None, *, dev: bool) -> None:
        self._verifier = TokenVerifier(api_key, api_secret) if api_key and api_secret else None
        self._dev = dev

    def check(self, request: Request, session_id: str) -> AuthFailure | None:
        """``None`` when the request may read ``session_id``, else why not."""
        token = _token(request)
        if token is None:
            if self._dev:
                return None
            return AuthFailure(
                401,
                "missing_token",
                "send 'Authorization: Bearer <LiveKit access token>' (or ?token=) "
                "for this session's room",
            )
        if self._verifier is None:
            # --dev without LiveKit credentials: nothing to verify a token against.
            return None
        try:
            claims = self._verifier.verify(token)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            return AuthFailure(
                401,
                "invalid_token",
                f"the access token was not accepted ({exc}); mint one with this relay's "
                "LiveKit API key and secret",
            )
        video = claims.video
        if video is None or video.room != session_id:
            return AuthFailure(
                403,
                "wrong_room",
                f"the token is for room {getattr(video, 'room', '')!r}, not session "
                f"{session_id!r}; mint a token whose room is the session id",
            )
        if not video.room_join or not video.can_subscribe:
            return AuthFailure(
                403,
                "missing_grant",
                "the token must grant roomJoin and canSubscribe for this room",
            )
        return None


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.query_params.get("token") or None
