"""The smallest consumer: print a session's messages once each, in order, and every switch.

    python examples/consumer.py --session lesson-42 \\
        --livekit-url ws://127.0.0.1:7880 --relay-url http://127.0.0.1:8000 \\
        --api-key devkey --api-secret <secret> [--count 20]

The token it mints joins the LiveKit room and is accepted by the relay: one credential for
both channels. Stop it with Ctrl-C, or give ``--count`` to stop after that many messages.
"""

from __future__ import annotations

import argparse
import contextlib
import logging

import anyio

from dualchannel import ChannelSwitch, DualChannelSubscriber
from dualchannel.tokens import mint_token


def print_switch(switch: ChannelSwitch) -> None:
    print(
        f"-- switched {switch.from_channel} -> {switch.to_channel} "
        f"({switch.reason}; primary silent {switch.silent_for * 1000:.0f} ms)",
        flush=True,
    )


async def consume(args: argparse.Namespace) -> None:
    token = mint_token(
        api_key=args.api_key,
        api_secret=args.api_secret,
        identity="example-consumer",
        room=args.session,
        can_publish=False,
        can_publish_data=False,
    )
    async with DualChannelSubscriber(
        args.session,
        livekit_url=args.livekit_url,
        livekit_token=token if args.livekit_url else None,
        relay_url=args.relay_url,
        relay_token=token if args.relay_url else None,
    ) as subscriber:
        subscriber.on_switch(print_switch)
        received = 0
        async for envelope in subscriber:
            text = " ".join(s["content"] for s in (envelope.data or {}).get("segments", []))
            print(f"{envelope.seq:>5} [{envelope.type}] {text}", flush=True)
            received += 1
            if args.count and received >= args.count:
                break
        stats = subscriber.stats()
        print(
            f"delivered {stats.delivered}, duplicates dropped "
            f"{ {str(k): v for k, v in stats.duplicates.items()} }, "
            f"backfilled {stats.backfilled}, lost {stats.lost}, switches {stats.switches}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--session", required=True, help="session id (= LiveKit room name)")
    parser.add_argument("--livekit-url", help="ws://host:port of livekit-server")
    parser.add_argument("--relay-url", help="http://host:port of the relay")
    parser.add_argument("--api-key", required=True, help="LiveKit API key")
    parser.add_argument("--api-secret", required=True, help="LiveKit API secret")
    parser.add_argument("--count", type=int, default=0, help="stop after this many messages")
    args = parser.parse_args()
    if not args.livekit_url and not args.relay_url:
        parser.error("give --livekit-url and/or --relay-url: there is nothing to listen to")
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(consume, args)


if __name__ == "__main__":
    main()
