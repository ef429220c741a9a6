"""A replica of the events stream that has not caught up, answering direct gets, made for
certain on one nats-server.

In a cluster, a direct get (`allow_direct`) is answered by whichever replica the request
reaches, one just back from a partition included: it answers "not found" for events the
stream's leader has. Which replica answers is the server's choice, so a test cannot make a
lagging one answer at will. Here the stream stops answering direct gets itself, and a
mirror (`mirror_direct`) that only ever takes one warm-up event answers them all: a
responder that is behind for certain, while the stream (its leader) still answers the
non-direct `STREAM.MSG.GET`.
"""

from __future__ import annotations

import contextlib
import uuid

from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig, StreamSource
from nats.js.errors import NotFoundError

from contracts import streams, subjects
from contracts.events import GenerationRequested
from services.common.eventwriter import GenerationWriter
from tests.support.waiting import eventually

BEHIND = "KILN_EVENTS_BEHIND"


async def direct_gets_answered_by_a_replica_behind(js: JetStreamContext) -> None:
    """From now on, every direct get on the events stream is answered by a mirror that holds
    one warm-up generation of its own and nothing written before or after it."""
    warm_up = GenerationWriter(js, "warm-up", f"warm-up-{uuid.uuid4()}", source="test")
    await warm_up.emit(GenerationRequested, owner="nobody", project_name="warm-up", version=1)
    # A mirror answers direct gets only if its origin does when it is made (nats-server
    # sets its `mirror_direct` to the origin's `allow_direct`); then the origin stops.
    await js.add_stream(
        StreamConfig(
            name=BEHIND,
            storage=StorageType.MEMORY,
            mirror=StreamSource(name=streams.EVENTS_STREAM, filter_subject=warm_up.subject),
            mirror_direct=True,
        )
    )
    config = (await js.stream_info(streams.EVENTS_STREAM)).config
    config.allow_direct = False
    await js.update_stream(config)

    async def mirror_answers() -> bool:
        # The mirror joins the direct-get responders once it has taken the warm-up event.
        with contextlib.suppress(NoRespondersError, NotFoundError):
            found = await js.get_msg(streams.EVENTS_STREAM, subject=warm_up.subject, direct=True)
            return found.seq is not None
        return False

    await eventually(mirror_answers, 10, 0.05, what="the mirror to answer direct gets")


async def direct_get_finds(js: JetStreamContext, generation_id: str) -> bool:
    """Whether a direct get (any responder) finds an event of the generation."""
    try:
        await js.get_msg(
            streams.EVENTS_STREAM,
            seq=1,
            subject=subjects.generation_events_any_project(generation_id),
            direct=True,
            next=True,
        )
    except NotFoundError:
        return False
    return True
