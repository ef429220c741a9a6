"""`kiln migrate`: bring the read model's database and the broker's streams up to date.

The database by its Alembic migrations; the broker by creating what is missing (the blob
stream of a release before 0.2, say) and updating the configuration of what exists (S2
compression on `KILN_EVENTS`: nats-server writes new blocks compressed, and compacts old
ones as it rewrites them). Every service does the broker part when it starts too; this
command does it first, and says what it found.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats
import nats.errors

from contracts import streams
from services.common.broker import connect_options, ensure_streams_when_ready
from services.common.settings import Settings

BROKER_WAIT_S = 30.0


class MigrationFailed(RuntimeError):
    """A part could not be migrated; the message says which and why."""


def migrate(settings: Settings, say: Callable[[str], None] = print) -> None:
    """Migrate the database, then the streams, saying what was done as it is done."""
    from services.storage.db import migrate as migrate_database
    from services.storage.db import shown_url

    migrate_database(settings.effective_database_url)
    say(f"Database is up to date: {shown_url(settings.effective_database_url)}")
    for line in asyncio.run(migrate_streams(settings)):
        say(line)


async def migrate_streams(settings: Settings) -> list[str]:
    """Create or update Kiln's streams and buckets; one line per stream as it now is."""
    options = {**connect_options(settings, "kiln-migrate"), "max_reconnect_attempts": 3}

    async def quiet(exc: Exception) -> None:
        """The failure is reported once, below, not as nats-py's traceback per attempt."""

    try:
        nc = await nats.connect(**options, error_cb=quiet)
    except (OSError, nats.errors.Error) as exc:
        raise MigrationFailed(
            f"cannot reach the broker at {', '.join(settings.nats_servers)} ({exc!r}); "
            "the streams were not migrated (each service migrates them when it starts)"
        ) from None
    try:
        js = nc.jetstream()
        await ensure_streams_when_ready(js, settings.stream_replicas, BROKER_WAIT_S)
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
    finally:
        await nc.close()
