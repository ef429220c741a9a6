"""A read model for route tests: storage's `ReadModel` interface answered by folding the
events a `FakeJetStream` holds with the same `fold` storage projects with. `behind` holds
generations back, as a projector that has not caught up yet would."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import msgspec

from contracts.audit import StoredLink
from contracts.codec import decode_event, event_hash
from contracts.events import Event, FileWritten
from contracts.state import GenerationState, fold
from services.storage.queries import (
    EventEntry,
    FileEntry,
    GenerationView,
    ProjectView,
    ReadModel,
)
from tests.fakes.jetstream import FakeJetStream


class FoldedReadModel(ReadModel):
    """Projects on every read, from the fake broker's events stream."""

    def __init__(self, broker: FakeJetStream) -> None:  # no engine: nothing is stored
        self.broker = broker
        self.behind: set[str] = set()

    def _stored(self, generation_id: str) -> list[tuple[int, bytes, Event]]:
        return [
            (m.seq, m.data, decode_event(m.data))
            for m in self.broker.on("KILN_EVENTS", f"kiln.events.*.{generation_id}")
        ]

    def _state(self, generation_id: str) -> tuple[GenerationState, int] | None:
        stored = self._stored(generation_id)
        if generation_id in self.behind or not stored:
            return None
        state = fold(e for _, _, e in stored)
        assert state is not None
        return state, stored[-1][0]

    async def generation(self, generation_id: str) -> GenerationView | None:
        found = self._state(generation_id)
        if found is None:
            return None
        state, last = found
        return GenerationView(**msgspec.structs.asdict(state.summary), last_stream_seq=last)

    async def files(self, generation_id: str) -> list[FileEntry]:
        found = self._state(generation_id)
        files = found[0].files.values() if found else []
        return [
            FileEntry(path=f.path, size=f.size, sha256=f.sha256, phase=f.phase, origin=f.origin)
            for f in sorted(files, key=lambda f: f.path)
        ]

    async def file(self, generation_id: str, path: str) -> tuple[FileEntry, bytes] | None:
        contents = await self.contents(generation_id)
        if path not in contents:
            return None
        [entry] = [e for e in await self.files(generation_id) if e.path == path]
        return entry, contents[path]

    async def contents(self, generation_id: str) -> dict[str, bytes]:
        found = self._state(generation_id)
        files = found[0].files.values() if found else []
        return {f.path: (f.content or "").encode() for f in files}

    async def events(self, generation_id: str) -> list[EventEntry]:
        entries = []
        for seq, data, event in self._stored(generation_id):
            body = msgspec.to_builtins(event)
            if isinstance(event, FileWritten):
                body.pop("content")
            entries.append(
                EventEntry(
                    stream_seq=seq,
                    seq=event.seq,
                    type=body["type"],
                    at=event.at,
                    progress=event.progress,
                    body=body,
                    hash=event_hash(data),
                )
            )
        return entries

    async def stored_links(self, entries: list[EventEntry]) -> list[StoredLink]:
        data = {m.seq: m.data for m in self.broker.on("KILN_EVENTS")}
        return [
            StoredLink(stream_seq=e.stream_seq, data=data[e.stream_seq], stored_hash=e.hash)
            for e in entries
        ]

    async def blobs(self, names: Iterable[str]) -> dict[str, bytes]:
        wanted = set(names)
        stored = {m.subject.rsplit(".", 1)[1]: m.data for m in self.broker.on("KILN_BLOBS")}
        return {sha: data for sha, data in stored.items() if sha in wanted}

    async def projects(self, owner: str) -> list[ProjectView]:
        by_project: dict[str, list[GenerationView]] = defaultdict(list)
        generation_ids = {m.subject.split(".")[-1] for m in self.broker.on("KILN_EVENTS")}
        for generation_id in sorted(generation_ids):
            view = await self.generation(generation_id)
            if view is not None and view.owner == owner:
                by_project[view.project_id].append(view)
        return [self._project(views) for views in by_project.values()]

    async def project(self, project_id: str) -> ProjectView | None:
        views = [
            view
            for m in self.broker.on("KILN_EVENTS", f"kiln.events.{project_id}.*")
            if (view := await self.generation(m.subject.split(".")[-1])) is not None
        ]
        unique = list({v.generation_id: v for v in views}.values())
        return self._project(unique) if unique else None

    @staticmethod
    def _project(views: list[GenerationView]) -> ProjectView:
        views = sorted(views, key=lambda v: v.version)
        first = views[0]
        assert first.created_at is not None
        return ProjectView(
            project_id=first.project_id,
            name=first.project_name,
            owner=first.owner,
            created_at=first.created_at,
            latest_version=views[-1].version,
            versions=list(views),
        )

    async def ping(self) -> None:
        return None
