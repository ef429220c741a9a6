"""File contents by sha256 in the broker: stored once, read back only as named."""

from __future__ import annotations

import asyncio
import time
import zlib
from datetime import UTC, datetime
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client

from contracts import streams, subjects
from contracts.codec import content_sha256
from contracts.events import InheritedFile, VersionBasedOn
from contracts.limits import MAX_FILE_BYTES
from contracts.state import FileState, GenerationState, GenerationSummary, apply
from services.common import blobs
from services.common.blobs import BlobCorrupt, BlobMissing, BlobStore, resolve_contents
from services.common.embedded_nats import EmbeddedNats
from tests.support.frozen import frozen


async def test_a_content_is_stored_once_however_often_it_is_put(nc: Client) -> None:
    js = nc.jetstream()
    store = BlobStore(js)
    assert await store.put("print('hi')\n") is True
    assert await store.put("print('hi')\n") is False
    assert await store.put_many(["a = 1\n", "print('hi')\n", "a = 1\n", "ü = 2\n"]) == 2
    info = await js.stream_info(streams.BLOBS_STREAM)
    assert info.state.messages == 3
    assert await store.get(content_sha256("ü = 2\n")) == "ü = 2\n"


# An orchestrator's store waits out "not now" (not_now_wait_s); a full subject is not that.
@pytest.mark.parametrize("not_now_wait_s", [0.0, 30.0], ids=["impatient", "patient"])
async def test_a_content_put_again_after_the_duplicate_window_is_still_stored_once(
    nc: Client, not_now_wait_s: float
) -> None:
    js = nc.jetstream()
    content = "x = 1\n"
    # Past the duplicate window the Msg-Id no longer matches: the subject refuses a second
    # (a 503 "store failed", known at once).
    await js.publish(subjects.blob_subject(content_sha256(content)), content.encode())
    started = time.monotonic()
    assert await BlobStore(js, not_now_wait_s=not_now_wait_s).put(content) is False
    assert time.monotonic() - started < 5
    assert (await js.stream_info(streams.BLOBS_STREAM)).state.messages == 1


async def test_reading_a_content_the_broker_lacks_says_which(nc: Client) -> None:
    with pytest.raises(BlobMissing, match="no file content " + "1" * 64):
        await BlobStore(nc.jetstream()).get("1" * 64)


async def test_a_stored_content_that_does_not_hash_to_its_name_is_refused(nc: Client) -> None:
    js = nc.jetstream()
    name = content_sha256("the real content\n")
    await js.publish(subjects.blob_subject(name), b"something else\n")
    with pytest.raises(BlobCorrupt, match="hashes otherwise"):
        await BlobStore(js).get(name)
    not_utf8 = "2" * 64
    await js.publish(subjects.blob_subject(not_utf8), b"\xff\xfe")
    with pytest.raises(BlobCorrupt, match="not UTF-8"):
        await BlobStore(js).get(not_utf8)


async def test_a_content_is_stored_deflated_where_that_makes_it_smaller(nc: Client) -> None:
    js = nc.jetstream()
    store = BlobStore(js)
    source = "def handler(request):\n    return {'items': [], 'total': 0}\n\n" * 40
    tiny = "x = 1\n"
    await store.put_many([source, tiny])

    stored = await js.get_last_msg(
        streams.BLOBS_STREAM, subjects.blob_subject(content_sha256(source))
    )
    assert stored.headers is not None and stored.headers["Content-Encoding"] == "deflate"
    assert len(stored.data or b"") < len(source) / 10
    kept = await js.get_last_msg(streams.BLOBS_STREAM, subjects.blob_subject(content_sha256(tiny)))
    assert "Content-Encoding" not in (kept.headers or {}), "a small content is stored as it is"
    assert kept.data == tiny.encode()
    for content in (source, tiny):
        assert await store.get(content_sha256(content)) == content
        assert await store.read(content_sha256(content)) == content.encode()


async def test_a_stored_content_that_cannot_be_inflated_is_refused(nc: Client) -> None:
    js = nc.jetstream()
    bomb = zlib.compress(b"\0" * (MAX_FILE_BYTES + 1))
    cases = {
        "3" * 64: (b"not deflate at all", "deflate", "cannot be inflated"),
        "4" * 64: (bomb, "deflate", "larger than any file"),
        "5" * 64: (zlib.compress(b"x = 1\n"), "br", "unknown encoding 'br'"),
    }
    for name, (data, encoding, problem) in cases.items():
        await js.publish(subjects.blob_subject(name), data, headers={"Content-Encoding": encoding})
        with pytest.raises(BlobCorrupt, match=problem):
            await BlobStore(js).get(name)


class _CountingStore(BlobStore):
    """A blob store that counts the names it reads one by one (after a batch)."""

    alone: list[str]

    async def _fetch(self, sha256: str) -> Any:
        self.alone = [*getattr(self, "alone", []), sha256]
        return await super()._fetch(sha256)


