"""File contents in the broker, once per sha256: the blobs a `version.based_on` names.

A version's log names the files it inherits by sha256 instead of copying them; their
contents live in the blob stream (`KILN_BLOBS`, one subject per sha256, first message
kept). A writer stores every blob before the event that refers to it, so a reader never
meets a name it cannot resolve; every read checks the content against its name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from contracts import streams, subjects
from contracts.codec import content_sha256
from contracts.state import GenerationState
from services.common.logs import get_logger

log = get_logger(__name__)

# How many blob reads or writes one caller keeps in flight.
CONCURRENCY = 64
# nats-server's answer to a second message on a subject that keeps its first only
# (`discard_new_per_subject`): the blob is already there.
_SUBJECT_FULL = 10077


class BlobError(RuntimeError):
    """A blob the log names cannot be read as its name says."""


class BlobMissing(BlobError):
    """The broker holds no blob of this sha256."""


class BlobCorrupt(BlobError):
    """The broker's blob does not hash to its name."""


class BlobStore:
    """Reads and writes file contents by sha256 in the blob stream."""

    def __init__(self, js: JetStreamContext, concurrency: int = CONCURRENCY) -> None:
        self.js = js
        self._limit = asyncio.Semaphore(concurrency)

    async def put(self, content: str) -> bool:
        """Store `content` under its sha256; True if it was not there yet."""
        sha256 = content_sha256(content)
        async with self._limit:
            try:
                ack = await self.js.publish(
                    subjects.blob_subject(sha256),
                    content.encode(),
                    stream=streams.BLOBS_STREAM,
                    headers={"Nats-Msg-Id": sha256},
                )
            except APIError as exc:
                if exc.err_code == _SUBJECT_FULL:
                    return False
                raise
        return not ack.duplicate

    async def put_many(self, contents: Iterable[str]) -> int:
        """Store each distinct content; how many were new to the broker."""
        distinct = {content_sha256(c): c for c in contents}
        stored = await asyncio.gather(*(self.put(c) for c in distinct.values()))
        return sum(stored)

    async def read(self, sha256: str) -> bytes | None:
        """The bytes stored under `sha256` as they are (unchecked), or None if there are none."""
        subject = subjects.blob_subject(sha256)
        async with self._limit:
            try:
                message = await self.js.get_last_msg(streams.BLOBS_STREAM, subject, direct=True)
            except NotFoundError:
                # A direct get may be answered by a replica that has not caught up yet;
                # the stream's leader has every blob a stored event names.
                try:
                    message = await self.js.get_last_msg(streams.BLOBS_STREAM, subject)
                except NotFoundError:
                    return None
        return message.data or b""

    async def get(self, sha256: str) -> str:
        """The content named `sha256`; BlobMissing or BlobCorrupt if the broker cannot say."""
        data = await self.read(sha256)
        if data is None:
            raise BlobMissing(f"the broker holds no file content {sha256}")
        try:
            content = data.decode()
        except UnicodeDecodeError:
            raise BlobCorrupt(f"the file content {sha256} is not UTF-8") from None
        if content_sha256(content) != sha256:
            raise BlobCorrupt(f"the file content stored as {sha256} hashes otherwise")
        return content

    async def get_many(self, names: Iterable[str]) -> dict[str, str]:
        """sha256 → content of each name."""
        distinct = sorted(set(names))
        contents = await asyncio.gather(*(self.get(sha256) for sha256 in distinct))
        return dict(zip(distinct, contents, strict=True))


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
