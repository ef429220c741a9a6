"""The contents of the files a version inherits, for a subscriber that wants them.

An iteration's log names its parent's unchanged files by sha256 (`version.based_on`)
instead of copying them; their contents are in the broker once per sha256.

    async for received in subscribe(nc, generation_id=gid):
        if isinstance(received.event, VersionBasedOn):
            files = await inherited_contents(nc, received.event)  # path → content
"""

from __future__ import annotations

from nats.aio.client import Client as NATS

from contracts.events import VersionBasedOn
from services.common.blobs import BlobError, BlobStore

__all__ = ["BlobError", "inherited_contents"]


async def inherited_contents(nc: NATS, event: VersionBasedOn) -> dict[str, str]:
    """path → content of every file `event` names, each checked against its sha256
    (BlobError if the broker lacks one or holds other content under its name)."""
    contents = await BlobStore(nc.jetstream()).get_many(f.sha256 for f in event.files)
    return {f.path: contents[f.sha256] for f in event.files}