async def test_many_contents_are_read_in_batches_each_with_its_own_verdict(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    js = nc.jetstream()
    contents = [f"line = {i}\n" * (i + 1) * 40 for i in range(7)]
    await BlobStore(js).put_many(contents)
    corrupt, missing = "6" * 64, "7" * 64
    await js.publish(subjects.blob_subject(corrupt), b"not what the name says\n")
    monkeypatch.setattr(blobs, "MULTI_GET", 3)  # 9 names: three batched requests

    store = _CountingStore(js)
    each = await store.get_each([*(content_sha256(c) for c in contents), corrupt, missing])

    assert {content_sha256(c): c for c in contents}.items() <= each.items()
    assert isinstance(each[corrupt], BlobCorrupt)
    assert isinstance(each[missing], BlobMissing)
    assert store.alone == [missing], "only what no batch answered is read alone"
    with pytest.raises(BlobCorrupt):
        await store.get_many([content_sha256(contents[0]), corrupt])


def test_a_blob_subject_takes_only_a_lowercase_sha256() -> None:
    assert subjects.blob_subject("ab" * 32) == "kiln.blobs." + "ab" * 32
    for bad in ("AB" * 32, "ab" * 31, "x" * 64, "ab" * 32 + ".>", "*"):
        with pytest.raises(ValueError):
            subjects.blob_subject(bad)


def _inheriting(files: dict[str, str]) -> GenerationState:
    state = GenerationState(summary=GenerationSummary(generation_id="g2", project_id="p"))
    event = VersionBasedOn(
        event_id="e1",
        generation_id="g2",
        project_id="p",
        seq=1,
        at=datetime(2026, 1, 1, tzinfo=UTC),
        parent_generation_id="g1",
        files=[
            InheritedFile(path=path, sha256=content_sha256(c), size=len(c.encode()))
            for path, c in files.items()
        ],
    )
    return apply(state, event)


async def test_resolving_fills_every_file_named_by_content_from_what_is_known_then_the_broker(
    nc: Client,
) -> None:
    store = BlobStore(nc.jetstream())
    files = {"a.py": "A = 1\n", "b.py": "B = 1\n", "c.py": "A = 1\n"}
    state = _inheriting(files)
    new = "N = 1\n"
    state.files["new.py"] = FileState(
        path="new.py", sha256=content_sha256(new), size=6, phase="api"
    )
    assert set(state.unresolved()) == {"a.py", "b.py", "c.py", "new.py"}
    await store.put_many(["B = 1\n", new])
    read = await resolve_contents(store, state, known={content_sha256("A = 1\n"): "A = 1\n"})
    assert read == 2, "only what was not known is read from the broker"
    assert state.file_contents() == {**files, "new.py": new}
    assert state.unresolved() == {}
    assert state.summary.file_count == 3, "new.py was put in by hand, not by the fold"


async def test_resolving_a_manifest_whose_content_is_nowhere_fails_loudly(nc: Client) -> None:
    state = _inheriting({"lost.py": "never stored\n"})
    with pytest.raises(BlobMissing):
        await resolve_contents(BlobStore(nc.jetstream()), state)


async def test_a_content_the_store_has_seen_the_broker_hold_is_not_sent_again(
    nc: Client,
) -> None:
    js = nc.jetstream()
    store = BlobStore(js, remembered=2)
    sent: list[str] = []
    publish = js.publish

    async def counting(subject: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(subject)
        return await publish(subject, *args, **kwargs)

    js.publish = counting  # type: ignore[method-assign]
    assert await store.put_many(["a = 1\n", "b = 2\n"]) == 2
    assert await store.put_many(["a = 1\n", "b = 2\n"]) == 0
    assert len(sent) == 2, "acknowledged contents are not published again"
    # Read back intact: held too. A third name pushes the least recently used one out,
    # which is then published again (and refused by the broker as already there).
    other = BlobStore(js)
    await other.get_many([content_sha256("a = 1\n")])
    assert other.held(content_sha256("a = 1\n"))
    assert await store.put("c = 3\n") is True
    assert not store.held(content_sha256("a = 1\n")) and store.held(content_sha256("b = 2\n"))
    assert await store.put("a = 1\n") is False
    assert len(sent) == 4
    assert (await js.stream_info(streams.BLOBS_STREAM)).state.messages == 3


async def test_an_orchestrators_store_waits_out_a_broker_that_does_not_answer_for_a_while(
    nc: Client, nats_server: EmbeddedNats
) -> None:
    js = nc.jetstream(timeout=1.0)
    patient, impatient = BlobStore(js, not_now_wait_s=30), BlobStore(js)
    with frozen(nats_server):
        putting = asyncio.create_task(patient.put("x = 1\n"))
        reading = asyncio.create_task(patient.read(content_sha256("y = 2\n")))
        # A store for a request a client retries says "not now" at once instead.
        with pytest.raises(nats.errors.TimeoutError):
            await impatient.get(content_sha256("x = 1\n"))
        assert not putting.done() and not reading.done()

    # Its first publish may be the one stored: the repeat is then a duplicate (False).
    await asyncio.wait_for(putting, 20)
    assert await asyncio.wait_for(reading, 20) is None
    assert await patient.get(content_sha256("x = 1\n")) == "x = 1\n"
