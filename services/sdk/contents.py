"""The contents of a version's files, for a subscriber that wants them.

A version's log names its files by sha256: an iteration's `version.based_on` names the
files it keeps from its parent, and each `file.written` names its new content (logs of
Kiln 0.1.0 carry that inline instead). The contents are in the broker once per sha256.

    async for received in subscribe(nc, generation_id=gid):
        if isinstance(received.event, VersionBasedOn):
            files = await inherited_contents(nc, received.event)  # path → content
        elif isinstance(received.event, FileWritten):
            text = await written_content(nc, received.event)
"""

from __future__ import annotations

from nats.aio.client import Client as NATS

from contracts.events import FileWritten, VersionBasedOn
from services.common.blobs import BlobError, BlobStore

__all__ = ["BlobError", "inherited_contents", "written_content"]


async def inherited_contents(nc: NATS, event: VersionBasedOn) -> dict[str, str]:
    """path → content of every file `event` names, each checked against its sha256
    (BlobError if the broker lacks one or holds other content under its name)."""
    contents = await BlobStore(nc.jetstream()).get_many(f.sha256 for f in event.files)
    return {f.path: contents[f.sha256] for f in event.files}


async def written_content(nc: NATS, event: FileWritten) -> str:
    """The content of the file `event` wrote: inline where the event carries it, else
    read from the broker and checked against its sha256 (BlobError if it cannot be)."""
    if event.content is not None:
        return event.content
    return await BlobStore(nc.jetstream()).get(event.sha256)
