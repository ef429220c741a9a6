"""Shared by the orchestrator's tests: a new generation's log, as the gateway starts it."""

from __future__ import annotations

import uuid
from typing import Any

from nats.js import JetStreamContext

from contracts.events import GenerationRequested
from contracts.schema import Entity, Field, ProjectSchema
from services.common.eventwriter import GenerationWriter

SCHEMA = ProjectSchema(entities=[Entity(name="Thing", fields=[Field(name="name", type="string")])])


async def requested_generation(js: JetStreamContext, **fields: Any) -> GenerationWriter:
    """The writer of a new generation whose `generation.requested` is in the log: alice's
    project `p`, version 1, `SCHEMA`, the offline provider, unless `fields` say otherwise."""
    project_id, generation_id = str(uuid.uuid4()), str(uuid.uuid4())
    writer = GenerationWriter(js, project_id, generation_id, source="test")
    await writer.emit(
        GenerationRequested,
        **{
            "owner": "alice",
            "project_name": "p",
            "version": 1,
            "schema": SCHEMA,
            "provider": "offline",
            **fields,
        },
    )
    return writer
