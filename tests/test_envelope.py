from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dualchannel import Channel, Envelope, EnvelopeError, EnvelopeTooLarge, MessageType, Priority
from dualchannel.envelope import format_timestamp
from dualchannel.errors import DualChannelError

from .helpers import heartbeat, transcript

SPEC_EXAMPLE = (
    b'{"type":"transcript","sessionId":"lesson-42","epoch":1764873600000,"seq":1,'
    b'"timestamp":"2026-12-04T19:00:00.000Z","priority":"normal","data":{"segments":'
    b'[{"type":"text","content":"Hello","confidence":0.98}],"speaker":"teacher",'
    b'"timestamp":"2026-12-04T19:00:00.000Z"},"source":"livekit-agent","version":"1.0.0"}'
)


def test_spec_example_round_trips_byte_for_byte() -> None:
    envelope = Envelope.from_bytes(SPEC_EXAMPLE)
    assert envelope.session_id == "lesson-42"
    assert envelope.epoch == 1764873600000
    assert envelope.seq == 1
    assert envelope.type is MessageType.TRANSCRIPT
    assert envelope.priority is Priority.NORMAL
    assert envelope.transcript_data().segments[0].content == "Hello"
    assert envelope.to_bytes() == SPEC_EXAMPLE


def test_python_names_are_snake_case_and_wire_names_camel_case() -> None:
    envelope = transcript(3)
    wire = json.loads(envelope.to_bytes())
    assert "sessionId" in wire and "session_id" not in wire
    assert Envelope.from_json_value(wire) == envelope
    assert envelope.key == ("lesson-42", envelope.epoch, 3)


def test_heartbeat_carries_last_seq_and_no_data() -> None:
    beat = heartbeat(7)
    assert beat.is_heartbeat and beat.seq == 7 and beat.data is None
    assert "data" not in json.loads(beat.to_bytes())
    assert heartbeat(0).seq == 0  # before the first message


@pytest.mark.parametrize(
    ("mutate", "field", "rule"),
    [
        (lambda d: d.pop("sessionId"), "sessionId", "Field required"),
        (lambda d: d.update(sessionId="has space"), "sessionId", "pattern"),
        (lambda d: d.update(sessionId=""), "sessionId", "pattern"),
        (lambda d: d.update(seq="1"), "seq", "integer"),
        (lambda d: d.update(seq=-1), "seq", "greater than or equal"),
        (lambda d: d.update(epoch=1.5), "epoch", "integer"),
        (lambda d: d.update(priority="urgent"), "priority", "normal"),
        (lambda d: d.update(type="video"), "type", "transcript"),
        (lambda d: d.update(timestamp="yesterday"), "timestamp", "datetime"),
        (lambda d: d["data"]["segments"][0].update(type="video"), "data", "segments.0.type"),
        (lambda d: d["data"]["segments"][0].update(confidence=2), "data", "confidence"),
        (lambda d: d["data"].pop("speaker"), "data", "speaker"),
        (lambda d: d.update(extra=1), "extra", "not permitted"),
    ],
)
def test_bad_fields_name_the_field_and_the_rule(mutate, field, rule) -> None:  # type: ignore[no-untyped-def]
    wire = json.loads(SPEC_EXAMPLE)
    mutate(wire)
    with pytest.raises(EnvelopeError) as info:
        Envelope.from_bytes(json.dumps(wire).encode())
    assert any(f == field and rule in r for f, r in info.value.problems), info.value.problems
    assert field in str(info.value)
    assert isinstance(info.value, DualChannelError)


def test_message_seq_starts_at_one() -> None:
    wire = json.loads(SPEC_EXAMPLE)
    wire["seq"] = 0
    with pytest.raises(EnvelopeError, match="seq must be at least 1"):
        Envelope.from_bytes(json.dumps(wire))


def test_heartbeat_with_data_is_refused() -> None:
    wire = json.loads(heartbeat(1).to_bytes())
    wire["data"] = {"x": 1}
    with pytest.raises(EnvelopeError, match="heartbeat carries no data"):
        Envelope.from_json_value(wire)


@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]", b"null", b"\xff\xfe"])
def test_malformed_json_is_an_envelope_error(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_bytes(raw)


def test_size_cap_on_decode_and_encode() -> None:
    big = transcript(1, text="x" * 20_000)
    with pytest.raises(EnvelopeTooLarge) as info:
        big.to_bytes()
    assert info.value.limit == 15_000 and info.value.size > 20_000
    raw = big.to_bytes(max_size=None)
    with pytest.raises(EnvelopeTooLarge, match="15000-byte cap"):
        Envelope.from_bytes(raw)
    assert Envelope.from_bytes(raw, max_size=len(raw)) == big
    with pytest.raises(EnvelopeTooLarge):
        Envelope.from_json_value(json.loads(raw))


def test_naive_timestamps_are_taken_as_utc() -> None:
    wire = json.loads(SPEC_EXAMPLE)
    wire["timestamp"] = "2026-12-04T19:00:00"
    envelope = Envelope.from_json_value(wire)
    assert envelope.timestamp.utcoffset() is not None
    assert json.loads(envelope.to_bytes())["timestamp"] == "2026-12-04T19:00:00.000Z"


def test_channel_is_a_str_enum() -> None:
    assert Channel.PRIMARY == "primary" and Channel.SECONDARY == "secondary"


def test_transcript_data_of_other_types_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="not a transcript"):
        heartbeat(1).transcript_data()


def test_the_encoding_is_cached_but_not_part_of_identity() -> None:
    a, b = transcript(1), transcript(1)
    assert a.to_bytes() is a.to_bytes()  # encoded once
    assert a == b  # b never encoded: equality is about fields only
    moved = a.model_copy(update={"seq": 2})
    assert json.loads(moved.to_bytes())["seq"] == 2


@given(
    moment=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none()
    ),
    offset_minutes=st.one_of(st.none(), st.integers(min_value=-23 * 60, max_value=23 * 60)),
)
def test_format_timestamp_is_utc_with_milliseconds(
    moment: datetime, offset_minutes: int | None
) -> None:
    if offset_minutes is not None:
        moment = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    in_utc = moment.astimezone(UTC) if moment.tzinfo is not None else moment
    expected = in_utc.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
    assert format_timestamp(moment) == expected
