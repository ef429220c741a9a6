"""File contents in the broker, once per sha256: the blobs a version's log names.

A version's log names its files by sha256 (each `file.written`, and the manifest of the
files an iteration keeps from its parent, `version.based_on`) instead of carrying them;
their contents live in the blob stream (`KILN_BLOBS`, one subject per sha256, first
message kept). A writer stores every blob before the event that refers to it, so a reader
never meets a name it cannot resolve; every read checks the content against its name.

A blob is stored deflated (zlib, `Content-Encoding: deflate`) where that makes it smaller:
the stream's own S2 compression applies only to full 8 MiB blocks, so without this a
small deployment's blobs would stay uncompressed on disk for a long time. A blob without
the header is stored as it is (small ones, and those written by Kiln 0.2.0).

The stream never removes a blob (one message per subject, kept first, no age limit), so a
`BlobStore` remembers the names it has seen the broker hold — acknowledged, refused as
already there, or read back intact — and does not publish those again: a content every
generation shares (a template's boilerplate, an iteration's inherited files) is sent
and deflated once per process instead of once per version.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TypeVar

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from contracts import streams, subjects
from contracts.codec import content_sha256
from contracts.limits import MAX_FILE_BYTES
from contracts.state import GenerationState
from services.common.broker import when_available
from services.common.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")

# How many blob reads or writes one caller keeps in flight.
CONCURRENCY = 64
# Names per batched read: nats-server answers at most 1,024 subjects per `multi_last`.
MULTI_GET = 1000
# How long a batched read waits for its next message before reading the rest alone.
BATCH_WAIT_S = 5.0
# nats-server's answer to a second message on a subject that keeps its first only
# (`discard_new_per_subject`): the blob is already there.
_SUBJECT_FULL = 10077
ENCODING_HEADER = "Content-Encoding"
DEFLATE = "deflate"
# Below this many bytes a content is stored as it is: deflating it saves next to nothing.
DEFLATE_FROM_BYTES = 200
DEFLATE_LEVEL = 6
# How many names a store remembers as held by the broker (~150 bytes each), least recently
# used first out: 25 of the largest versions Kiln builds (2,000 files each).
REMEMBERED = 50_000


class BlobError(RuntimeError):
    """A blob the log names cannot be read as its name says."""


class BlobMissing(BlobError):
    """The broker holds no blob of this sha256."""


class BlobCorrupt(BlobError):
    """The broker's blob does not hash to its name."""


def packed(data: bytes) -> tuple[bytes, dict[str, str]]:
    """A content's bytes as the blob stream stores them, and the headers saying how."""
    if len(data) >= DEFLATE_FROM_BYTES:
        deflated = zlib.compress(data, DEFLATE_LEVEL)
        if len(deflated) < len(data):
            return deflated, {ENCODING_HEADER: DEFLATE}
    return data, {}


def unpacked(data: bytes, headers: Mapping[str, str] | None) -> bytes:
    """A stored blob's content bytes (BlobCorrupt if its encoding cannot be undone, or
    it would inflate past the largest file Kiln stores)."""
    encoding = (headers or {}).get(ENCODING_HEADER)
    if encoding is None:
        return data
    if encoding != DEFLATE:
        raise BlobCorrupt(f"a file content is stored with an unknown encoding {encoding!r}")
    inflater = zlib.decompressobj()
    try:
        content = inflater.decompress(data, MAX_FILE_BYTES + 1)
    except zlib.error as exc:
        raise BlobCorrupt(f"a deflated file content cannot be inflated: {exc}") from None
    if len(content) > MAX_FILE_BYTES or not inflater.eof:
        raise BlobCorrupt("a deflated file content is larger than any file Kiln stores")
    return content


