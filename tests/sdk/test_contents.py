"""A subscriber reads the files a version names by content, checked against the name."""

from __future__ import annotations

import uuid

import pytest
from nats.aio.client import Client as NATS

from contracts.codec import content_sha256
from contracts.events import (
    FileWritten,
    GenerationRequested,
    InheritedFile,
    VersionBasedOn,
    utc_now,
)
from services.common.blobs import BlobStore
from services.common.eventwriter import GenerationWriter
from services.sdk import BlobError, inherited_contents, subscribe, written_content
from tests.sdk.test_subscriptions import nc, take  # noqa: F401  (the fixture)

PARENT = {"app/main.py": "app = 1\n", "README.md": "# Shop ✓\n", "copy.py": "app = 1\n"}


async def test_an_iteration_followed_by_a_subscriber_gives_its_inherited_files(
    nc: NATS,  # noqa: F811
) -> None:
    js = nc.jetstream()
    await BlobStore(js).put_many(PARENT.values())
    writer = GenerationWriter(js, str(uuid.uuid4()), str(uuid.uuid4()), source="kiln/test")
    await writer.emit(GenerationRequested, owner="alice", project_name="shop", version=2)
    manifest = [
        InheritedFile(path=path, sha256=content_sha256(c), size=len(c.encode()))
        for path, c in PARENT.items()
    ]
    await writer.emit(VersionBasedOn, parent_generation_id="g1", files=manifest)

    _, received = await take(subscribe(nc, generation_id=writer.generation_id), 2)
    assert isinstance(received.event, VersionBasedOn)
    assert await inherited_contents(nc, received.event) == PARENT


async def test_a_name_the_broker_cannot_resolve_is_an_error_not_an_empty_file(
    nc: NATS,  # noqa: F811
) -> None:
    event = VersionBasedOn(
        event_id="e2",
        generation_id="g2",
        project_id="p",
        seq=2,
        at=utc_now(),
        parent_generation_id="g1",
        files=[InheritedFile(path="lost.py", sha256="3" * 64, size=1)],
    )
    with pytest.raises(BlobError, match="no file content"):
        await inherited_contents(nc, event)


async def test_a_file_written_gives_its_content_named_or_inline(nc: NATS) -> None:  # noqa: F811
    js = nc.jetstream()
    text = "def main():\n    return '✓'\n"
    await BlobStore(js).put(text)
    writer = GenerationWriter(js, str(uuid.uuid4()), str(uuid.uuid4()), source="kiln/test")
    await writer.emit(GenerationRequested, owner="alice", project_name="shop", version=1)
    named = {"sha256": content_sha256(text), "size": len(text.encode()), "phase": "api"}
    await writer.emit(FileWritten, path="main.py", **named)
    await writer.emit(FileWritten, path="inline.py", content=text, **named)
    await writer.emit(FileWritten, path="lost.py", sha256="4" * 64, size=1, phase="api")

    _, by_name, inline, lost = await take(subscribe(nc, generation_id=writer.generation_id), 4)
    assert isinstance(by_name.event, FileWritten) and by_name.event.content is None
    assert isinstance(inline.event, FileWritten) and isinstance(lost.event, FileWritten)
    assert await written_content(nc, by_name.event) == text
    assert await written_content(nc, inline.event) == text
    with pytest.raises(BlobError, match="no file content"):
        await written_content(nc, lost.event)
