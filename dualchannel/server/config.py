"""The relay's settings: one frozen object, checked once, read everywhere.

:class:`RelayConfig` holds every knob of :func:`dualchannel.server.create_app`; seconds are
floats, sizes are bytes. It is built (and validated) by the app factory and by
``dualchannel serve``; the rest of the server only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from limits import parse as parse_rate

from ..errors import ConfigurationError
from ..signing import decode_secret

__all__ = [
    "DEFAULT_DATABASE_URL",
    "RelayConfig",
    "WebhookSecret",
    "normalize_database_url",
    "parse_webhook_secret",
]

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///dualchannel.db"


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    """One Standard Webhooks signing key, decoded from ``whsec_<base64>``."""

    key: bytes = field(repr=False)


def parse_webhook_secret(text: str) -> WebhookSecret:
    """Decode a ``whsec_<base64>`` secret (the prefix is optional, as in ``standardwebhooks``)."""
    try:
        return WebhookSecret(decode_secret(text.strip()))
    except ValueError as exc:
        raise ConfigurationError(f"--webhook-secret: {exc}; expected 'whsec_<base64 key>'") from exc


def normalize_database_url(url: str) -> str:
    """Rewrite a synchronous SQLite URL (``sqlite:///x.db``) to its aiosqlite form."""
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.removeprefix("sqlite://")
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    return url


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    """Everything the relay needs to know. Build with :meth:`RelayConfig.create`."""

    database_url: str = DEFAULT_DATABASE_URL
    webhook_secrets: tuple[WebhookSecret, ...] = ()
    signature_tolerance: float = 300.0
    livekit_api_key: str | None = None
    livekit_api_secret: str | None = field(default=None, repr=False)
    dev: bool = False
    retention: float = 86_400.0
    purge_interval: float = 60.0
    rate_limit: str = "100/minute"
    max_body_bytes: int = 262_144
    max_batch: int = 100
    max_envelope_bytes: int = 15_000
    heartbeat_interval: float = 1.0
    retry_hint_ms: int = 1_000
    subscriber_queue: int = 1_000
    replay_page: int = 500
    commit_window: float = 0.0
    commit_max_items: int = 500
    send_timeout: float = 10.0

    @classmethod
    def create(
        cls,
        *,
        webhook_secret: str | None = None,
        webhook_secrets: list[str] | tuple[str, ...] | None = None,
        **settings: object,
    ) -> RelayConfig:
        """Validate settings; ``webhook_secret``/``webhook_secrets`` are ``whsec_`` strings."""
        texts = [*(webhook_secrets or ()), *([webhook_secret] if webhook_secret else [])]
        secrets = tuple(parse_webhook_secret(t) for t in texts)
        url = settings.pop("database_url", DEFAULT_DATABASE_URL)
        if not isinstance(url, str):
            raise ConfigurationError("database_url must be a string")
        config = cls(
            database_url=normalize_database_url(url),
            webhook_secrets=secrets,
            **settings,  # type: ignore[arg-type]
        )
        config.check()
        return config

    def check(self) -> None:
        """Raise :class:`ConfigurationError` naming the setting that is wrong."""
        if not self.dev and not (self.livekit_api_key and self.livekit_api_secret):
            raise ConfigurationError(
                "subscriber auth needs --livekit-api-key and --livekit-api-secret "
                "(or DUALCHANNEL_LIVEKIT_API_KEY/_SECRET); pass --dev to run without"
            )
        if bool(self.livekit_api_key) != bool(self.livekit_api_secret):
            raise ConfigurationError(
                "set both --livekit-api-key and --livekit-api-secret, or neither"
            )
        try:
            parse_rate(self.rate_limit)
        except ValueError as exc:
            raise ConfigurationError(
                f"--rate-limit {self.rate_limit!r} is not a rate like '100/minute'"
            ) from exc
        positive = {
            "retention": self.retention,
            "purge_interval": self.purge_interval,
            "max_body_bytes": self.max_body_bytes,
            "max_batch": self.max_batch,
            "max_envelope_bytes": self.max_envelope_bytes,
            "heartbeat_interval": self.heartbeat_interval,
            "subscriber_queue": self.subscriber_queue,
            "replay_page": self.replay_page,
            "commit_max_items": self.commit_max_items,
            "send_timeout": self.send_timeout,
            "signature_tolerance": self.signature_tolerance,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigurationError(f"{name} must be positive, got {value!r}")
        if self.commit_window < 0 or self.retry_hint_ms < 0:
            raise ConfigurationError("commit_window and retry_hint_ms must not be negative")
