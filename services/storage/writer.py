"""The batch writer: applies decoded events to the read model within one transaction.

A generation's row is the summary `contracts.state.apply` folds (mapped by
`services.storage.rows`), its file rows the fold's file set; projects, blobs, file rows,
generation rows and audit rows are written on `flush`, each kind as one statement.

What applying a batch asks of the database is read for the whole batch first (`preload`):
the rows of the generations it names, and for the generations it requests, their
projects' latest versions and whether a version is taken. Asked event by event, a new
generation cost five statements, each a round trip to SQLite's thread (4.2 ms of the
projector's time a generation in B6's 50 concurrent generations, bench/RESULTS.md).

It stays one module (over 450 lines): generation rows, projects, blobs and file rows are
written in one transaction from caches they share (a file row needs its blob and its
generation in the same flush, in that order), and split apart each part would reach into
the others' state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import subjects
from contracts.events import (
    AnyEvent,
    FileDeleted,
    FileWritten,
    GenerationRequested,
    VersionBasedOn,
    event_tag,
)
from contracts.state import FileState, GenerationState, GenerationSummary, apply, new_state
from services.common.blobs import BlobError, BlobMissing, BlobStore
from services.common.consumer import Ack, DeadLetter, Outcome
from services.storage.bulk import BoundRow, insert_bound, insert_many
from services.storage.models import (
    blobs_table,
    events_table,
    generation_files_table,
    generations_table,
    projects_table,
)
from services.storage.rows import from_row, row_values
from services.storage.validation import Decoded

# Statements built once: SQLAlchemy then compiles each once and reuses it, where a
# statement built per row with `.values(...)` made a cache key of every value each time
# (~0.3-0.8 ms a generation row, a few percent of the projector's samples in B6).
_PROJECT_VERSION = select(projects_table.c.latest_version).where(
    projects_table.c.id == bindparam("row_id")
)
_INSERT_PROJECT = insert(projects_table)
_UPDATE_PROJECT_VERSION = update(projects_table).where(projects_table.c.id == bindparam("row_id"))
_INSERT_GENERATION = insert(generations_table)
_SELECT_GENERATION = select(generations_table).where(generations_table.c.id == bindparam("row_id"))
_VERSION_HOLDER = select(generations_table.c.id).where(
    generations_table.c.project_id == bindparam("project_id"),
    generations_table.c.version == bindparam("version"),
)
_SELECT_GENERATIONS = select(generations_table).where(
    generations_table.c.id.in_(bindparam("ids", expanding=True))
)
_PROJECT_VERSIONS = select(projects_table.c.id, projects_table.c.latest_version).where(
    projects_table.c.id.in_(bindparam("ids", expanding=True))
)
_VERSION_HOLDERS = select(
    generations_table.c.id, generations_table.c.project_id, generations_table.c.version
).where(
    generations_table.c.project_id.in_(bindparam("project_ids", expanding=True)),
    generations_table.c.version.in_(bindparam("versions", expanding=True)),
)
_UPDATE_GENERATION = update(generations_table).where(generations_table.c.id == bindparam("row_id"))


@dataclass
class LoadedGeneration:
    """A generation row being updated within a batch."""

    state: GenerationState
    last_stream_seq: int
    files_loaded: bool
    """Whether `state.files` holds the file rows (loaded before the first file event)."""
    dirty: bool = False
    new: bool = False
    """Requested in this transaction: its row is inserted on `flush`, not updated."""


class BatchWriter:
    """Applies events within one transaction; generation rows are written on `flush`.

    `blob_source` gives the contents a `version.based_on` names that the read model does
    not hold yet (their parent projected elsewhere, or not yet); without it, such a
    manifest is dead-lettered."""

    def __init__(self, conn: AsyncConnection, blob_source: BlobStore | None = None) -> None:
        self.conn = conn
        self.blob_source = blob_source
        self.generations: dict[str, LoadedGeneration] = {}
        self.blobs: set[str] = set()
        self.audit: list[BoundRow] = []
        self.generation_id: str | None = None
        self.already_applied = 0
        # Writes wait for `flush`, which sends each kind as one executemany.
        self.new_blobs: list[dict[str, Any]] = []
        self.file_writes: dict[tuple[str, str], FileState | None] = {}
        self.held_blobs: dict[str, int] = {}
        """Blobs `held` events name (sha256 → size): checked on `flush`, in one query."""
        self.stored_blobs: dict[str, int] = {}
        """Blobs (sha256 → size) this transaction stored or found stored: the projector
        remembers them once it commits."""
        self.absent: set[str] = set()
        """Generations known to have no row (nor a `new` one here)."""
        self.latest_versions: dict[str, int | None] = {}
        """Projects' latest versions as this transaction leaves them (None: no project)."""
        self.holders: dict[tuple[str, int], str | None] = {}
        """(project, version) → the generation holding it, None when free, for the pairs
        whose holder is known."""
        self.new_projects: dict[str, dict[str, Any]] = {}
        self.raised_versions: dict[str, int] = {}

    def forget(self) -> None:
        """Drop what is cached (after a savepoint rollback the database is the truth)."""
        self.generations.clear()
        self.blobs.clear()
        self.audit.clear()
        self.new_blobs.clear()
        self.file_writes.clear()
        self.held_blobs.clear()
        self.stored_blobs.clear()
        self.absent.clear()
        self.latest_versions.clear()
        self.holders.clear()
        self.new_projects.clear()
        self.raised_versions.clear()

    async def preload(
        self, events: list[AnyEvent], cached: dict[str, LoadedGeneration] | None = None
    ) -> int:
        """Read in a few statements what applying `events` would ask event by event: the
        rows of the generations they name that are not loaded, and for the generations
        they request, their projects' latest versions and the holders of their versions.

        `cached` are generations folded by earlier batches: each is taken as it is (with
        its file set) if its row has not moved since, else read again. Returns how many
        were taken."""
        cached = cached or {}
        reused = 0
        unknown = {e.generation_id for e in events} - self.generations.keys() - self.absent
        if unknown:
            for row in await self.conn.execute(_SELECT_GENERATIONS, {"ids": sorted(unknown)}):
                earlier = cached.get(str(row.id))
                if earlier is not None and earlier.last_stream_seq == int(row.last_stream_seq):
                    self.generations[str(row.id)] = earlier
                    reused += 1
                else:
                    self._load(row)
            self.absent |= unknown - self.generations.keys()
        requests = [
            e
            for e in events
            if isinstance(e, GenerationRequested) and e.generation_id in self.absent
        ]
        projects = sorted({e.project_id for e in requests} - self.latest_versions.keys())
        if projects:
            rows = await self.conn.execute(_PROJECT_VERSIONS, {"ids": projects})
            self.latest_versions.update(dict.fromkeys(projects))
            self.latest_versions.update({str(r.id): int(r.latest_version) for r in rows})
        # A version of a project without a row has no holder (generations.project_id is a
        # foreign key); those of existing projects are read, pairs at once.
        pairs = {
            (e.project_id, e.version)
            for e in requests
            if self.latest_versions.get(e.project_id) is not None
        } - self.holders.keys()
        if pairs:
            rows = await self.conn.execute(
                _VERSION_HOLDERS,
                {
                    "project_ids": sorted({p for p, _ in pairs}),
                    "versions": sorted({v for _, v in pairs}),
                },
            )
            taken = {(str(r.project_id), int(r.version)): str(r.id) for r in rows}
            self.holders.update({pair: taken.get(pair) for pair in pairs})
        return reused

    async def apply(self, decoded: Decoded, seq: int) -> Outcome:
        """Apply one decoded message; DeadLetter (having written nothing) if it is invalid."""
        self.generation_id = None
        if decoded.problem is not None or decoded.event is None or decoded.audit is None:
            return DeadLetter(decoded.problem or "the event could not be decoded")
        event = decoded.event

        generation = await self._generation(event.generation_id)
        if generation is not None and seq <= generation.last_stream_seq:
            self.already_applied += 1
            return Ack()
        if generation is None:
            if not isinstance(event, GenerationRequested):
                return DeadLetter(
                    f"generation {event.generation_id} has no generation.requested event "
                    f"before this {event_tag(type(event))} event"
                )
            holder = await self._version_holder(event.project_id, event.version)
            if holder is not None:
                return DeadLetter(
                    f"version {event.version} of project {event.project_id} "
                    f"is already generation {holder}"
                )
            await self._create(event, seq)
        elif generation.state.summary.project_id != event.project_id:
            return DeadLetter(
                f"generation {event.generation_id} belongs to project "
                f"{generation.state.summary.project_id}, not {event.project_id}"
            )
        else:
            if isinstance(event, VersionBasedOn):
                problem = await self._store_inherited_blobs(event)
                if problem is not None:
                    return DeadLetter(problem)
            if isinstance(event, FileWritten) and event.content is None:
                if not decoded.held:
                    # The projector reads a named content before the batch (`prepare`).
                    return DeadLetter(f"the content of {event.path!r} was not read")
                self.held_blobs[event.sha256] = event.size
            await self._fold(generation, event, seq)

        self.audit.append(decoded.audit)
        self.generation_id = event.generation_id
        return Ack()

    async def seen(self, subject: str, seq: int) -> None:
        """Count a dead-lettered message as handled for its generation's `last_stream_seq`."""
        ids = subjects.parse_event_subject(subject)
        if ids is None:
            return
        generation = await self._generation(ids[1])
        if generation is None or generation.state.summary.project_id != ids[0]:
            return
        generation.last_stream_seq = max(generation.last_stream_seq, seq)
        generation.dirty = True

    async def flush(self) -> None:
        """Write the new projects and generations, the pending blobs and files, the changed
        generation rows and the audit rows."""
        if self.new_projects:
            await self.conn.execute(_INSERT_PROJECT, list(self.new_projects.values()))
            self.new_projects = {}
        if self.raised_versions:
            await self.conn.execute(
                _UPDATE_PROJECT_VERSION,
                [{"row_id": p, "latest_version": v} for p, v in self.raised_versions.items()],
            )
            self.raised_versions = {}
        now = datetime.now(UTC)
        created = [
            {
                **row_values(generation.state.summary),
                "last_stream_seq": generation.last_stream_seq,
                "updated_at": now,
            }
            for generation in self.generations.values()
            if generation.new
        ]
        if created:
            await self.conn.execute(_INSERT_GENERATION, created)
        await self._flush_files()
        changed = [
            {
                **row_values(generation.state.summary),
                "last_stream_seq": generation.last_stream_seq,
                "updated_at": now,
                "row_id": generation_id,
            }
            for generation_id, generation in self.generations.items()
            if generation.dirty and not generation.new
        ]
        if changed:
            await self.conn.execute(_UPDATE_GENERATION, changed)
        for generation in self.generations.values():
            generation.dirty = False
            generation.new = False
        if self.audit:
            await insert_bound(self.conn, events_table, self.audit)
            self.audit = []

    async def _fold(self, generation: LoadedGeneration, event: AnyEvent, seq: int) -> None:
        if isinstance(event, VersionBasedOn):
            await self._load_files(generation)
            files = generation.state.files
            earlier = {f.path: files.get(f.path) for f in event.files}
            apply(generation.state, event, keep_content=False)
            for path, was in earlier.items():
                after = files.get(path)
                if after != was:
                    self.file_writes[(event.generation_id, path)] = after
        elif isinstance(event, FileWritten | FileDeleted):
            if isinstance(event, FileWritten):
                await self._store_blob(event)
            await self._load_files(generation)
            files = generation.state.files
            before = files.get(event.path)
            apply(generation.state, event, keep_content=False)
            after = files.get(event.path)
            # The fold decides whether the file changed (it ignores events after a
            # terminal one, or already applied); its file row follows.
            if after != before:
                self.file_writes[(event.generation_id, event.path)] = after
        else:
            apply(generation.state, event, keep_content=False)
        generation.last_stream_seq = max(generation.last_stream_seq, seq)
        generation.dirty = True

    async def _create(self, event: GenerationRequested, seq: int) -> None:
        """The generation (and its project, if new) in memory; their rows go in on `flush`."""
        project_id, version = event.project_id, event.version
        if project_id in self.latest_versions:
            latest = self.latest_versions[project_id]
        else:
            row = (await self.conn.execute(_PROJECT_VERSION, {"row_id": project_id})).first()
            latest = None if row is None else int(row.latest_version)
        if latest is None:
            self.new_projects[project_id] = {
                "id": project_id,
                "owner": event.owner,
                "name": event.project_name,
                "created_at": event.at,
                "latest_version": version,
            }
        elif version > latest:
            if project_id in self.new_projects:
                self.new_projects[project_id]["latest_version"] = version
            else:
                self.raised_versions[project_id] = version
        self.latest_versions[project_id] = version if latest is None else max(latest, version)
        self.holders[(project_id, version)] = event.generation_id
        self.absent.discard(event.generation_id)
        state = apply(new_state(event), event, keep_content=False)
        self.generations[event.generation_id] = LoadedGeneration(
            state, seq, files_loaded=True, new=True
        )

    async def _generation(self, generation_id: str) -> LoadedGeneration | None:
        cached = self.generations.get(generation_id)
        if cached is not None:
            return cached
        if generation_id in self.absent:
            return None
        row = (await self.conn.execute(_SELECT_GENERATION, {"row_id": generation_id})).first()
        if row is None:
            self.absent.add(generation_id)
            return None
        return self._load(row)

    def _load(self, row: Any) -> LoadedGeneration:
        """A generation row read from the database, kept for the rest of the transaction."""
        state = GenerationState(summary=from_row(row._mapping, GenerationSummary))
        generation = LoadedGeneration(state, int(row.last_stream_seq), files_loaded=False)
        self.generations[str(row.id)] = generation
        return generation

    async def _version_holder(self, project_id: str, version: int) -> str | None:
        if (project_id, version) in self.holders:
            return self.holders[(project_id, version)]
        if self.latest_versions.get(project_id, 0) is None:
            return None  # no project row: no generation of it (a foreign key)
        return (
            await self.conn.execute(_VERSION_HOLDER, {"project_id": project_id, "version": version})
        ).scalar()

    async def _store_blob(self, event: FileWritten) -> None:
        if event.sha256 in self.blobs or event.content is None:
            return
        self.new_blobs.append(
            {"sha256": event.sha256, "size": event.size, "content": event.content.encode()}
        )
        self.blobs.add(event.sha256)
        self.stored_blobs[event.sha256] = event.size

    async def _store_inherited_blobs(self, event: VersionBasedOn) -> str | None:
        """Make sure the read model holds the content of every file a manifest names,
        fetching from the broker what it lacks; why it cannot, or None."""
        wanted = sorted({f.sha256 for f in event.files} - self.blobs)
        missing = await self._not_in_read_model(wanted)
        if missing:
            if self.blob_source is None:
                return f"{len(missing)} inherited file contents are not in the read model"
            try:
                self._add_blobs(await self.blob_source.get_many(missing))
            except BlobError as exc:
                return f"an inherited file cannot be read: {exc}"
        self.blobs.update(wanted)
        return None

    async def _check_held_blobs(self) -> None:
        """Make sure the blobs `held` events name are in the read model (one query); any
        that are not (the database replaced under a running projector) are read from the
        broker and stored, as a manifest's are. BlobError when one cannot be read: the
        batch is then retried, without taking any blob as held."""
        unchecked = sorted(self.held_blobs.keys() - self.blobs)
        sizes = self.held_blobs
        self.held_blobs = {}
        if not unchecked:
            return
        missing = await self._not_in_read_model(unchecked)
        if missing:
            if self.blob_source is None:
                raise BlobMissing(f"{len(missing)} file contents are not in the read model")
            self._add_blobs(await self.blob_source.get_many(missing))
        self.blobs.update(unchecked)
        self.stored_blobs.update((sha, sizes[sha]) for sha in unchecked)

    async def _not_in_read_model(self, shas: list[str]) -> list[str]:
        """Those of `shas` the blobs table lacks (one query per 500)."""
        held: set[str] = set()
        for start in range(0, len(shas), 500):
            query = select(blobs_table.c.sha256).where(
                blobs_table.c.sha256.in_(shas[start : start + 500])
            )
            held.update(str(sha) for sha in (await self.conn.execute(query)).scalars())
        return [sha for sha in shas if sha not in held]

    def _add_blobs(self, contents: dict[str, str]) -> None:
        for sha, content in contents.items():
            data = content.encode()
            self.new_blobs.append({"sha256": sha, "size": len(data), "content": data})

    async def _flush_files(self) -> None:
        """The pending blobs (stored once however many versions share them) and file rows."""
        await self._check_held_blobs()
        if self.new_blobs:
            # In one order, so projectors inserting the same blobs at once never deadlock.
            self.new_blobs.sort(key=lambda blob: blob["sha256"])
            await insert_many(self.conn, blobs_table, self.new_blobs, on_conflict="nothing")
            self.new_blobs = []
        if not self.file_writes:
            return
        deleted = [key for key, state in self.file_writes.items() if state is None]
        written = [
            {
                "generation_id": generation_id,
                "path": path,
                "sha256": state.sha256,
                "size": state.size,
                "phase": state.phase,
                "origin": state.origin,
            }
            for (generation_id, path), state in self.file_writes.items()
            if state is not None
        ]
        self.file_writes = {}
        table = generation_files_table
        for generation_id, path in deleted:
            await self.conn.execute(
                table.delete().where(table.c.generation_id == generation_id, table.c.path == path)
            )
        if written:
            await insert_many(self.conn, generation_files_table, written, on_conflict="update")

    async def _load_files(self, generation: LoadedGeneration) -> None:
        """Put a generation's file rows into its state's file set, once."""
        if generation.files_loaded:
            return
        rows = await self.conn.execute(
            select(generation_files_table).where(
                generation_files_table.c.generation_id == generation.state.generation_id
            )
        )
        generation.state.files = {
            row.path: FileState(
                path=row.path, sha256=row.sha256, size=row.size, phase=row.phase, origin=row.origin
            )
            for row in rows
        }
        generation.files_loaded = True
