"""What a chaos run found: the :class:`Report` and the relay's audit check.

A report is built from what the harness recorded (every delivery, every fallback event,
every fault with its injection and clearing time) and from the relay's SQLite file, read
directly after the run. ``to_json()`` gives the plain-JSON form the demo prints with
``--json`` and the bench aggregates; :func:`format_report` the human one.

Times are milliseconds. A switch's ``detection_ms`` is the switch's decision time minus
the injection time of the fault that caused it; ``recovery_ms`` is the time of the switch
back to the primary minus the time the fault was cleared; ``silent_ms`` is how long the
channel switched away from had been silent when the switch was decided.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AuditCheck",
    "FaultRecord",
    "GarbageResult",
    "Report",
    "SwitchRecord",
    "check_audit",
    "format_report",
]

# Statuses a webhook_logs row may end in (ingest.py and webhooks.py).
_FINAL_STATUSES = frozenset({"success", "duplicate", "rejected", "rate_limited"})


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One injected fault. ``channels``: which path it cut (primary, secondary, both, none).

    Times are ms since the stack started; ``cleared_ms`` is None until it was cleared.
    """

    name: str
    channels: str
    injected_ms: float
    cleared_ms: float | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SwitchRecord:
    """A change of the active channel; ``to_channel`` None means both channels are down."""

    at_ms: float
    from_channel: str | None
    to_channel: str | None
    reason: str
    silent_ms: float
    fault: str | None = None
    detection_ms: float | None = None
    recovery_ms: float | None = None


@dataclass(frozen=True, slots=True)
class GarbageResult:
    """One piece of garbage sent, what answered it, and what we expected."""

    channel: str
    kind: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.expected == self.got


@dataclass(frozen=True, slots=True)
class AuditCheck:
    """The relay's tables compared with what the publisher sent.

    ``stored``: ``messages`` rows for the session; ``expected``: messages sent.
    ``webhook_rows`` by status; ``processed_match``: the ids listed in the ``success``
    rows' ``processed_items`` are exactly the stored rows, each once. ``problems`` says
    what disagrees, in words; ``agrees`` is True when there is nothing to say.
    """

    expected: int
    stored: int
    webhook_rows: dict[str, int]
    processed_match: bool
    problems: tuple[str, ...]

    @property
    def agrees(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of one run; see the module docs for the units."""

    scenario: str
    duration_s: float
    rate: float
    sent: int
    delivered: int
    lost: int
    duplicates_delivered: int
    out_of_order: int
    switches: tuple[SwitchRecord, ...]
    recovery_ms: tuple[float, ...]
    false_switches: int
    latency_ms: dict[str, float | None]
    gaps: int
    backfilled: int
    duplicates_suppressed: dict[str, int]
    first_arrivals: dict[str, int]
    malformed: dict[str, int]
    foreign: dict[str, int]
    subscriber_lost: int
    faults: tuple[FaultRecord, ...]
    audit: AuditCheck | None
    publisher: dict[str, int]
    garbage: tuple[GarbageResult, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def detection_ms(self) -> tuple[float, ...]:
        return tuple(s.detection_ms for s in self.switches if s.detection_ms is not None)

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing twice, nothing out of order, the audit agrees, the
        garbage was refused as expected."""
        return (
            self.lost == 0
            and self.duplicates_delivered == 0
            and self.out_of_order == 0
            and (self.audit is None or self.audit.agrees)
            and all(g.ok for g in self.garbage)
        )

    def to_json(self) -> dict[str, Any]:
        value = asdict(self)
        value["detection_ms"] = list(self.detection_ms)
        if self.audit is not None:
            value["audit"]["agrees"] = self.audit.agrees
        for item, garbage in zip(value["garbage"], self.garbage, strict=True):
            item["ok"] = garbage.ok
        value["ok"] = self.ok
        return value

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), sort_keys=False)


