"""What the gateway reads, shaped as the API answers it: the read model, checked against
the log so it never lies.

The read model (storage's projection) may lag the log by a few milliseconds, or by much
more if storage is down. Every read first asks the stream for the generation's last
sequence. A status read that finds the read model behind waits a moment for it, then
folds the log itself; a read of a version's files waits for the read model to hold the
whole version (or answers 503 with Retry-After), so a zip never misses a file.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext

from contracts.audit import check_contents, content_names, verify_chain
from contracts.events import GenerationRequested, is_terminal
from contracts.state import GenerationState, GenerationSummary, fold
from services.common.eventlog import last_event, last_stream_seq, read_generation
from services.gateway.archive import build_zip, content_disposition
from services.gateway.diffs import diff_versions, repaired_files
from services.gateway.errors import NotFound, Unavailable
from services.gateway.requests import checked_file_path
from services.gateway.schemas import (
    Accepted,
    AuditEvent,
    AuditLog,
    ChainVerification,
    Diff,
    ErrorInfo,
    FileInfo,
    FileList,
    GenerationStatus,
    ProjectInfo,
    ProjectList,
    StreamToken,
    VersionInfo,
)
from services.gateway.tokens import TokenSigner
from services.storage.queries import FileEntry, GenerationView, ProjectView, ReadModel

CATCH_UP_WAIT_S = 2.0
SETTLE_WAIT_S = 8.0


def _duration_ms(started: datetime | None, finished: datetime | None) -> int | None:
    if started is None or finished is None:
        return None
    return int((finished - started).total_seconds() * 1000)


def stream_url(generation_id: str, token: str) -> str:
    """The relative URL of a generation's SSE stream with its token."""
    return f"/generations/{generation_id}/stream?token={token}"


def accepted(event: GenerationRequested, tokens: TokenSigner) -> Accepted:
    """The answer to a new generation: where to follow it, with a fresh SSE token."""
    token, _ = tokens.issue(event.generation_id, event.owner)
    return Accepted(
        generation_id=event.generation_id,
        project_id=event.project_id,
        version=event.version,
        status="pending",
        sse_token=token,
        stream_url=stream_url(event.generation_id, token),
        status_url=f"/generations/{event.generation_id}",
        parent_generation_id=event.parent_generation_id,
    )


def stream_token(generation_id: str, owner: str, tokens: TokenSigner) -> StreamToken:
    """A fresh SSE token for a generation the caller owns."""
    token, expires = tokens.issue(generation_id, owner)
    return StreamToken(
        generation_id=generation_id,
        sse_token=token,
        stream_url=stream_url(generation_id, token),
        expires_at=datetime.fromtimestamp(expires, UTC),
    )


