"""The message every load benchmark sends: a spec-shaped transcript envelope.

The send time (``time.monotonic_ns()``, a clock every process on the machine shares) rides
in the first segment's text as ``"t=<ns>"``, so a subscriber can compute POST-to-SSE
latency from the bytes it receives, whatever wraps the envelope (the relay's SSE ``data``
line or Centrifugo's publication push). Bodies are formatted from a template: building
them with pydantic would make the generator, not the server, the bottleneck.
"""

from __future__ import annotations

import re
import time

__all__ = ["MARKER", "batch_body", "envelope_json", "sent_times"]

_TEMPLATE = (
    '{{"type":"transcript","sessionId":"{session}","epoch":{epoch},"seq":{seq},'
    '"timestamp":"2026-12-04T19:00:00.000Z","priority":"normal","data":{{"segments":'
    '[{{"type":"text","content":"t={sent} so the derivative of x squared is two x",'
    '"confidence":0.98}}],"speaker":"teacher","timestamp":"2026-12-04T19:00:00.000Z"}},'
    '"source":"livekit-agent","version":"1.0.0"}}'
)

#: Finds the send times in received bytes.
MARKER = re.compile(rb'"t=(\d+) ')


def envelope_json(session: str, epoch: int, seq: int, sent_ns: int | None = None) -> str:
    sent = time.monotonic_ns() if sent_ns is None else sent_ns
    return _TEMPLATE.format(session=session, epoch=epoch, seq=seq, sent=sent)


def batch_body(session: str, epoch: int, first_seq: int, count: int) -> bytes:
    sent = time.monotonic_ns()
    items = ",".join(envelope_json(session, epoch, first_seq + i, sent) for i in range(count))
    return f"[{items}]".encode()


def sent_times(data: bytes) -> list[int]:
    """Every send time (ns) found in ``data``."""
    return [int(m) for m in MARKER.findall(data)]
