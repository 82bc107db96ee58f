"""Small builders shared by the tests."""

from __future__ import annotations

from datetime import UTC, datetime

from dualchannel.envelope import Envelope

SESSION = "lesson-42"
EPOCH = 1_764_873_600_000
_TS = datetime(2026, 12, 4, 19, 0, tzinfo=UTC)


def transcript(seq: int, *, epoch: int = EPOCH, session: str = SESSION, text: str = "") -> Envelope:
    """A valid transcript envelope for ``seq``."""
    return Envelope.transcript(
        session_id=session,
        epoch=epoch,
        seq=seq,
        segments=[{"type": "text", "content": text or f"segment {seq}"}],
        speaker="teacher",
        timestamp=_TS,
    )


def heartbeat(last_seq: int, *, epoch: int = EPOCH, session: str = SESSION) -> Envelope:
    return Envelope.heartbeat(session_id=session, epoch=epoch, last_seq=last_seq, timestamp=_TS)