class Views:
    """Reads of generations and their versions, consistent with the log."""

    def __init__(self, js: JetStreamContext, read_model: ReadModel) -> None:
        self.js = js
        self.read_model = read_model

    async def log_state(self, generation_id: str) -> GenerationState | None:
        """The generation folded from its log (file contents dropped), or None."""
        events = await read_generation(self.js, generation_id)
        return fold((e.event for e in events), keep_content=False)

    async def _caught_up(
        self, generation_id: str, wait_s: float
    ) -> tuple[GenerationView | None, int]:
        target = await last_stream_seq(self.js, generation_id)
        deadline = time.monotonic() + wait_s
        while True:
            view = await self.read_model.generation(generation_id)
            if target == 0 or (view is not None and view.last_stream_seq >= target):
                return view, target
            if time.monotonic() >= deadline:
                return None, target
            await asyncio.sleep(0.05)

    async def state(self, generation_id: str, owner: str) -> GenerationState:
        """The folded state of a generation the caller owns (from the log), or NotFound."""
        state = await self.log_state(generation_id)
        if state is None or state.summary.owner != owner:
            raise NotFound(f"There is no generation {generation_id}.")
        return state

    async def status(self, generation_id: str, owner: str) -> GenerationStatus:
        """Where a generation stands; never 404 right after the POST that created it."""
        view, target = await self._caught_up(generation_id, CATCH_UP_WAIT_S)
        if view is not None:
            if view.owner != owner:
                raise NotFound(f"There is no generation {generation_id}.")
            return status_of(view)
        if target == 0:
            raise NotFound(f"There is no generation {generation_id}.")
        state = await self.state(generation_id, owner)
        return status_of(state.summary)

    async def settled(self, generation_id: str, owner: str) -> GenerationView:
        """The read model's view of a generation once it holds everything the log has."""
        view, target = await self._caught_up(generation_id, SETTLE_WAIT_S)
        if view is None:
            if target == 0:
                raise NotFound(f"There is no generation {generation_id}.")
            state = await self.log_state(generation_id)
            if state is None or state.summary.owner != owner:
                raise NotFound(f"There is no generation {generation_id}.")
            raise Unavailable(
                "The files of this generation are still being stored; retry in a moment."
            )
        if view.owner != owner:
            raise NotFound(f"There is no generation {generation_id}.")
        return view

    async def iteration_base(self, parent_id: str, owner: str) -> tuple[GenerationState, int]:
        """The parent's state from the log, and the highest version its project has stored."""
        parent = await self.state(parent_id, owner)
        project = await self.read_model.project(parent.summary.project_id)
        return parent, project.latest_version if project else 0

    async def file_list(self, generation_id: str, owner: str) -> FileList:
        """Path, size and sha256 of every file of the version."""
        view = await self.settled(generation_id, owner)
        entries = await self.read_model.files(view.generation_id)
        return FileList(
            generation_id=view.generation_id,
            version=view.version,
            status=view.status,
            file_count=len(entries),
            total_bytes=sum(e.size for e in entries),
            files=[
                FileInfo(path=e.path, size=e.size, sha256=e.sha256, phase=e.phase, origin=e.origin)
                for e in entries
            ],
        )

    async def file(self, generation_id: str, path: str, owner: str) -> tuple[FileEntry, bytes]:
        """One file of the version and its content; NotFound, or BadRequest for a path no
        file can have (checked once the generation is known to be the caller's)."""
        view = await self.settled(generation_id, owner)
        path = checked_file_path(path)
        found = await self.read_model.file(view.generation_id, path)
        if found is None:
            raise NotFound(f"Version {view.version} has no file {path!r}.")
        return found

    async def archive(self, generation_id: str, owner: str) -> tuple[bytes, str]:
        """The version as a zip, and its `Content-Disposition` (named after the project)."""
        view = await self.settled(generation_id, owner)
        contents = await self.read_model.contents(view.generation_id)
        return build_zip(contents), content_disposition(view.project_name, view.version)

    async def diff(self, generation_id: str, owner: str) -> Diff:
        """The version against its parent (against nothing for a first version)."""
        view = await self.settled(generation_id, owner)
        contents = await self.read_model.contents(view.generation_id)
        parent_contents: dict[str, bytes] = {}
        if view.parent_generation_id:
            await self.settled(view.parent_generation_id, owner)
            parent_contents = await self.read_model.contents(view.parent_generation_id)
        events = await self.read_model.events(view.generation_id)
        reasons = {
            e.body.get("path", ""): e.body.get("reason", "")
            for e in events
            if e.type == "file.deleted"
        }
        repaired = repaired_files([(e.type, e.body) for e in events])
        summary, files = diff_versions(parent_contents, contents, reasons, repaired)
        return Diff(
            generation_id=view.generation_id,
            parent_generation_id=view.parent_generation_id,
            summary=summary,
            files=files,
        )

    async def audit(self, generation_id: str, owner: str, verify: bool) -> AuditLog:
        """Every stored event in order; with `verify`, the hash chain recomputed too."""
        view = await self.settled(generation_id, owner)
        entries = await self.read_model.events(view.generation_id)
        report = None
        if verify:
            links = await self.read_model.stored_links(entries)
            contents = await self.read_model.blobs(content_names(links))
            report = check_contents(verify_chain(links), links, contents)
        return AuditLog(
            verification=msgspec.convert(msgspec.to_builtins(report), ChainVerification)
            if report
            else None,
            generation_id=view.generation_id,
            count=len(entries),
            events=[
                msgspec.convert({**msgspec.structs.asdict(e), "event": e.body}, AuditEvent)
                for e in entries
            ],
        )

    async def ended_before(self, generation_id: str, after: int) -> bool:
        """True when the generation has ended and a client that saw stream sequence `after`
        has everything up to its end."""
        last = await last_event(self.js, generation_id)
        return last is not None and is_terminal(last.event) and after >= last.stream_seq

    async def projects(self, owner: str) -> ProjectList:
        """Every project of the owner with its versions, newest first."""
        return ProjectList(
            projects=[project_info(p) for p in await self.read_model.projects(owner)]
        )

    async def project(self, project_id: str, owner: str) -> ProjectInfo:
        """One project of the owner and its versions, or NotFound."""
        project = await self.read_model.project(project_id)
        if project is None or project.owner != owner:
            raise NotFound(f"There is no project {project_id}.")
        return project_info(project)


def project_info(project: ProjectView) -> ProjectInfo:
    """The API's shape of a project."""
    return ProjectInfo(
        project_id=project.project_id,
        name=project.name,
        created_at=project.created_at,
        latest_version=project.latest_version,
        versions=[
            msgspec.convert(msgspec.structs.asdict(v), VersionInfo, from_attributes=True)
            for v in project.versions
        ],
    )


def status_of(summary: GenerationSummary) -> GenerationStatus:
    """The API's status of a generation: every field of `GenerationStatus` named like one
    of the summary's is the summary's (whether it comes from the read model or the log);
    the rest are worked out here. The one place a status is mapped."""
    error = None
    if summary.error:
        error = ErrorInfo(
            message=summary.error,
            phase=summary.error_phase,
            kind=summary.error_kind,
            retryable=summary.retryable,
        )
    return msgspec.convert(
        {
            **msgspec.structs.asdict(summary),
            "duration_ms": _duration_ms(summary.started_at, summary.finished_at),
            "error": error,
            "stream_url": f"/generations/{summary.generation_id}/stream",
        },
        GenerationStatus,
        from_attributes=True,  # the nested Structs (verification) as they are
    )
