"""``dualchannel demo``: a scripted lesson over both channels, with real faults midway.

Starts the pinned livekit-server and a relay on loopback (see
:class:`dualchannel.chaos.Stack`), streams a lesson transcript (text, math and code
segments, ``--rate`` messages a second for ``--duration`` seconds), pauses livekit-server
(SIGSTOP) a third of the way in and continues it a few seconds later, and kills and
restarts the relay two thirds of the way in. Progress is printed live; a report follows.
With ``--json`` the report is one JSON object on stdout and progress goes to stderr.

Exit status: 0 when nothing was lost and nothing delivered twice, 1 otherwise, 2 when the
demo could not run (no livekit-server, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = ["add_parser", "run"]

_INSTALL = (
    "dualchannel demo runs a real livekit-server (v1.13.5) on loopback, and none was found.\n"
    "Get one with:\n"
    "    scripts/install-livekit-server.sh    # builds it with Go >= 1.22, a few minutes once\n"
    "or point LIVEKIT_SERVER_BIN at a livekit-server binary. ({reason})"
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="stream a lesson over both channels while livekit-server and the relay fail",
        description="Run livekit-server, the relay, a publisher and a subscriber on loopback; "
        "stream a scripted lesson; pause livekit-server and kill the relay midway; report "
        "what arrived. Exit 0 only if nothing was lost or delivered twice.",
    )
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds of lesson to stream (default 30)"
    )
    parser.add_argument("--rate", type=float, default=4.0, help="messages per second (default 4)")
    parser.add_argument(
        "--json", action="store_true", help="print the report as one JSON object on stdout"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep logs and the relay's database here (default: a temporary directory)",
    )
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="do not build livekit-server when it is missing; say how to get it instead",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show library logs (livekit, relay client)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.duration < 6 or args.rate <= 0 or args.rate > 200:
        print("error: --duration must be at least 6 s and --rate in (0, 200]", file=sys.stderr)
        return 2
    out: TextIO = sys.stderr if args.json else sys.stdout
    _quiet_logs(args.verbose)

    from ..devserver import ensure_livekit_server, find_livekit_server
    from ..errors import ConfigurationError

    try:
        find_livekit_server()
    except ConfigurationError as exc:
        if args.no_build:
            print(_INSTALL.format(reason=exc), file=sys.stderr)
            return 2
        print(
            "no livekit-server found; building it with scripts/install-livekit-server.sh "
            "(a few minutes, once) …",
            file=sys.stderr,
            flush=True,
        )
        try:
            ensure_livekit_server()
        except ConfigurationError as build_error:
            print(_INSTALL.format(reason=build_error), file=sys.stderr)
            return 2

    import anyio

    from ..chaos.report import format_report

    def progress(line: str) -> None:
        print(line, file=out, flush=True)

    try:
        report = anyio.run(_demo, args, progress)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print("", file=out)
        print(format_report(report), file=out)
    return 0 if report.lost == 0 and report.duplicates_delivered == 0 else 1


async def _demo(args: argparse.Namespace, progress: Any) -> Any:
    import anyio

    from ..chaos import KillRelay, PausePrimary, Stack, StackConfig

    duration: float = args.duration
    pause_at = duration * 0.3
    pause_for = min(4.0, duration * 0.2)
    kill_at = duration * 0.65
    config = StackConfig(
        session_id="demo-lesson",
        rate=args.rate,
        scenario="demo",
        work_dir=args.work_dir,
        progress_interval=1.0,
    )
    progress(
        f"dualchannel demo: {duration:g} s of lesson at {args.rate:g} msg/s; livekit-server "
        f"paused at {pause_at:.0f} s for {pause_for:.0f} s, relay killed at {kill_at:.0f} s"
    )
    with anyio.fail_after(duration + 120.0):
        async with Stack(config, progress=progress) as stack:
            await stack.wait_flowing()
            started = anyio.current_time()

            async def at(offset: float) -> None:
                await anyio.sleep(max(0.0, started + offset - anyio.current_time()))

            await at(pause_at)
            await PausePrimary(pause_for).run(stack)
            await at(kill_at)
            await KillRelay().run(stack)
            await at(duration)
            progress(f"{stack.recorder.ms() / 1000:6.1f} s  lesson over; draining")
            return await stack.finish()


def _quiet_logs(verbose: bool) -> None:
    """The SDK's reconnect chatter and our warnings would drown the progress lines."""
    root = logging.getLogger()
    if verbose:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
        return
    root.addHandler(logging.NullHandler())
    for name in ("livekit", "dualchannel"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
