"""`python -m examples.notify_on_completion --webhook URL [--nats URL] [--project ID]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from datetime import datetime

import nats

from examples.notify_on_completion.notifier import run
from services.common.logs import setup_logging


def _since(value: str) -> int | datetime:
    return int(value) if value.isdigit() else datetime.fromisoformat(value)


async def _main(args: argparse.Namespace) -> None:
    nc = await nats.connect(args.nats, name="kiln-notify", max_reconnect_attempts=-1)
    try:
        await run(nc, args.webhook, project_id=args.project, since=args.since)
    finally:
        await nc.drain()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.notify_on_completion",
        description="Post a JSON message to a webhook whenever a Kiln generation ends.",
    )
    parser.add_argument("--webhook", required=True, help="the URL to POST each message to")
    parser.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--project", help="only this project's generations")
    parser.add_argument(
        "--since",
        type=_since,
        help="a stream sequence (the events after it) or an ISO time; default: new events",
    )
    args = parser.parse_args()
    setup_logging()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
