"""A generation's row is the fold's summary: every field stored by name, and the shared fold
table (tests/contracts/fold_cases.json) projected into SQL reads back as the fold says."""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec
from nats.js import JetStreamContext

from contracts import subjects
from contracts.state import GenerationSummary, fold
from services.common.blobs import BlobStore
from services.common.settings import Settings
from services.storage.models import generations_table
from services.storage.queries import GenerationView, ReadModel
from services.storage.rows import NOT_STORED, STORED
from tests.contracts.fold_table import CASES, FoldCase
from tests.storage.conftest import running_storage, wait_applied

STORAGE_ONLY = {"last_stream_seq", "updated_at"}
"""Columns of `generations` the projection itself keeps (not the fold)."""


def test_every_summary_field_has_a_column_or_a_reason() -> None:
    columns = set(generations_table.c.keys())
    missing = {name for name, column in STORED.items() if column not in columns}
    assert not missing, (
        f"summary fields without a column (add one, or list them in NOT_STORED): {missing}"
    )
    assert set(STORED) | set(NOT_STORED) == set(GenerationSummary.__struct_fields__)
    assert columns - set(STORED.values()) == STORAGE_ONLY


def _as(case: FoldCase, generation_id: str, project_id: str) -> list[dict[str, Any]]:
    """The case's events for a generation of its own (cases reuse ids and versions)."""
    return [{**e, "generation_id": generation_id, "project_id": project_id} for e in case.events]


async def _publish(js: JetStreamContext, events: list[dict[str, Any]]) -> int:
    """Publish events as they are (a duplicate too: no Msg-Id); the last stream seq."""
    seq = 0
    for event in events:
        subject = subjects.generation_events(event["project_id"], event["generation_id"])
        seq = int((await js.publish(subject, json.dumps(event).encode())).seq)
    return seq


async def test_the_fold_table_projected_reads_back_as_the_fold(
    js: JetStreamContext, storage_settings: Settings, read_model: ReadModel
) -> None:
    ids = {case.name: (uuid.uuid4().hex, uuid.uuid4().hex) for case in CASES}
    await BlobStore(js).put_many(b for case in CASES for b in case.blobs)
    logs = {case.name: _as(case, *ids[case.name]) for case in CASES}
    # Half of each log, then the rest to a new storage service: the second half is applied
    # to generations read back from their rows, not kept in memory.
    async with running_storage(storage_settings):
        last = 0
        for events in logs.values():
            last = await _publish(js, events[: (len(events) + 1) // 2]) or last
        await wait_applied(read_model, last)
    async with running_storage(storage_settings):
        for events in logs.values():
            last = await _publish(js, events[(len(events) + 1) // 2 :]) or last
        await wait_applied(read_model, last)

    for case in CASES:
        generation_id = ids[case.name][0]
        state = fold(case.decoded())
        assert state is not None
        view = await read_model.generation(generation_id)
        assert view is not None, case.name
        expected = msgspec.structs.asdict(state.summary)
        got = msgspec.structs.asdict(view)
        expected.update(generation_id=generation_id, project_id=ids[case.name][1])
        for name in set(NOT_STORED) - {"project_name"}:
            expected.pop(name)
            got.pop(name)
        for name in STORAGE_ONLY:
            got.pop(name)
        assert got == expected, case.name
        assert isinstance(view, GenerationView)
        files = {
            f.path: (f.size, f.sha256, f.phase, f.origin)
            for f in await read_model.files(generation_id)
        }
        assert files == {
            p: (f.size, f.sha256, f.phase, f.origin) for p, f in state.files.items()
        }, case.name


async def test_a_failure_message_with_a_nul_is_stored_on_every_database(
    js: JetStreamContext, storage_settings: Settings, read_model: ReadModel
) -> None:
    # A hostile path quoted in a failure message once dead-lettered the event on
    # PostgreSQL (its text cannot hold NUL) and left the generation running forever.
    project_id, generation_id = uuid.uuid4().hex, uuid.uuid4().hex
    case = next(c for c in CASES if c.events[-1]["type"] == "generation.failed")
    events = _as(case, generation_id, project_id)
    events[-1] = {**events[-1], "message": "path rejected: app/nul\x00byte.py"}
    async with running_storage(storage_settings):
        await wait_applied(read_model, await _publish(js, events))
    view = await read_model.generation(generation_id)
    assert view is not None and view.status == "failed"
    assert view.error == "path rejected: app/nul\\x00byte.py"
