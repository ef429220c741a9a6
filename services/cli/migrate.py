"""`kiln migrate`: bring the read model's database and the broker's streams up to date.

The database by its Alembic migrations; the broker by creating what is missing (the blob
stream of a release before 0.2, say) and updating the configuration of what exists (S2
compression on `KILN_EVENTS`: nats-server writes new blocks compressed, and compacts old
ones as it rewrites them). Every service does the broker part when it starts too; this
command does it first, and says what it found.

A broker started at the same time (compose, a cluster's nodes coming up one by one) is
waited for, up to `--wait` seconds: until it accepts a connection, then until JetStream
answers (a cluster elects its meta leader and learns its peers before it can place a
stream's replicas). Each wait is said once, as it begins; the command fails, saying why,
only once the time is up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from contracts import streams
from services.common.broker import NOT_YET, connect_options, ensure_streams
from services.common.settings import Settings

BROKER_WAIT_S = 30.0
RETRY_EVERY_S = 0.5


class MigrationFailed(RuntimeError):
    """A part could not be migrated; the message says which and why."""


def say_now(line: str) -> None:
    """Print a line at once (a piped stdout, as under compose, is otherwise held back)."""
    print(line, flush=True)


def migrate(
    settings: Settings, say: Callable[[str], None] = say_now, wait_s: float = BROKER_WAIT_S
) -> None:
    """Migrate the database, then the streams, saying what was done as it is done."""
    from services.storage.db import migrate as migrate_database
    from services.storage.db import shown_url

    migrate_database(settings.effective_database_url)
    say(f"Database is up to date: {shown_url(settings.effective_database_url)}")
    for line in asyncio.run(migrate_streams(settings, say, wait_s)):
        say(line)


async def migrate_streams(
    settings: Settings, say: Callable[[str], None] = say_now, wait_s: float = BROKER_WAIT_S
) -> list[str]:
    """Create or update Kiln's streams and buckets; one line per stream as it now is.
    Waits up to `wait_s` for the broker and its JetStream (MigrationFailed after that)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    servers = ", ".join(settings.nats_servers)
    nc = await _connect(settings, deadline, say)
    try:
        js = nc.jetstream()
        said = False
        while True:
            try:
                await ensure_streams(js, settings.stream_replicas)
                return await _describe(js)
            except NOT_YET as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise MigrationFailed(
                        f"JetStream at {servers} was not ready after {wait_s:g} s "
                        f"({_reason(exc)}); the streams were not migrated (each service "
                        "migrates them when it starts)"
                    ) from None
                if not said:
                    say(
                        f"Waiting for JetStream at {servers} to be ready for "
                        f"{settings.stream_replicas} replica(s) ({_reason(exc)}), "
                        f"up to {wait_s:g} s"
                    )
                    said = True
                await asyncio.sleep(RETRY_EVERY_S)
    finally:
        await nc.close()


async def _connect(settings: Settings, deadline: float, say: Callable[[str], None]) -> Client:
    """A connection to the broker, retried until `deadline` while nothing accepts one."""
    options = {**connect_options(settings, "kiln-migrate"), "max_reconnect_attempts": 3}
    servers = ", ".join(settings.nats_servers)

    async def quiet(exc: Exception) -> None:
        """The failure is reported once, below, not as nats-py's traceback per attempt."""

    said = False
    while True:
        try:
            return await nats.connect(**options, error_cb=quiet)
        except (OSError, nats.errors.Error) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise MigrationFailed(
                    f"cannot reach the broker at {servers} ({exc!r}); "
                    "the streams were not migrated (each service migrates them when it starts)"
                ) from None
            if not said:
                say(f"Waiting for the broker at {servers} to accept connections ({exc!r})")
                said = True
            await asyncio.sleep(RETRY_EVERY_S)


async def _describe(js: JetStreamContext) -> list[str]:
    lines = []
    for make in streams.ALL_STREAMS:
        info = await js.stream_info(str(make().name))
        compression = info.config.compression or "none"
        lines.append(
            f"Stream {info.config.name} is up to date: {info.state.messages} messages, "
            f"{info.state.bytes} bytes, compression {compression}, "
            f"{info.config.num_replicas} replica(s)"
        )
    return lines


def _reason(exc: Exception) -> str:
    """What the broker said, in a few words (nats-py's errors often have no message)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
