"""The whole product on loopback, with a steady stream and a recorder: :class:`Stack`.

::

    async with Stack(StackConfig(rate=20), progress=print) as stack:
        await stack.wait_flowing()
        await PausePrimary(3.0).run(stack)
        report = await stack.finish()

Entering starts, in order: the pinned livekit-server (:class:`LiveKitDevServer`, built
first by ``ensure_livekit_server()`` if missing), a relay (:class:`RelayProcess`) on a
SQLite file in the work directory with a webhook secret and the dev LiveKit keys, an
optional :class:`~dualchannel.chaos.proxy.FaultProxy` in front of it, the agent's
``rtc.Room`` (identity ``agent``) with a :class:`DualChannelPublisher`, a
:class:`DualChannelSubscriber` (its own room and the relay's SSE stream), then four tasks:
a producer sending ``rate`` messages a second, a delivery recorder, an event recorder
(switches, with detection and recovery times matched to the faults) and, if asked, a
progress line every second.

Faults (:mod:`dualchannel.chaos.faults`) call :meth:`Stack.fault_started` and
:meth:`Stack.fault_cleared` around what they do. :meth:`Stack.finish` stops the producer,
waits (bounded) until everything sent was delivered, closes the publisher, reads the
relay's audit tables and returns the :class:`~dualchannel.chaos.report.Report`.

Leaving stops everything this stack started, by pid, and removes a work directory it
created. Every wait is bounded; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus
from livekit import rtc

from ..channels.livekit import LinkState
from ..devserver import DEV_API_KEY, DEV_API_SECRET, LiveKitDevServer, ensure_livekit_server
from ..envelope import Channel
from ..errors import ClosedError, OutboxFull
from ..protocol import BothDown, ChannelDown, ChannelRecovered, ChannelSwitch, MessageLost
from ..protocol.fallback import FallbackPolicy
from ..publisher import CloseReport, DualChannelPublisher, HeartbeatPolicy
from ..server.process import RelayProcess
from ..subscriber import DualChannelSubscriber
from ..tokens import mint_token
from .lesson import lesson_segments
from .proxy import FaultProxy
from .report import FaultRecord, GarbageResult, Report, SwitchRecord, check_audit

__all__ = ["WEBHOOK_SECRET", "Delivery", "ProgressFn", "Stack", "StackConfig"]

logger = logging.getLogger("dualchannel.chaos")

#: The webhook secret the stack's relay verifies and its publisher signs with.
WEBHOOK_SECRET = "whsec_ZHVhbGNoYW5uZWwtY2hhb3MtaGFybmVzcy1zZWNyZXQ="

ProgressFn = Callable[[str], None]
SegmentsFn = Callable[[int], Sequence[Any]]

P, S = Channel.PRIMARY, Channel.SECONDARY


@dataclass(frozen=True, slots=True, kw_only=True)
class StackConfig:
    """How a :class:`Stack` runs.

    ``rate``: messages per second from the producer. ``proxy``: put a
    :class:`FaultProxy` between the publisher and the relay. ``relay_args``: extra
    ``dualchannel serve`` flags. ``work_dir``: where logs and the database go (a temporary
    directory, removed at exit, when None). ``segments``: the content of message ``seq``.
    ``progress_interval``: seconds between progress lines (None: only events).
    """

    session_id: str = "chaos-lesson"
    rate: float = 20.0
    proxy: bool = False
    relay_args: tuple[str, ...] = ()
    heartbeat: HeartbeatPolicy = field(default_factory=HeartbeatPolicy)
    fallback: FallbackPolicy = field(default_factory=FallbackPolicy)
    work_dir: Path | None = None
    keep_work_dir: bool = False
    startup_timeout: float = 30.0
    segments: SegmentsFn = lesson_segments
    progress_interval: float | None = 1.0
    scenario: str = "stack"

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("StackConfig.rate must be positive")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One envelope handed to the application; ``channel``: which one brought it first
    (None when a batch of deliveries mixed both)."""

    epoch: int
    seq: int
    at: float
    channel: Channel | None


