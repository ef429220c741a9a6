"""Kiln's subscriber SDK: follow generations from another service, with typed events.

from services.sdk import subscribe

async for received in subscribe(nc, project_id=project_id, since=last_seen):
    print(received.stream_seq, received.type, received.event.generation_id)

A version's log names its files by content: `written_content(nc, event)` reads the
content of a `file.written`, `inherited_contents(nc, event)` those of the files an
iteration keeps from its parent (`version.based_on`).
"""

from services.sdk.contents import BlobError, inherited_contents, written_content
from services.sdk.subscriptions import Received, subject_filter, subscribe

__all__ = [
    "BlobError",
    "Received",
    "inherited_contents",
    "subject_filter",
    "subscribe",
    "written_content",
]