def check_audit(
    database: Path,
    session_id: str,
    *,
    epoch: int,
    sent: int,
    expected_rejected: int = 0,
) -> AuditCheck:
    """Read the relay's SQLite file (read-only) and compare it with what was sent.

    Checks: the session's ``messages`` rows are exactly seqs ``1..sent`` of ``epoch``;
    every ``webhook_logs`` row reached a final status; the ``success`` rows of
    ``transcription`` list every stored row id exactly once in ``processed_items``; the
    ``rejected`` rows number ``expected_rejected`` (the garbage we posted for the session).
    """
    problems: list[str] = []
    uri = f"file:{database}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=10.0) as db:
        rows = db.execute(
            "SELECT id, epoch, seq FROM messages WHERE session_id = ? ORDER BY epoch, seq",
            (session_id,),
        ).fetchall()
        logs = db.execute(
            "SELECT webhook_type, status, processed_items FROM webhook_logs WHERE session_id = ?",
            (session_id,),
        ).fetchall()
    db.close()
    epochs = {int(r[1]) for r in rows}
    if epochs - {epoch}:
        problems.append(f"messages of other epochs stored: {sorted(epochs - {epoch})}")
    seqs = [int(r[2]) for r in rows if int(r[1]) == epoch]
    if seqs != list(range(1, sent + 1)):
        missing = sorted(set(range(1, sent + 1)) - set(seqs))
        extra = sorted(set(seqs) - set(range(1, sent + 1)))
        dupes = len(seqs) - len(set(seqs))
        problems.append(
            f"messages table holds {len(seqs)} rows for {sent} sent "
            f"(missing {_short(missing)}, unexpected {_short(extra)}, repeated {dupes})"
        )
    by_status: dict[str, int] = {}
    listed: list[int] = []
    for webhook_type, status, processed in logs:
        by_status[status] = by_status.get(status, 0) + 1
        if status not in _FINAL_STATUSES:
            problems.append(f"a webhook_logs row stayed {status!r}")
        if webhook_type == "transcription" and status == "success":
            listed.extend(int(i) for i in json.loads(processed or "[]"))
    ids = sorted(int(r[0]) for r in rows)
    processed_match = sorted(listed) == ids
    if not processed_match:
        problems.append(
            f"webhook_logs success rows list {len(listed)} row ids "
            f"({len(set(listed))} distinct) for {len(ids)} stored rows"
        )
    rejected = by_status.get("rejected", 0)
    if rejected != expected_rejected:
        problems.append(f"{rejected} rejected webhook rows, expected {expected_rejected}")
    return AuditCheck(
        expected=sent,
        stored=len(rows),
        webhook_rows=dict(sorted(by_status.items())),
        processed_match=processed_match,
        problems=tuple(problems),
    )


def _short(values: Sequence[int], limit: int = 8) -> str:
    if len(values) <= limit:
        return str(list(values))
    return f"{list(values[:limit])[:-1]} … ({len(values)} in all)"


def _channels(counts: Mapping[str, int]) -> str:
    return " · ".join(f"{name} {count}" for name, count in counts.items())


def format_report(report: Report) -> str:
    """The report as a few lines of text for a terminal."""
    verdict = "OK" if report.ok else "FAILED"
    lines = [
        f"{report.scenario}: {verdict}  ({report.duration_s:.1f} s at {report.rate:g} msg/s)",
        f"  sent {report.sent}  delivered {report.delivered}  lost {report.lost}  "
        f"duplicates delivered {report.duplicates_delivered}  "
        f"out of order {report.out_of_order}",
        f"  first arrivals: {_channels(report.first_arrivals)}",
        f"  duplicates suppressed: {_channels(report.duplicates_suppressed)}",
        f"  gaps backfilled: {report.backfilled} messages in {report.gaps} gaps",
    ]
    if any(report.malformed.values()) or any(report.foreign.values()):
        lines.append(
            f"  garbage dropped: malformed {_channels(report.malformed)}; "
            f"foreign session {_channels(report.foreign)}"
        )
    for fault in report.faults:
        cleared = (
            f", cleared at {fault.cleared_ms / 1000:.1f} s" if fault.cleared_ms is not None else ""
        )
        lines.append(
            f"  fault {fault.name} ({fault.channels}) at {fault.injected_ms / 1000:.1f} s{cleared}"
        )
    if not report.switches:
        lines.append("  switches: none")
    for switch in report.switches:
        to = switch.to_channel or "none (both down)"
        extra = []
        if switch.detection_ms is not None:
            extra.append(f"detected {switch.detection_ms:.0f} ms after the fault")
        if switch.recovery_ms is not None:
            extra.append(f"{switch.recovery_ms:.0f} ms after the fault cleared")
        if switch.silent_ms:
            extra.append(f"{switch.from_channel} silent {switch.silent_ms:.0f} ms")
        lines.append(
            f"  switch at {switch.at_ms / 1000:.1f} s: {switch.from_channel or 'none'} → {to}"
            + (f" ({'; '.join(extra)})" if extra else "")
        )
    for garbage in report.garbage:
        mark = "ok" if garbage.ok else "UNEXPECTED"
        lines.append(
            f"  garbage {garbage.channel}/{garbage.kind}: {garbage.got} "
            f"(expected {garbage.expected}) {mark}"
        )
    latency = report.latency_ms
    if latency.get("p50") is not None:
        lines.append(
            f"  latency (send call to delivery): p50 {latency['p50']:.0f} ms  "
            f"p99 {latency['p99']:.0f} ms  max {latency['max']:.0f} ms"
        )
    if report.false_switches:
        lines.append(f"  false switches (outside every fault): {report.false_switches}")
    audit = report.audit
    if audit is not None:
        lines.append(
            f"  relay audit: {audit.stored} messages stored for {audit.expected} sent; "
            "webhook rows "
            + ", ".join(f"{k} {v}" for k, v in audit.webhook_rows.items())
            + ("; agrees" if audit.agrees else "; DISAGREES: " + "; ".join(audit.problems))
        )
    lines.extend(f"  note: {note}" for note in report.notes)
    return "\n".join(lines)
