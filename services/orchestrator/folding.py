"""The version as a runner writes it: a writer that folds every event it appends into the
generation's state, and the file events staged against that state.

Its own module so the runner and the repair loop share it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contracts.codec import content_sha256
from contracts.events import Event, FileWritten
from contracts.state import GenerationState, apply
from services.common.blobs import BlobStore
from services.common.eventlog import StoredEvent
from services.common.eventwriter import EventBatch, GenerationWriter


class FoldingWriter(GenerationWriter):
    """A generation's writer that folds every event it appends into `state`.

    So the runner's state is always the fold of the log as written, events of the
    providers' reports included: nothing about the version is updated by hand.

    With `blobs`, the content of every file it writes is stored by sha256 first, so a
    later version inherits it by name (`version.based_on`) without storing it again.
    """

    def __init__(
        self, *args: Any, state: GenerationState, blobs: BlobStore | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.state = state
        self.blobs = blobs
        self._contents_stored: set[str] = set()

    async def append(self, event: Event) -> StoredEvent:
        """Store the content a `file.written` carries, then append it."""
        await self._store_contents([event])
        return await super().append(event)

    async def append_batch(self, events: Sequence[Event]) -> list[StoredEvent]:
        """Store the contents the batch's `file.written` events carry, then append it."""
        await self._store_contents(events)
        return await super().append_batch(events)

    async def _store_contents(self, events: Sequence[Event]) -> None:
        written = [
            e
            for e in events
            if isinstance(e, FileWritten) and e.sha256 not in self._contents_stored
        ]
        if self.blobs is not None and written:
            await self.blobs.put_many(e.content for e in written)
            self._contents_stored.update(e.sha256 for e in written)

    def appended(self, stored: StoredEvent) -> None:
        """Apply each event the stream took (alone or in a batch) to `state`."""
        apply(self.state, stored.event)


def file_content(state: GenerationState, path: str) -> str | None:
    """The content of a file of the version so far (None if it has none)."""
    file = state.files.get(path)
    return None if file is None else file.content


def add_file_written(
    batch: EventBatch, path: str, content: str, phase: str, origin: str, progress: int
) -> None:
    """Add a `file.written` of `content` at `path` to `batch`, with its hash and size."""
    batch.add(
        FileWritten,
        path=path,
        content=content,
        sha256=content_sha256(content),
        size=len(content.encode()),
        phase=phase,
        origin=origin,
        progress=progress,
    )
