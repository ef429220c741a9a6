"""Every published event carries the CloudEvents attributes as NATS headers (binary content
mode), so a CloudEvents consumer reads Kiln's stream without its SDK."""

from __future__ import annotations

import uuid
from datetime import datetime
from urllib.parse import urlsplit

import nats
import nats.js.errors

from contracts.codec import decode_event, encode
from contracts.events import GenerationRequested, PhaseCompleted, event_tag
from contracts.streams import EVENTS_STREAM
from services.common.broker import ensure_streams
from services.common.embedded_nats import EmbeddedNats
from services.common.eventwriter import GenerationWriter, source_uri
from services.common.settings import Settings
from tests.support.stack import running_stack

CE_ATTRIBUTES = (
    "ce-specversion",
    "ce-id",
    "ce-source",
    "ce-type",
    "ce-time",
    "ce-subject",
    "ce-datacontenttype",
)


async def test_a_published_event_carries_its_cloudevents_headers(
    nats_server: EmbeddedNats,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        writer = GenerationWriter(
            js, str(uuid.uuid4()), str(uuid.uuid4()), source=source_uri("test", "host:1")
        )
        await writer.emit(GenerationRequested, owner="alice", project_name="shop", version=1)
        event = await writer.emit(PhaseCompleted, phase="plan", files=["a.py"])

        stored = await js.get_msg(EVENTS_STREAM, writer.last_stream_seq)
    finally:
        await nc.close()

    headers = stored.headers or {}
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-id"] == event.event_id
    assert headers["ce-source"] == "urn:kiln:test:host:1"
    assert urlsplit(headers["ce-source"]).scheme == "urn", "an absolute URI reference"
    assert headers["ce-datacontenttype"] == "application/json"
    assert headers["ce-type"] == "kiln.phase.completed"
    assert headers["ce-subject"] == event.generation_id
    assert headers["ce-time"].endswith("Z")
    assert datetime.fromisoformat(headers["ce-time"]) == event.at
    assert headers["content-type"] == "application/json"
    # Binary content mode: the payload is the event itself, exactly as encoded.
    assert stored.data == encode(event)
    assert decode_event(stored.data or b"") == event


async def test_every_event_of_a_real_generation_carries_them(settings: Settings) -> None:
    async with running_stack(settings) as stack:
        await stack.create_completed()
        nc = await nats.connect(settings.nats_servers)
        try:
            js = nc.jetstream()
            info = await js.stream_info(EVENTS_STREAM)
            messages = []
            for seq in range(1, int(info.state.last_seq) + 1):
                try:
                    messages.append(await js.get_msg(EVENTS_STREAM, seq))
                except nats.js.errors.NotFoundError:
                    continue
        finally:
            await nc.close()

    sources = set()
    assert messages
    for message in messages:
        headers = message.headers or {}
        event = decode_event(message.data or b"")
        assert all(name in headers for name in CE_ATTRIBUTES), headers
        assert headers["ce-id"] == event.event_id
        assert headers["ce-type"] == f"kiln.{event_tag(type(event))}"
        assert headers["ce-subject"] == event.generation_id
        sources.add(headers["ce-source"])
    assert "urn:kiln:gateway" in sources
    assert any(source.startswith("urn:kiln:orchestrator:") for source in sources)
    assert all(urlsplit(source).scheme for source in sources), "absolute URI references"
