"""An iteration's start: its parent read back whole, and the parent's files named in the
new version's log (`version.based_on`) instead of copied into it.

The parent's contents are read from its log and, for what it inherited in turn, from the
blob store; the new version's manifest is appended once (a resumed run finds it in its
log), after every content it names is in the blob store.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from contracts.events import InheritedFile, VersionBasedOn
from contracts.phases import progress_before
from contracts.state import GenerationState, fold
from services.common.blobs import BlobStore, contents_by_sha256, resolve_contents
from services.common.eventlog import read_generation
from services.common.eventwriter import GenerationWriter
from services.common.logs import get_logger
from services.orchestrator.providers.base import ProviderError

log = get_logger(__name__)

# Inherited files per `version.based_on` event: 1,000 entries stay far below the largest
# event the stream takes (contracts/streams.py MAX_EVENT_BYTES), whatever their paths.
MANIFEST_CHUNK = 1_000


async def read_parent(js: JetStreamContext, blobs: BlobStore, parent_id: str) -> GenerationState:
    """The parent version folded from its log, every file's content filled in;
    ProviderError if it is not a completed version."""
    parent = fold(e.event for e in await read_generation(js, parent_id))
    if parent is None or parent.summary.status != "completed":
        raise ProviderError(
            f"the parent generation {parent_id} is not a completed version", kind="provider"
        )
    await resolve_contents(blobs, parent)
    return parent


async def name_parent_files(
    writer: GenerationWriter, blobs: BlobStore, state: GenerationState, parent: GenerationState
) -> None:
    """Start the version from `parent`'s files, named by content: their blobs go to the
    broker first, then one `version.based_on` manifest (a batch of them for a huge
    project); `state` (the version's, folded by the writer) gets their contents. Done once
    per version: nothing when its log already has a manifest."""
    if state.based_on is not None:
        return
    contents = parent.file_contents()
    stored = await blobs.put_many(contents.values())
    inherited = [
        InheritedFile(path=f.path, sha256=f.sha256, size=f.size)
        for f in sorted(parent.files.values(), key=lambda f: f.path)
    ]
    batch = writer.batch()
    for start in range(0, max(len(inherited), 1), MANIFEST_CHUNK):
        batch.add(
            VersionBasedOn,
            parent_generation_id=parent.generation_id,
            files=inherited[start : start + MANIFEST_CHUNK],
            phase="plan",
            progress=progress_before("plan"),
        )
    await batch.append()
    await resolve_contents(blobs, state, contents_by_sha256(contents.values()))
    log.info(
        "Generation {generation_id} based on {parent_id}: {files} files inherited",
        generation_id=state.generation_id,
        parent_id=parent.generation_id,
        files=len(inherited),
        blobs_stored=stored,
    )
