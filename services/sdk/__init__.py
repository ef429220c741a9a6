"""Kiln's subscriber SDK: follow generations from another service, with typed events.

from services.sdk import subscribe

async for received in subscribe(nc, project_id=project_id, since=last_seen):
    print(received.stream_seq, received.type, received.event.generation_id)

An iteration names the files it keeps from its parent (`version.based_on`);
`inherited_contents(nc, event)` reads them.
"""

from services.sdk.contents import BlobError, inherited_contents
from services.sdk.subscriptions import Received, subject_filter, subscribe

__all__ = ["BlobError", "Received", "inherited_contents", "subject_filter", "subscribe"]
