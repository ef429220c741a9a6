"""SQLite WAL checkpoints on a connection of their own, off the projector's commit path.

In WAL mode a commit appends to the `-wal` file; a checkpoint copies it into the database
and fsyncs both. Left to SQLite, the commit that crosses `wal_autocheckpoint` pages does
that work itself, and the projector waits for it (about a third of its time at full
speed). The storage service instead checkpoints every second from another thread, so the
writer's commits only append; the writer's own autocheckpoint stays as a safety net
(WRITER_AUTOCHECKPOINT_PAGES) should this loop ever stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time

from sqlalchemy.engine import URL

from services.common import metrics
from services.common.logs import get_logger

log = get_logger(__name__)

CHECKPOINT_INTERVAL_S = 1.0
WRITER_AUTOCHECKPOINT_PAGES = 25_000
"""About 100 MB of WAL (4 KiB pages) before a writer's commit checkpoints by itself."""
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
"""What a reset WAL file is truncated to, so one burst does not keep its disk for good."""


def sqlite_file(url: URL) -> str | None:
    """The database file of a SQLite URL; None for another database or an in-memory one."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return url.database


class WalCheckpointer:
    """Checkpoints a SQLite database's WAL every `interval_s` until stopped."""

    def __init__(self, database: str, *, interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self.database = database
        self.interval_s = interval_s
        self.checkpoints = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Checkpoint every interval until `stop` is set; failures are logged, not raised."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
            try:
                await asyncio.to_thread(self.checkpoint)
            except sqlite3.Error as exc:
                log.warning(
                    "WAL checkpoint of {database} failed: {error}",
                    database=self.database,
                    error=str(exc),
                )

    def checkpoint(self) -> int:
        """One passive checkpoint (it never waits for readers or the writer); returns the
        WAL's size in pages at that moment (-1 when the database is not in WAL mode)."""
        started = time.perf_counter()
        connection = sqlite3.connect(self.database, timeout=5.0, isolation_level=None)
        try:
            _busy, wal_pages, _copied = connection.execute(
                "PRAGMA wal_checkpoint(PASSIVE)"
            ).fetchone()
        finally:
            connection.close()
        self.checkpoints += 1
        metrics.storage_checkpoint_seconds.observe(time.perf_counter() - started)
        return int(wal_pages)