class Stack:
    """LiveKit, relay, publisher, subscriber, producer and recorder; see the module docs."""

    livekit: LiveKitDevServer
    relay: RelayProcess
    proxy: FaultProxy | None
    agent_room: rtc.Room
    publisher: DualChannelPublisher
    subscriber: DualChannelSubscriber

    def __init__(
        self, config: StackConfig | None = None, *, progress: ProgressFn | None = None
    ) -> None:
        self.config = config or StackConfig()
        self._progress = progress
        self._t0 = time.monotonic()
        self._exit: AsyncExitStack | None = None
        self._group: TaskGroup | None = None
        self._producer: anyio.CancelScope | None = None
        self.work_dir: Path = Path()
        self.proxy = None
        self.deliveries: list[Delivery] = []
        self.switches: list[SwitchRecord] = []
        self.faults: list[FaultRecord] = []
        self.garbage: list[GarbageResult] = []
        self.lost_events: list[MessageLost] = []
        self.notes: list[str] = []
        self.expected_rejected = 0
        self.warm_at: float | None = None
        self.agent_events: list[tuple[float, str]] = []
        self._agent_reconnected = anyio.Event()
        self._active: Channel | None = P
        self._last_down: dict[Channel, ChannelDown] = {}
        self._first_seen = dict.fromkeys(Channel, 0)
        self._outbox_full = 0
        self._startup_switches = 0
        self._closing = False
        self._close_requested = anyio.Event()
        self._publisher_closed = anyio.Event()
        self._close_report: CloseReport | None = None
        self._drain_timeout = 5.0

    # -- time ----------------------------------------------------------------------------

    def ms(self, at: float | None = None) -> float:
        """Milliseconds since the stack started (``at``: a ``time.monotonic()`` value)."""
        return ((time.monotonic() if at is None else at) - self._t0) * 1000.0

    def say(self, line: str) -> None:
        """Emit a progress line, stamped with the run time."""
        if self._progress is not None:
            self._progress(f"{self.ms() / 1000:6.1f} s  {line}")

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._t0 = time.monotonic()
        self._exit = AsyncExitStack()
        try:
            await self._start(self._exit)  # each step is bounded on its own
        except BaseException:
            await self._exit.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        exit_stack, self._exit = self._exit, None
        self._closing = True
        if exit_stack is not None:
            await exit_stack.aclose()

    async def _start(self, stack: AsyncExitStack) -> None:
        config = self.config
        if config.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="dualchannel-chaos-"))
            if not config.keep_work_dir:
                stack.callback(shutil.rmtree, self.work_dir, ignore_errors=True)
        else:
            self.work_dir = config.work_dir
            self.work_dir.mkdir(parents=True, exist_ok=True)

        binary = await anyio.to_thread.run_sync(ensure_livekit_server)
        self.livekit = LiveKitDevServer(
            binary=binary,
            work_dir=self.work_dir / "livekit",
            startup_timeout=config.startup_timeout,
        )
        await anyio.to_thread.run_sync(self.livekit.start)
        stack.push_async_callback(anyio.to_thread.run_sync, self.livekit.stop)

        self.relay = RelayProcess(
            self.work_dir / "relay.db",
            dev=False,
            webhook_secret=WEBHOOK_SECRET,
            livekit_api_key=DEV_API_KEY,
            livekit_api_secret=DEV_API_SECRET,
            extra_args=list(config.relay_args),
            startup_timeout=config.startup_timeout,
        )
        await anyio.to_thread.run_sync(self.relay.start)
        stack.callback(self.relay.kill)
        self.say(
            f"livekit-server pid {self.livekit.pid} on {self.livekit.url}; "
            f"relay pid {self.relay.pid} on {self.relay.url}"
        )

        relay_for_publisher = self.relay.url
        if config.proxy:
            self.proxy = await stack.enter_async_context(FaultProxy(self.relay.url))
            relay_for_publisher = self.proxy.url

        self.agent_room = rtc.Room()
        self._watch_agent_room(self.agent_room)
        with anyio.fail_after(config.startup_timeout):
            await self.agent_room.connect(self.livekit.url, self.token("agent"))
        stack.push_async_callback(self._disconnect_agent_room)

        # The publisher lives in a task of its own: its aclose() cancels the task group
        # it entered, which would cancel whoever sits inside its `async with`.
        group = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(group.cancel_scope.cancel)
        stack.push_async_callback(self._close_publisher, 1.0)
        self._group = group
        with anyio.fail_after(config.startup_timeout):
            await group.start(self._host_publisher, relay_for_publisher)

        consumer_token = self.token("consumer")
        self.subscriber = await stack.enter_async_context(
            DualChannelSubscriber(
                config.session_id,
                livekit_url=self.livekit.url,
                livekit_token=consumer_token,
                publisher_identity="agent",
                relay_url=self.relay.url,
                relay_token=consumer_token,
                fallback=config.fallback,
            )
        )
        events = self.subscriber.events()
        stack.push_async_callback(events.aclose)

        group.start_soon(self._record_events, events)
        group.start_soon(self._record_deliveries)
        if self._progress is not None and config.progress_interval:
            group.start_soon(self._report_progress, config.progress_interval)

        # Start sending once the subscriber's room is in (what it misses before is
        # backfilled anyway, but a clean start keeps the figures about the faults).
        with anyio.move_on_after(config.startup_timeout):
            await poll(lambda: self.subscriber.status().link_state[P] is LinkState.CONNECTED)
        self._producer = anyio.CancelScope()
        group.start_soon(self._produce, self._producer)

    def token(self, identity: str) -> str:
        """A LiveKit token for ``identity`` in the session's room (also the relay's)."""
        return mint_token(
            api_key=DEV_API_KEY,
            api_secret=DEV_API_SECRET,
            identity=identity,
            room=self.config.session_id,
        )

    async def _disconnect_agent_room(self) -> None:
        with anyio.move_on_after(10.0, shield=True):
            await self.agent_room.disconnect()

    async def _host_publisher(
        self, relay_url: str, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with DualChannelPublisher(
            self.config.session_id,
            room=self.agent_room,
            relay_url=relay_url,
            webhook_secret=WEBHOOK_SECRET,
            heartbeat=self.config.heartbeat,
        ) as publisher:
            self.publisher = publisher
            task_status.started()
            await self._close_requested.wait()
            self._close_report = await publisher.aclose(drain_timeout=self._drain_timeout)
        self._publisher_closed.set()

    async def _close_publisher(self, drain_timeout: float) -> CloseReport:
        """Ask the publisher's task to close it (draining up to ``drain_timeout`` s)."""
        self.stop_producing()
        if not self._close_requested.is_set():
            self._drain_timeout = drain_timeout
            self._close_requested.set()
        with anyio.move_on_after(drain_timeout + 10.0, shield=True):
            await self._publisher_closed.wait()
        if self._close_report is None:
            raise RuntimeError("the publisher did not close in time")
        return self._close_report

    def _watch_agent_room(self, room: rtc.Room) -> None:
        def handler(name: str) -> Callable[..., None]:
            def record(*_: object) -> None:
                self.agent_events.append((time.monotonic(), name))
                if name == "reconnected":
                    self._agent_reconnected.set()
                if name == "disconnected" and not self._closing:
                    note = "the agent's room was disconnected for good (the SDK gave up)"
                    self.notes.append(note)
                    self.say(note)

            return record

        for name in ("reconnecting", "reconnected", "disconnected"):
            room.on(name, handler(name))

    # -- waiting -------------------------------------------------------------------------

    @property
    def sent(self) -> int:
        return self.publisher.last_seq

    def distinct_delivered(self) -> int:
        return len({(d.epoch, d.seq) for d in self.deliveries})

    async def until(self, predicate: Callable[[], bool], within: float, what: str) -> float:
        """Poll ``predicate`` every 10 ms; return when it held (monotonic), or raise
        ``TimeoutError`` naming ``what`` after ``within`` seconds."""
        try:
            with anyio.fail_after(within):
                await poll(predicate)
        except TimeoutError:
            raise TimeoutError(f"timed out after {within:.1f} s waiting for {what}") from None
        return time.monotonic()

    async def wait_flowing(self, within: float = 20.0) -> None:
        """Wait until both channels carry the stream and the primary is the active one."""
        subscriber = self.subscriber
        need = max(5, int(self.config.rate / 2))

        def flowing() -> bool:
            stats = subscriber.stats()
            secondary_seen = stats.first_arrivals[S] + stats.duplicates[S] > 0
            return (
                stats.first_arrivals[P] >= need
                and secondary_seen
                and subscriber.status().active is P
            )

        await self.until(flowing, within, "both channels to carry the stream")
        self.warm_at = time.monotonic()
        self._startup_switches = len(self.switches)
        if self._startup_switches:
            self.notes.append(f"{self._startup_switches} switches while starting, not counted")
        self.switches.clear()
        self.say("both channels flowing; primary active")

    async def wait_agent_reconnected(self, since: float, within: float) -> float | None:
        """When the agent's room emitted ``reconnected`` after ``since`` (waits up to
        ``within`` seconds for it); None if it did not."""
        with anyio.move_on_after(within):
            while True:
                for at, name in reversed(self.agent_events):
                    if name == "reconnected" and at >= since:
                        return at
                self._agent_reconnected = anyio.Event()
                await self._agent_reconnected.wait()
        return None

    def agent_reconnecting_since(self, since: float) -> bool:
        return any(n == "reconnecting" and at >= since for at, n in self.agent_events)

    # -- faults --------------------------------------------------------------------------

    def fault_started(self, name: str, channels: str, detail: str = "") -> int:
        """Record a fault injected now; returns its index for :meth:`fault_cleared`."""
        self.faults.append(FaultRecord(name, channels, self.ms(), None, detail))
        self.say(f"FAULT {name}{': ' + detail if detail else ''}")
        return len(self.faults) - 1

    def fault_cleared(self, index: int, at: float | None = None, detail: str = "") -> None:
        """Record that fault ``index`` was cleared now (or at monotonic time ``at``)."""
        fault = self.faults[index]
        self.faults[index] = replace(fault, cleared_ms=self.ms(at))
        self.say(f"CLEAR {fault.name}{': ' + detail if detail else ''}")

    def stop_producing(self) -> None:
        if self._producer is not None:
            self._producer.cancel()

    # -- the tasks -----------------------------------------------------------------------

    async def _produce(self, scope: anyio.CancelScope) -> None:
        rate = self.config.rate
        with scope:
            start = anyio.current_time()
            count = 0
            while True:
                seq = self.publisher.last_seq + 1
                try:
                    await self.publisher.send_transcript(
                        list(self.config.segments(seq)), speaker="teacher"
                    )
                except OutboxFull:
                    self._outbox_full += 1
                except ClosedError:
                    return
                count += 1
                delay = start + count / rate - anyio.current_time()
                await anyio.sleep(max(0.0, delay))

    async def _record_deliveries(self) -> None:
        subscriber = self.subscriber
        async for envelope in subscriber:
            batch = [envelope]
            while True:  # take what is already waiting, then look at the counters once
                try:
                    batch.append(subscriber.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
            first = subscriber.stats().first_arrivals
            grew = [c for c in Channel if first[c] > self._first_seen[c]]
            self._first_seen = dict(first)
            channel = grew[0] if len(grew) == 1 else None
            now = time.monotonic()
            self.deliveries.extend(Delivery(e.epoch, e.seq, now, channel) for e in batch)

    async def _record_events(self, events: Any) -> None:
        async for event in events:
            if isinstance(event, ChannelSwitch):
                self._on_switch(
                    event.at, event.from_channel, event.to_channel, event.reason, event.silent_for
                )
            elif isinstance(event, BothDown):
                previous = self._active
                down = self._last_down.get(previous) if previous is not None else None
                silent = down.silent_for if down is not None else 0.0
                self._on_switch(event.at, previous, None, "both channels down", silent)
            elif isinstance(event, ChannelDown):
                self._last_down[event.channel] = event
                self.say(f"{event.channel.value} down: {event.reason}")
            elif isinstance(event, ChannelRecovered):
                self.say(f"{event.channel.value} healthy again after {event.down_for:.1f} s")
            elif isinstance(event, MessageLost):
                self.lost_events.append(event)
                self.say(f"LOST seq {event.first}..{event.last} ({event.reason})")

    def _on_switch(
        self,
        at: float,
        from_channel: Channel | None,
        to_channel: Channel | None,
        reason: str,
        silent_for: float,
    ) -> None:
        self._active = to_channel
        at_ms = self.ms(at)
        fault_name: str | None = None
        detection: float | None = None
        recovery: float | None = None
        if from_channel is not None and self.warm_at is not None:
            # The latest fault that cut the channel we left, not yet matched to a switch.
            matched = {s.fault for s in self.switches if s.detection_ms is not None}
            for fault in reversed(self.faults):
                if (
                    _cuts(fault.channels, from_channel)
                    and fault.injected_ms <= at_ms
                    and _key(fault) not in matched
                ):
                    fault_name, detection = _key(fault), at_ms - fault.injected_ms
                    break
        if to_channel is P and self.warm_at is not None:
            # A switch back: recovery from the last cleared fault that cut the primary.
            detected = {s.fault for s in self.switches if s.detection_ms is not None}
            recovered = {s.fault for s in self.switches if s.recovery_ms is not None}
            for fault in reversed(self.faults):
                if (
                    _cuts(fault.channels, P)
                    and fault.cleared_ms is not None
                    and _key(fault) in detected
                    and _key(fault) not in recovered
                ):
                    fault_name, recovery = _key(fault), at_ms - fault.cleared_ms
                    break
        record = SwitchRecord(
            at_ms=at_ms,
            from_channel=from_channel.value if from_channel is not None else None,
            to_channel=to_channel.value if to_channel is not None else None,
            reason=reason,
            silent_ms=silent_for * 1000.0,
            fault=fault_name,
            detection_ms=detection,
            recovery_ms=recovery,
        )
        self.switches.append(record)
        parts = [f"SWITCH {record.from_channel or 'none'} → {record.to_channel or 'none'}"]
        if detection is not None:
            parts.append(f"detected {detection:.0f} ms after the fault")
        if recovery is not None:
            parts.append(f"{recovery:.0f} ms after the fault cleared")
        if record.silent_ms:
            parts.append(f"{record.from_channel} silent {record.silent_ms:.0f} ms")
        self.say(" · ".join(parts) + f" ({reason})")

    async def _report_progress(self, interval: float) -> None:
        last_first = dict.fromkeys(Channel, 0)
        last_delivered = 0
        while True:
            await anyio.sleep(interval)
            stats = self.subscriber.stats()
            first = stats.first_arrivals
            delivered = len(self.deliveries)
            status = self.subscriber.status()
            active = status.active.value if status.active is not None else "none (both down)"
            self.say(
                f"sent {self.sent:5d}  delivered {delivered:5d} (+{delivered - last_delivered})"
                f"  first via primary +{first[P] - last_first[P]}"
                f" / secondary +{first[S] - last_first[S]}"
                f"  backfilled {stats.backfilled}  active {active}"
            )
            last_first, last_delivered = dict(first), delivered

    # -- the end -------------------------------------------------------------------------

    async def finish(self, *, drain_timeout: float = 15.0) -> Report:
        """Stop sending, wait for the stream to drain, close the publisher, check the
        relay's audit tables, and report."""
        self.stop_producing()
        await anyio.lowlevel.checkpoint()
        sent = self.sent
        with anyio.move_on_after(drain_timeout):
            await poll(lambda: self.distinct_delivered() >= sent)
        closing = await self._close_publisher(drain_timeout)
        if closing.undelivered:
            self.notes.append(f"the relay never acknowledged {len(closing.undelivered)} messages")
        await anyio.sleep(0.2)  # a straggling copy would show up as a duplicate now
        audit = await anyio.to_thread.run_sync(
            lambda: check_audit(
                self.relay.database,
                self.config.session_id,
                epoch=self.publisher.epoch,
                sent=sent,
                expected_rejected=self.expected_rejected,
            )
        )
        return self._report(sent, audit, closing.stats.secondary.retried)

    def _report(self, sent: int, audit: Any, retried: int) -> Report:
        stats = self.subscriber.stats()
        epoch = self.publisher.epoch
        seqs = [d.seq for d in self.deliveries if d.epoch == epoch]
        distinct = set(seqs)
        out_of_order = 0
        highest = 0
        for seq in seqs:
            if seq < highest:
                out_of_order += 1
            highest = max(highest, seq)
        foreign_epochs = len(self.deliveries) - len(seqs)
        notes = list(self.notes)
        if foreign_epochs:
            notes.append(f"{foreign_epochs} deliveries of another epoch")
        if self._outbox_full:
            notes.append(f"send_transcript raised OutboxFull {self._outbox_full} times")
        if self.lost_events:
            notes.append(
                "the subscriber declared lost: "
                + ", ".join(f"{e.first}..{e.last} ({e.reason})" for e in self.lost_events)
            )
        publisher_stats = self.publisher.stats()
        return Report(
            scenario=self.config.scenario,
            duration_s=round(self.ms() / 1000.0, 3),
            rate=self.config.rate,
            sent=sent,
            delivered=len(seqs),
            lost=len(set(range(1, sent + 1)) - distinct),
            duplicates_delivered=len(seqs) - len(distinct),
            out_of_order=out_of_order,
            switches=tuple(self.switches),
            recovery_ms=tuple(s.recovery_ms for s in self.switches if s.recovery_ms is not None),
            gaps=stats.gaps,
            backfilled=stats.backfilled,
            duplicates_suppressed={c.value: n for c, n in stats.duplicates.items()},
            first_arrivals={c.value: n for c, n in stats.first_arrivals.items()},
            malformed={c.value: n for c, n in stats.malformed.items()},
            foreign={c.value: n for c, n in stats.foreign.items()},
            subscriber_lost=stats.lost,
            faults=tuple(self.faults),
            audit=audit,
            publisher={
                "primary_failed": publisher_stats.primary.failed,
                "secondary_retried": retried,
                "rate_limited": publisher_stats.rate_limited,
                "requests": publisher_stats.requests,
                "heartbeats": publisher_stats.heartbeats,
            },
            garbage=tuple(self.garbage),
            notes=tuple(notes),
        )


async def poll(predicate: Callable[[], bool], interval: float = 0.01) -> None:
    """Return once ``predicate()`` holds, checking every ``interval`` seconds.

    The harness watches state it does not own (subscriber counters, link states) and
    that offers no event to wait on; callers bound the wait with a cancel scope.
    """
    while not predicate():  # noqa: ASYNC110 - polling state without an event
        await anyio.sleep(interval)


def _key(fault: FaultRecord) -> str:
    return f"{fault.name}@{fault.injected_ms:.0f}"


def _cuts(channels: str, channel: Channel) -> bool:
    return channels == "both" or channels == channel.value
