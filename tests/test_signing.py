"""Standard Webhooks signing: our signatures verify with the reference library and back."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dualchannel.signing import (
    InvalidSignature,
    WebhookSigner,
    decode_secret,
    generate_secret,
    message_id,
    sign,
    verify,
)

BODY = b'{"type":"transcript","sessionId":"lesson-42","seq":1}'


def test_reference_library_verifies_our_signature() -> None:
    secret = generate_secret()
    headers = WebhookSigner(secret).headers(BODY, timestamp=int(time.time()))
    assert Webhook(secret).verify(BODY, headers) == {
        "type": "transcript",
        "sessionId": "lesson-42",
        "seq": 1,
    }


def test_we_verify_the_reference_librarys_signature() -> None:
    secret = generate_secret()
    now = datetime.now(UTC)
    signature = Webhook(secret).sign("msg_abc", now, BODY)
    headers = {
        "Webhook-Id": "msg_abc",
        "Webhook-Timestamp": str(int(now.timestamp())),
        "Webhook-Signature": signature,
    }
    assert WebhookSigner(secret).verify(BODY, headers, now=now.timestamp()) == "msg_abc"


def test_tampered_body_fails_both_verifiers() -> None:
    secret = generate_secret()
    headers = WebhookSigner(secret).headers(BODY, timestamp=int(time.time()))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", headers)
    with pytest.raises(InvalidSignature, match="no matching signature"):
        WebhookSigner(secret).verify(BODY + b" ", headers, now=time.time())


def test_message_id_is_stable_per_payload_and_timestamp_is_checked() -> None:
    signer = WebhookSigner(generate_secret())
    first = signer.headers(BODY, timestamp=1_000)
    retry = signer.headers(BODY, timestamp=1_007)
    assert first["webhook-id"] == retry["webhook-id"] == message_id(BODY)
    assert first["webhook-signature"] != retry["webhook-signature"]
    assert message_id(BODY + b"x") != message_id(BODY)
    signer.verify(BODY, retry, now=1_007 + 299)
    with pytest.raises(InvalidSignature, match="tolerance"):
        signer.verify(BODY, retry, now=1_007 + 301)


def test_missing_headers_and_key_rotation() -> None:
    old, new = decode_secret(generate_secret()), decode_secret(generate_secret())
    with pytest.raises(InvalidSignature, match="missing"):
        verify(new, BODY, {"webhook-id": "msg_1"}, now=0)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": "100",
        "webhook-signature": "v0,ignored " + sign(old, "msg_1", 100, BODY),
    }
    assert verify([new, old], BODY, headers, now=100) == "msg_1"
    with pytest.raises(InvalidSignature):
        verify(new, BODY, headers, now=100)


def test_secret_forms() -> None:
    secret = generate_secret()
    key = decode_secret(secret)
    assert decode_secret(secret.removeprefix("whsec_")) == key
    assert decode_secret(key) == key
    assert repr(WebhookSigner(secret)) == "WebhookSigner(<secret>)"
    with pytest.raises(ValueError, match="empty"):
        decode_secret("whsec_")
