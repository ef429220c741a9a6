"""The version as a runner writes it: a writer that folds every event it appends into the
generation's state, and the file events staged against that state.

Its own module so the runner and the repair loop share it without importing each other.
"""

from __future__ import annotations

from typing import Any

from contracts.codec import content_sha256
from contracts.events import FileWritten
from contracts.state import GenerationState, apply
from services.common.eventlog import StoredEvent
from services.common.eventwriter import EventBatch, GenerationWriter


class FoldingWriter(GenerationWriter):
    """A generation's writer that folds every event it appends into `state`.

    So the runner's state is always the fold of the log as written, events of the
    providers' reports included: nothing about the version is updated by hand.
    """

    def __init__(self, *args: Any, state: GenerationState, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state = state

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