class BlobStore:
    """Reads and writes file contents by sha256 in the blob stream."""

    def __init__(
        self,
        js: JetStreamContext,
        concurrency: int = CONCURRENCY,
        remembered: int = REMEMBERED,
        *,
        not_now_wait_s: float = 0.0,
    ) -> None:
        """`not_now_wait_s`: how long a read or write waits out the broker's "not now" (a
        leader election) before it raises; 0 raises at once (a request a client retries)."""
        self.js = js
        self._limit = asyncio.Semaphore(concurrency)
        self._held: OrderedDict[str, None] = OrderedDict()
        self._remembered = remembered
        self._not_now_wait_s = not_now_wait_s

    async def _limited(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """`call()` within the store's concurrency limit, asked again while the broker says
        "not now" (up to `not_now_wait_s`); a place in the limit is held per attempt, not
        while waiting."""

        async def attempt() -> T:
            async with self._limit:
                return await call()

        if self._not_now_wait_s <= 0:
            return await attempt()
        return await when_available(attempt, what=what, wait_s=self._not_now_wait_s)

    def held(self, sha256: str) -> bool:
        """True when this store has seen the broker hold `sha256` (it is there still)."""
        if sha256 not in self._held:
            return False
        self._held.move_to_end(sha256)
        return True

    def _hold(self, sha256: str) -> None:
        self._held[sha256] = None
        self._held.move_to_end(sha256)
        if len(self._held) > self._remembered:
            self._held.popitem(last=False)

    async def put(self, content: str) -> bool:
        """Store `content` under its sha256; True if it was not there yet (False without
        a publish when this store has seen the broker hold it)."""
        return await self._put(content_sha256(content), content)

    async def _put(self, sha256: str, content: str) -> bool:
        if self.held(sha256):
            return False
        data, headers = packed(content.encode())
        try:
            # Safe to repeat: the Msg-Id stores a content once.
            ack = await self._limited(
                lambda: self.js.publish(
                    subjects.blob_subject(sha256),
                    data,
                    stream=streams.BLOBS_STREAM,
                    headers={"Nats-Msg-Id": sha256, **headers},
                ),
                f"store the file content {sha256}",
            )
        except APIError as exc:
            if exc.err_code == _SUBJECT_FULL:
                self._hold(sha256)
                return False
            raise
        self._hold(sha256)
        return not ack.duplicate

    async def put_many(self, contents: Iterable[str]) -> int:
        """Store each distinct content; how many were new to the broker."""
        return await self.put_named({content_sha256(c): c for c in contents})

    async def put_named(self, contents: Mapping[str, str]) -> int:
        """Store each content of `contents` (sha256 → content, the caller has hashed it);
        how many were new to the broker."""
        wanted = [(sha, c) for sha, c in contents.items() if not self.held(sha)]
        stored = await asyncio.gather(*(self._put(sha, c) for sha, c in wanted))
        return sum(stored)

    async def read(self, sha256: str) -> bytes | None:
        """The content bytes stored under `sha256` (inflated, not checked against the name),
        or None if there are none; BlobCorrupt if they cannot be inflated."""
        stored = await self._fetch(sha256)
        return None if stored is None else unpacked(*stored)

    async def get(self, sha256: str) -> str:
        """The content named `sha256`; BlobMissing or BlobCorrupt if the broker cannot say."""
        content = _checked(sha256, await self._fetch(sha256))
        self._hold(sha256)
        return content

    async def get_each(self, names: Iterable[str]) -> dict[str, str | BlobError]:
        """sha256 → the content of each name, or why the broker cannot give it; read in
        batches of up to MULTI_GET names per request (one round trip each), a name a batch
        did not answer (a replica behind, an older server) then read alone."""
        distinct = sorted(set(names))
        stored: dict[str, _Stored | None] = {}
        for start in range(0, len(distinct), MULTI_GET):
            stored.update(await self._fetch_batch(distinct[start : start + MULTI_GET]))
        rest = [sha for sha in distinct if sha not in stored]
        alone = await asyncio.gather(*(self._fetch(sha) for sha in rest))
        stored.update(zip(rest, alone, strict=True))
        each: dict[str, str | BlobError] = {}
        for sha in distinct:
            try:
                each[sha] = _checked(sha, stored[sha])
                self._hold(sha)
            except BlobError as exc:
                each[sha] = exc
        return each

    async def get_many(self, names: Iterable[str]) -> dict[str, str]:
        """sha256 → content of each name; the first BlobError if one cannot be given."""
        each = await self.get_each(names)
        for result in each.values():
            if isinstance(result, BlobError):
                raise result
        return {sha: content for sha, content in each.items() if isinstance(content, str)}

    async def _fetch(self, sha256: str) -> _Stored | None:
        """The stored bytes and headers under `sha256`, or None."""
        subject = subjects.blob_subject(sha256)
        try:
            message = await self._limited(
                lambda: self.js.get_last_msg(streams.BLOBS_STREAM, subject, direct=True),
                f"read the file content {sha256}",
            )
        except NotFoundError:
            # A direct get may be answered by a replica that has not caught up yet; the
            # stream's leader has every blob a stored event names.
            try:
                message = await self._limited(
                    lambda: self.js.get_last_msg(streams.BLOBS_STREAM, subject),
                    f"read the file content {sha256}",
                )
            except NotFoundError:
                return None
        return message.data or b"", message.headers

    async def _fetch_batch(self, names: list[str]) -> dict[str, _Stored]:
        """The stored blobs of `names` that one batched direct get returns (nats-server >=
        2.11, `multi_last`): each message, then a status (204 EOB, or 404 when none is
        there). What it does not return (cut by the server's byte limit, a timeout, an
        older server's refusal) is left out, for the caller to read alone."""
        nc = self.js._nc  # nats-py keeps a JetStream context's connection here
        inbox = nc.new_inbox()
        request = json.dumps({"multi_last": [subjects.blob_subject(sha) for sha in names]})
        found: dict[str, _Stored] = {}
        async with self._limit:
            sub = await nc.subscribe(inbox)
            try:
                await nc.publish(
                    f"{self.js._prefix}.DIRECT.GET.{streams.BLOBS_STREAM}",
                    request.encode(),
                    reply=inbox,
                )
                while len(found) < len(names):
                    message = await sub.next_msg(timeout=BATCH_WAIT_S)
                    headers = message.headers or {}
                    if "Status" in headers:
                        break
                    subject = headers.get("Nats-Subject", "")
                    found[subject.rsplit(".", 1)[-1]] = (message.data or b"", headers)
            except nats.errors.TimeoutError:
                log.warning(
                    "A batched read of {count} file contents timed out after {received}; "
                    "reading the rest one by one",
                    count=len(names),
                    received=len(found),
                )
            finally:
                await sub.unsubscribe()
        wanted = set(names)
        return {sha: stored for sha, stored in found.items() if sha in wanted}


_Stored = tuple[bytes, Mapping[str, str] | None]
"""A blob message's data and headers, as the broker keeps them."""


def _checked(sha256: str, stored: _Stored | None) -> str:
    """The content of a stored blob, checked against its name."""
    if stored is None:
        raise BlobMissing(f"the broker holds no file content {sha256}")
    data = unpacked(*stored)
    try:
        content = data.decode()
    except UnicodeDecodeError:
        raise BlobCorrupt(f"the file content {sha256} is not UTF-8") from None
    if content_sha256(content) != sha256:
        raise BlobCorrupt(f"the file content stored as {sha256} hashes otherwise")
    return content


async def resolve_contents(
    store: BlobStore, state: GenerationState, known: Mapping[str, str] | None = None
) -> int:
    """Fill in the content of every inherited file of `state` (in place): from `known`
    (sha256 → content) where it has it, else from the broker. How many were read."""
    missing = state.unresolved()
    if not missing:
        return 0
    known = known or {}
    wanted = {f.sha256 for f in missing.values() if f.sha256 not in known}
    fetched = await store.get_many(wanted) if wanted else {}
    for file in missing.values():
        file.content = known.get(file.sha256, fetched.get(file.sha256))
    return len(wanted)


def contents_by_sha256(contents: Iterable[str]) -> dict[str, str]:
    """sha256 → content, for `resolve_contents`'s `known`."""
    return {content_sha256(c): c for c in contents}
