"""The version as a runner writes it: a writer that folds every event it appends into the
generation's state, and the file events staged against that state.

Its own module so the runner and the repair loop share it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec

from contracts.codec import content_sha256
from contracts.events import Event, FileWritten
from contracts.state import GenerationState, apply
from services.common.blobs import BlobStore
from services.common.eventlog import StoredEvent
from services.common.eventwriter import EventBatch, GenerationWriter

E = TypeVar("E", bound=Event)


class FoldingWriter(GenerationWriter):
    """A generation's writer that folds every event it appends into `state`.

    So the runner's state is always the fold of the log as written, events of the
    providers' reports included: nothing about the version is updated by hand.

    With `blobs`, files are named by content: `add_file_written` hands the writer each
    file's content and builds a `file.written` without it; the writer stores the content
    in the blob stream before appending the event that names it, and folds the event
    with its content, so `state` holds every file's text while the log holds each text
    once. Without `blobs`, `file.written` carries its content inline.

    A batch can be held (`hold`) to go in with what follows it: its events are folded
    into `state` at once, the next `batch()` continues it, and any other append (an
    `emit`, a report, a cancellation) first appends it, so the log's order is kept.
    """

    def __init__(
        self, *args: Any, state: GenerationState, blobs: BlobStore | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.state = state
        self.blobs = blobs
        self._contents: dict[str, str] = {}
        self._contents_stored: set[str] = set()
        self.held: EventBatch | None = None
        """A batch folded into `state` but not appended yet (see `hold`)."""
        self._folded_ahead: set[str] = set()

    def names_content(self, sha256: str, content: str) -> bool:
        """Take `content` to store under `sha256` before the event naming it is appended;
        False when this writer has no blob store (the event must carry it inline)."""
        if self.blobs is None:
            return False
        self._contents[sha256] = content
        return True

    def batch(self) -> EventBatch:
        """The held batch, to continue, or else an empty one (see `GenerationWriter`)."""
        held, self.held = self.held, None
        return held if held is not None else super().batch()

    def hold(self, batch: EventBatch) -> None:
        """Keep `batch` (from `batch()`) to append with what follows it; its events are
        folded into `state` now. Appended by the next `flush`, `emit` or `append`, or
        with the events added to it after the next `batch()`."""
        for event in batch.events:
            if event.event_id not in self._folded_ahead:
                self._fold(event)
                self._folded_ahead.add(event.event_id)
        self.held = batch

    async def flush(self) -> None:
        """Append the held batch, if any."""
        held, self.held = self.held, None
        if held is not None:
            await held.append()

    async def emit(self, event_type: type[E], /, **fields: Any) -> E:
        """Append the held batch, if any, then build and append the next event."""
        await self.flush()
        return await super().emit(event_type, **fields)

    async def append(self, event: Event) -> StoredEvent:
        """Store the content a `file.written` names, then append it (after the held batch:
        an event built before it was held is refused by the seq check)."""
        await self.flush()
        await self._store_contents([event])
        return await super().append(event)

    async def append_batch(self, events: Sequence[Event]) -> list[StoredEvent]:
        """Store the contents the batch's `file.written` events name, then append it."""
        await self._store_contents(events)
        return await super().append_batch(events)

    async def _store_contents(self, events: Sequence[Event]) -> None:
        named = {
            e.sha256
            for e in events
            if isinstance(e, FileWritten)
            and e.content is None
            and e.sha256 in self._contents
            and e.sha256 not in self._contents_stored
        }
        if self.blobs is not None and named:
            await self.blobs.put_named({sha256: self._contents[sha256] for sha256 in named})
            self._contents_stored.update(named)

    def appended(self, stored: StoredEvent) -> None:
        """Apply each event the stream took (alone or in a batch) to `state`, a file
        named by content with that content."""
        if stored.event.event_id in self._folded_ahead:
            self._folded_ahead.discard(stored.event.event_id)  # folded when it was held
            return
        self._fold(stored.event)

    def _fold(self, event: Event) -> None:
        if isinstance(event, FileWritten) and event.content is None:
            content = self._contents.get(event.sha256)
            if content is not None:
                event = msgspec.structs.replace(event, content=content)
        apply(self.state, event)


def file_content(state: GenerationState, path: str) -> str | None:
    """The content of a file of the version so far (None if it has none)."""
    file = state.files.get(path)
    return None if file is None else file.content


def add_file_written(
    batch: EventBatch, path: str, content: str, phase: str, origin: str, progress: int
) -> None:
    """Add a `file.written` of `content` at `path` to `batch`, with its hash and size: named
    by content where the batch's writer stores blobs (see `FoldingWriter`), else inline."""
    sha256 = content_sha256(content)
    writer = batch.writer
    named = isinstance(writer, FoldingWriter) and writer.names_content(sha256, content)
    batch.add(
        FileWritten,
        path=path,
        content=None if named else content,
        sha256=sha256,
        size=len(content.encode()),
        phase=phase,
        origin=origin,
        progress=progress,
    )
