"""The whole product on loopback, with a steady stream and a recorder: :class:`Stack`.

::

    async with Stack(StackConfig(rate=20), progress=print) as stack:
        await stack.wait_flowing()
        await PausePrimary(3.0).run(stack)
        report = await stack.finish()

Entering starts, in order: the pinned livekit-server (:class:`LiveKitDevServer`; the
binary is built first by ``ensure_livekit_server()`` if missing), a relay
(:class:`RelayProcess`) on a SQLite file in the work directory with a webhook secret and
the dev LiveKit keys, an optional :class:`~dualchannel.chaos.proxy.FaultProxy` in front
of it, the agent's ``rtc.Room`` (identity ``agent``) with a :class:`DualChannelPublisher`,
a :class:`DualChannelSubscriber` (its own room, ``publisher_identity="agent"``, and the
relay's SSE stream), then the tasks: a producer sending ``rate`` messages a second, the
:class:`~dualchannel.chaos.recorder.Recorder`'s delivery and event recorders, and, if
asked, a progress line every second. ``channels="primary"`` or ``"secondary"`` leaves the
other path out entirely (no relay, or no livekit-server), to measure one path alone.

Faults (:mod:`dualchannel.chaos.faults`) tell ``stack.recorder`` when they start and
clear. :meth:`Stack.finish` stops the producer, waits (bounded) until everything sent was
delivered, closes the publisher, reads the relay's audit tables and returns the
:class:`~dualchannel.chaos.report.Report`.

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
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus
from livekit import rtc

from ..channels.livekit import LinkState
from ..devserver import DEV_API_KEY, DEV_API_SECRET, LiveKitDevServer, ensure_livekit_server
from ..envelope import Channel
from ..errors import ClosedError, ConfigurationError, OutboxFull
from ..protocol.fallback import FallbackPolicy
from ..publisher import CloseReport, DualChannelPublisher, HeartbeatPolicy
from ..server.process import RelayProcess
from ..subscriber import DualChannelSubscriber
from ..tokens import mint_token
from .lesson import lesson_segments
from .proxy import FaultProxy
from .recorder import ProgressFn, Recorder
from .report import AuditCheck, Report, check_audit

__all__ = ["WEBHOOK_SECRET", "Stack", "StackConfig", "poll"]

logger = logging.getLogger("dualchannel.chaos")

#: The webhook secret the stack's relay verifies and its publisher signs with.
WEBHOOK_SECRET = "whsec_ZHVhbGNoYW5uZWwtY2hhb3MtaGFybmVzcy1zZWNyZXQ="

SegmentsFn = Callable[[int], Sequence[Any]]

P, S = Channel.PRIMARY, Channel.SECONDARY


@dataclass(frozen=True, slots=True, kw_only=True)
class StackConfig:
    """How a :class:`Stack` runs.

    ``rate``: messages per second from the producer. ``channels``: both paths, or one
    alone. ``proxy``: put a :class:`FaultProxy` between the publisher and the relay.
    ``relay_args``: extra ``dualchannel serve`` flags. ``heartbeat``/``fallback``: the
    publisher's heartbeat and the subscriber's failover settings. ``work_dir``: where logs
    and the database go (a temporary directory, removed at exit, when None).
    ``segments``: the content of message ``seq``. ``progress_interval``: seconds between
    progress lines (None: events only). ``scenario``: the name the report carries.
    """

    session_id: str = "chaos-lesson"
    rate: float = 20.0
    channels: Literal["both", "primary", "secondary"] = "both"
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
        if self.proxy and self.channels == "primary":
            raise ValueError("StackConfig.proxy needs the relay (channels 'both' or 'secondary')")

    @property
    def primary(self) -> bool:
        return self.channels != "secondary"

    @property
    def secondary(self) -> bool:
        return self.channels != "primary"


class Stack:
    """LiveKit, relay, publisher, subscriber, producer and recorder; see the module docs.

    The parts are attributes while the stack is entered: ``livekit``, ``relay``,
    ``proxy`` (or None), ``agent_room``, ``publisher``, ``subscriber``, ``recorder``.
    """

    livekit: LiveKitDevServer
    relay: RelayProcess
    agent_room: rtc.Room
    publisher: DualChannelPublisher
    subscriber: DualChannelSubscriber

    def __init__(
        self, config: StackConfig | None = None, *, progress: ProgressFn | None = None
    ) -> None:
        self.config = config or StackConfig()
        self.recorder = Recorder(progress=progress)
        self.proxy: FaultProxy | None = None
        self.work_dir = Path()
        self.agent_events: list[tuple[float, str]] = []
        self._agent_changed = anyio.Event()
        self._exit: AsyncExitStack | None = None
        self._group: TaskGroup | None = None
        self._producer: anyio.CancelScope | None = None
        self._outbox_full = 0
        self._closing = False
        self._close_requested = anyio.Event()
        self._publisher_closed = anyio.Event()
        self._close_report: CloseReport | None = None
        self._drain_timeout = 5.0

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.recorder.t0 = time.monotonic()
        self._exit = AsyncExitStack()
        try:
            await self._start(self._exit)  # each step is bounded on its own
        except BaseException:
            self._closing = True
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

        where: list[str] = []
        if config.primary:
            binary = await anyio.to_thread.run_sync(ensure_livekit_server)
            self.livekit = LiveKitDevServer(
                binary=binary,
                work_dir=self.work_dir / "livekit",
                startup_timeout=config.startup_timeout,
            )
            await anyio.to_thread.run_sync(self.livekit.start)
            stack.push_async_callback(anyio.to_thread.run_sync, self.livekit.stop)
            where.append(f"livekit-server pid {self.livekit.pid} on {self.livekit.url}")

        relay_url: str | None = None
        if config.secondary:
            self.relay = await self._start_relay()
            stack.callback(self.relay.kill)
            where.append(f"relay pid {self.relay.pid} on {self.relay.url}")
            relay_url = self.relay.url
            if config.proxy:
                self.proxy = await stack.enter_async_context(FaultProxy(self.relay.url))
                relay_url = self.proxy.url
        self.recorder.say("; ".join(where))

        room: rtc.Room | None = None
        if config.primary:
            room = self.agent_room = rtc.Room()
            self._watch_agent_room(room)
            with anyio.fail_after(config.startup_timeout):
                await room.connect(self.livekit.url, self.token("agent"))
            stack.push_async_callback(self._disconnect_agent_room)

        # The publisher lives in a task of its own: its aclose() cancels the task group
        # it entered in __aenter__, which would cancel whoever sits inside its `async with`.
        group = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(group.cancel_scope.cancel)
        stack.push_async_callback(self._close_publisher, 1.0)
        self._group = group
        with anyio.fail_after(config.startup_timeout):
            await group.start(self._host_publisher, room, relay_url)

        consumer = self.token("consumer")
        self.subscriber = await stack.enter_async_context(
            DualChannelSubscriber(
                config.session_id,
                livekit_url=self.livekit.url if config.primary else None,
                livekit_token=consumer if config.primary else None,
                publisher_identity="agent",
                relay_url=self.relay.url if config.secondary else None,
                relay_token=consumer,
                fallback=config.fallback,
            )
        )
        events = self.subscriber.events()
        stack.push_async_callback(events.aclose)

        group.start_soon(self.recorder.record_events, events)
        group.start_soon(self.recorder.record_deliveries, self.subscriber)
        if self.recorder.progress is not None and config.progress_interval:
            group.start_soon(
                self.recorder.report_progress,
                self.subscriber,
                lambda: self.sent,
                config.progress_interval,
            )

        # Start sending once the subscriber's room is in (what it misses before would be
        # backfilled, but a clean start keeps the figures about the faults).
        if config.primary:
            with anyio.move_on_after(config.startup_timeout):
                await poll(lambda: self.subscriber.status().link_state[P] is LinkState.CONNECTED)
        self._producer = anyio.CancelScope()
        group.start_soon(self._produce, self._producer)

    async def _start_relay(self) -> RelayProcess:
        """A started relay; a second try on a fresh port if the first one fails (the
        free port it was given may have been taken in between)."""
        for attempt in (1, 2):
            relay = RelayProcess(
                self.work_dir / "relay.db",
                dev=False,
                webhook_secret=WEBHOOK_SECRET,
                livekit_api_key=DEV_API_KEY,
                livekit_api_secret=DEV_API_SECRET,
                extra_args=list(self.config.relay_args),
                log=self.work_dir / f"relay-{attempt}.log",
                startup_timeout=self.config.startup_timeout,
            )
            try:
                await anyio.to_thread.run_sync(relay.start)
            except ConfigurationError as exc:
                if attempt == 2:
                    raise
                tail = relay.log_path.read_text(errors="replace")[-2000:]
                self.recorder.note(f"the relay did not start ({exc}); again on another port")
                logger.warning("relay_start_failed", extra={"log": tail})
                continue
            return relay
        raise AssertionError("unreachable")

    def token(self, identity: str) -> str:
        """A LiveKit token for ``identity`` in the session's room (the relay takes it too)."""
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
        self,
        room: rtc.Room | None,
        relay_url: str | None,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        async with DualChannelPublisher(
            self.config.session_id,
            room=room,
            relay_url=relay_url,
            webhook_secret=WEBHOOK_SECRET if relay_url is not None else None,
            heartbeat=self.config.heartbeat,
        ) as publisher:
            self.publisher = publisher
            task_status.started()
            await self._close_requested.wait()
            self._close_report = await publisher.aclose(drain_timeout=self._drain_timeout)
        self._publisher_closed.set()

    async def _close_publisher(self, drain_timeout: float) -> CloseReport:
        """Stop the producer; have the publisher's task close it (draining up to
        ``drain_timeout`` seconds) and return its report."""
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
                self._agent_changed.set()
                if name == "disconnected" and not self._closing:
                    self.recorder.note(
                        "the agent's room was disconnected for good (the SDK gave up)"
                    )

            return record

        for name in ("reconnecting", "reconnected", "disconnected"):
            room.on(name, handler(name))

    # -- waiting -------------------------------------------------------------------------

    @property
    def sent(self) -> int:
        """The last seq the publisher sent."""
        return self.publisher.last_seq

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
        """Wait until every configured channel carries the stream (and the primary, if
        there is one, is active); switches before now are not counted."""
        subscriber = self.subscriber
        need = max(5, int(self.config.rate / 2))
        config = self.config

        def flowing() -> bool:
            stats = subscriber.stats()
            seen = {c: stats.first_arrivals[c] + stats.duplicates[c] for c in Channel}
            active = subscriber.status().active
            if config.primary:
                return (
                    stats.first_arrivals[P] >= need
                    and (not config.secondary or seen[S] > 0)
                    and active is P
                )
            return seen[S] >= need and active is S

        await self.until(flowing, within, f"the {config.channels} channel(s) to carry the stream")
        self.recorder.warmed_up()
        self.recorder.say(
            f"stream flowing on {config.channels}; {subscriber.status().active} active"
        )

    async def wait_agent_reconnected(self, since: float, within: float) -> float | None:
        """When the agent's room emitted ``reconnected`` after ``since`` (monotonic), waiting
        up to ``within`` seconds for it; None if it did not."""
        with anyio.move_on_after(within):
            while True:
                for at, name in reversed(self.agent_events):
                    if name == "reconnected" and at >= since:
                        return at
                self._agent_changed = anyio.Event()
                await self._agent_changed.wait()
        return None

    def stop_producing(self) -> None:
        if self._producer is not None:
            self._producer.cancel()

    # -- the producer --------------------------------------------------------------------

    async def _produce(self, scope: anyio.CancelScope) -> None:
        rate = self.config.rate
        with scope:
            start = anyio.current_time()
            count = 0
            while True:
                seq = self.publisher.last_seq + 1
                at = time.monotonic()
                try:
                    envelope = await self.publisher.send_transcript(
                        list(self.config.segments(seq)), speaker="teacher"
                    )
                except OutboxFull:
                    self._outbox_full += 1
                except ClosedError:
                    return
                else:
                    self.recorder.sent(envelope.seq, at)
                count += 1
                delay = start + count / rate - anyio.current_time()
                await anyio.sleep(max(0.0, delay))

    # -- the end -------------------------------------------------------------------------

    async def finish(self, *, drain_timeout: float = 15.0) -> Report:
        """Stop sending, wait (up to ``drain_timeout`` s) for the stream to drain, close
        the publisher, check the relay's audit tables, and report."""
        self.stop_producing()
        await anyio.lowlevel.checkpoint()
        sent = self.sent
        recorder = self.recorder
        with anyio.move_on_after(drain_timeout):
            await poll(lambda: recorder.distinct_delivered() >= sent)
        closing = await self._close_publisher(drain_timeout)
        if closing.undelivered:
            recorder.notes.append(
                f"the relay never acknowledged {len(closing.undelivered)} messages"
            )
        if self._outbox_full:
            recorder.notes.append(f"send_transcript raised OutboxFull {self._outbox_full} times")
        await anyio.sleep(0.2)  # a straggling copy would show up as a duplicate now
        audit: AuditCheck | None = None
        if self.config.secondary:
            audit = await anyio.to_thread.run_sync(
                lambda: check_audit(
                    self.relay.database,
                    self.config.session_id,
                    epoch=self.publisher.epoch,
                    sent=sent,
                    expected_rejected=recorder.expected_rejected,
                )
            )
        stats = closing.stats
        return recorder.report(
            scenario=self.config.scenario,
            rate=self.config.rate,
            epoch=self.publisher.epoch,
            sent=sent,
            stats=self.subscriber.stats(),
            audit=audit,
            publisher={
                "primary_failed": stats.primary.failed,
                "secondary_retried": stats.secondary.retried,
                "rate_limited": stats.rate_limited,
                "requests": stats.requests,
                "heartbeats": stats.heartbeats,
            },
        )


async def poll(predicate: Callable[[], bool], interval: float = 0.01) -> None:
    """Return once ``predicate()`` holds, checking every ``interval`` seconds.

    The harness watches state it does not own (subscriber counters, link states) that
    offers no event to wait on; callers bound the wait with a cancel scope.
    """
    while not predicate():  # noqa: ASYNC110 - polling state without an event
        await anyio.sleep(interval)
