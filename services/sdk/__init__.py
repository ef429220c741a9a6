"""Kiln's subscriber SDK: follow generations from another service, with typed events.

from services.sdk import subscribe

async for received in subscribe(nc, project_id=project_id, since=last_seen):
    print(received.stream_seq, received.type, received.event.generation_id)
"""

from services.sdk.subscriptions import Received, subject_filter, subscribe

__all__ = ["Received", "subject_filter", "subscribe"]
