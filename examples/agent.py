"""An agent-shaped publisher: join the room, send a lesson's transcripts on both channels.

    python examples/agent.py --session lesson-42 \\
        --livekit-url ws://127.0.0.1:7880 --api-key devkey --api-secret <secret> \\
        --relay-url http://127.0.0.1:8000 --webhook-secret whsec_... [--count 20 --rate 5]

A real LiveKit agent already holds a connected ``livekit.rtc.Room`` (``ctx.room`` in
``livekit-agents``); this script connects one itself with a minted token so it runs on
its own. Leave out ``--livekit-url`` for webhook only, or ``--relay-url`` for LiveKit
only. It stops after ``--count`` messages (or on Ctrl-C), drains, and prints a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from livekit import rtc

from dualchannel import DeliveryFailure, DualChannelPublisher
from dualchannel.tokens import mint_token

LESSON = [
    [{"type": "text", "content": "Today we factor quadratics.", "confidence": 0.98}],
    [{"type": "math", "content": "x² + 5x + 6", "confidence": 0.97}],
    [{"type": "text", "content": "Which two numbers add to 5 and multiply to 6?"}],
    [{"type": "math", "content": "(x + 2)(x + 3)", "confidence": 0.95}],
]


def report_failure(failure: DeliveryFailure) -> None:
    """The relay will never have these from us: say so loudly (a real agent might alert)."""
    seqs = ", ".join(str(e.seq) for e in failure.envelopes)
    print(f"!! not delivered to the relay: seq {seqs} ({failure.status}: {failure.reason})")


@asynccontextmanager
async def joined_room(args: argparse.Namespace) -> AsyncIterator[rtc.Room | None]:
    """The room the agent speaks in, or None when running webhook-only."""
    if not args.livekit_url:
        yield None
        return
    token = mint_token(
        api_key=args.api_key, api_secret=args.api_secret, identity="agent", room=args.session
    )
    room = rtc.Room()
    await room.connect(args.livekit_url, token)
    try:
        yield room
    finally:
        await room.disconnect()


async def run_agent(args: argparse.Namespace) -> None:
    async with joined_room(args) as room:
        async with DualChannelPublisher(
            args.session,
            room=room,
            relay_url=args.relay_url,
            webhook_secret=args.webhook_secret,
            on_failure=report_failure,
        ) as publisher:
            for n in range(args.count):
                segments = LESSON[n % len(LESSON)]
                # Returns at once: handed to LiveKit, queued for the relay.
                envelope = await publisher.send_transcript(segments, speaker="teacher")
                print(f"{envelope.seq:>5} {segments[0]['content']}", flush=True)
                if (n + 1) % 10 == 0:
                    await publisher.send_metrics()  # best effort, session totals
                await anyio.sleep(1 / args.rate)
        report = await publisher.aclose()  # already closed: returns the same report
    s = report.stats
    print(
        f"sent {s.messages}; livekit {s.primary.acknowledged} ok / {s.primary.failed} failed; "
        f"relay {s.secondary.acknowledged} acknowledged in {s.requests} requests, "
        f"{s.secondary.retried} retried, {s.secondary.failed} failed, "
        f"{len(report.undelivered)} undelivered"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--session", required=True, help="session id (= LiveKit room name)")
    parser.add_argument("--livekit-url", help="ws://host:port of livekit-server")
    parser.add_argument("--api-key", help="LiveKit API key (with --livekit-url)")
    parser.add_argument("--api-secret", help="LiveKit API secret (with --livekit-url)")
    parser.add_argument("--relay-url", help="http://host:port of the relay")
    parser.add_argument("--webhook-secret", help="the relay's whsec_... secret, if it has one")
    parser.add_argument("--count", type=int, default=20, help="messages to send (default 20)")
    parser.add_argument("--rate", type=float, default=5.0, help="messages a second (default 5)")
    args = parser.parse_args()
    if not args.livekit_url and not args.relay_url:
        parser.error("give --livekit-url and/or --relay-url: there is nowhere to send")
    if args.livekit_url and not (args.api_key and args.api_secret):
        parser.error("--livekit-url needs --api-key and --api-secret to mint a token")
    if args.rate <= 0:
        parser.error("--rate must be positive")
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(run_agent, args)


if __name__ == "__main__":
    main()
