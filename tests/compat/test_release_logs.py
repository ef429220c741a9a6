"""Logs written by an older release stay readable: the fold, storage, the gateway (status,
files, zip, diff, a late SSE replay) and `kiln audit --verify` read the log Kiln 0.1.0 wrote,
loaded from its committed fixture into a fresh nats-server (tests/support/stream_fixture.py).

That release copied every unchanged parent file into an iteration's log (`file.written`,
origin `parent`). These tests check what a reader sees (files, contents, diffs, the chain),
not how the log is laid out, so they keep passing when newer releases write logs otherwise.
Real nats-server, real SQLite; no orchestrator: nothing new is generated.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from contracts.state import fold
from services.common.embedded_nats import EmbeddedNats
from services.common.eventlog import read_generation
from services.common.settings import Settings
from services.storage.db import create_engine, migrate
from services.storage.queries import ReadModel
from tests.storage.conftest import running_storage, wait_applied
from tests.support.client import SSEEvent
from tests.support.environment import ALICE_KEY
from tests.support.stack import Stack, running_stack
from tests.support.stream_fixture import (
    RELEASE_0_1_0,
    ReleaseExpectations,
    ReleaseMessage,
    expectations_path,
    load_release_log,
    log_path,
    read_expectations,
    read_messages,
)

pytestmark = [pytest.mark.one_database, pytest.mark.timeout(300)]

MESSAGES = read_messages(log_path(RELEASE_0_1_0))
EXPECTED = read_expectations(expectations_path(RELEASE_0_1_0))


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _of(generation_id: str) -> list[ReleaseMessage]:
    """The fixture's messages of one generation, in stream order."""
    return [m for m in MESSAGES if json.loads(m.data)["generation_id"] == generation_id]


@pytest.fixture
async def loaded(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    """A client of a fresh nats-server holding the release's log; its last stream seq is
    the fixture's."""
    nc = await nats.connect(nats_server.url)
    try:
        assert await load_release_log(nc.jetstream(), MESSAGES) == MESSAGES[-1].stream_seq
        yield nc
    finally:
        await nc.close()


def test_the_fixture_is_a_chain_of_three_versions_with_deletions() -> None:
    """What the other tests rely on: a create and two iterations, each from the one
    before, all completed, the last deleting files its parent had."""
    versions = sorted(EXPECTED.generations, key=lambda g: g.version)
    assert [g.version for g in versions] == [1, 2, 3]
    assert [g.status for g in versions] == ["completed"] * 3
    assert versions[0].parent_generation_id is None
    for parent, child in itertools.pairwise(versions):
        assert child.parent_generation_id == parent.generation_id
        assert child.diff.unchanged > 0 and child.diff.modified > 0
    assert versions[2].diff.deleted > 0
    assert set(versions[1].files) - set(versions[2].files), "v3 dropped files of v2"
    assert len(MESSAGES) == EXPECTED.messages
    assert [m.stream_seq for m in MESSAGES] == list(range(1, len(MESSAGES) + 1))


async def test_each_generation_folds_to_the_files_the_release_recorded(loaded: Client) -> None:
    js = loaded.jetstream()
    for expected in EXPECTED.generations:
        stored = await read_generation(js, expected.generation_id)
        assert [s.event.seq for s in stored] == list(range(1, expected.events + 1))
        state = fold(s.event for s in stored)
        assert state is not None
        summary = state.summary
        assert (summary.status, summary.version, summary.parent_generation_id) == (
            expected.status,
            expected.version,
            expected.parent_generation_id,
        )
        assert (summary.file_count, summary.total_bytes) == (
            expected.file_count,
            expected.total_bytes,
        )
        assert {p: f.sha256 for p, f in state.files.items()} == expected.files
        for path, content in state.file_contents().items():
            assert _sha(content.encode()) == expected.files[path], path
        assert set(state.deleted) == {p for p, s in expected.diff.files.items() if s == "deleted"}


async def test_storage_projects_every_version_with_its_files_and_contents(
    loaded: Client, settings: Settings
) -> None:
    await asyncio.to_thread(migrate, settings.effective_database_url)
    engine = create_engine(settings.effective_database_url)
    try:
        async with running_storage(settings):
            read_model = ReadModel(engine)
            await wait_applied(read_model, MESSAGES[-1].stream_seq, timeout=60)
            for expected in EXPECTED.generations:
                view = await read_model.generation(expected.generation_id)
                assert view is not None
                assert (view.status, view.version, view.parent_generation_id) == (
                    expected.status,
                    expected.version,
                    expected.parent_generation_id,
                )
                assert view.last_seq == expected.events
                files = await read_model.files(expected.generation_id)
                assert {f.path: f.sha256 for f in files} == expected.files
                contents = await read_model.contents(expected.generation_id)
                assert {p: _sha(c) for p, c in contents.items()} == expected.files
            project = await read_model.project(EXPECTED.generations[0].project_id)
            assert project is not None
            assert sorted(v.version for v in project.versions) == [1, 2, 3]
    finally:
        await engine.dispose()


async def _settled(stack: Stack) -> None:
    """Wait until the stack's storage has projected every generation to its end."""
    for expected in EXPECTED.generations:
        status = await stack.wait_status(expected.generation_id, expected.status, timeout=60)
        assert status["version"] == expected.version


async def test_the_gateway_serves_status_files_and_zip_of_every_version(
    loaded: Client, settings: Settings
) -> None:
    async with running_stack(settings, orchestrator=False) as stack:
        await _settled(stack)
        for expected in EXPECTED.generations:
            gid = expected.generation_id
            status = (await stack.alice.get(f"/generations/{gid}")).json()
            assert {
                k: status[k]
                for k in ("project_id", "project_name", "version", "kind", "prompt", "status")
            } == {
                "project_id": expected.project_id,
                "project_name": expected.project_name,
                "version": expected.version,
                "kind": expected.kind,
                "prompt": expected.prompt,
                "status": expected.status,
            }
            assert status["parent_generation_id"] == expected.parent_generation_id
            assert (status["file_count"], status["total_bytes"]) == (
                expected.file_count,
                expected.total_bytes,
            )
            assert (status["verification"] or {}).get("status") == expected.verdict
            listing = (await stack.alice.get(f"/generations/{gid}/files")).json()
            assert {f["path"]: f["sha256"] for f in listing["files"]} == expected.files
            one = sorted(expected.files)[0]
            file = await stack.alice.get(f"/generations/{gid}/files/{one}")
            assert file.status_code == 200 and _sha(file.content) == expected.files[one]
            archive = await stack.alice.get(f"/generations/{gid}/archive")
            assert archive.status_code == 200, archive.text
            with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
                assert {n: _sha(zipped.read(n)) for n in zipped.namelist()} == expected.files
            assert (await stack.bob.get(f"/generations/{gid}")).status_code == 404


async def test_the_gateway_diffs_each_version_against_its_parent(
    loaded: Client, settings: Settings
) -> None:
    async with running_stack(settings, orchestrator=False) as stack:
        await _settled(stack)
        for expected in EXPECTED.generations:
            diff = (await stack.alice.get(f"/generations/{expected.generation_id}/diff")).json()
            assert diff["parent_generation_id"] == expected.parent_generation_id
            assert diff["summary"] == {
                "added": expected.diff.added,
                "modified": expected.diff.modified,
                "deleted": expected.diff.deleted,
                "unchanged": expected.diff.unchanged,
            }
            assert {f["path"]: f["status"] for f in diff["files"]} == expected.diff.files
            for changed in diff["files"]:
                assert changed["diff"].startswith("---"), changed["path"]
                if changed["status"] == "deleted":
                    assert changed["reason"], f"{changed['path']} was deleted with a reason"
            patch = await stack.alice.get(
                f"/generations/{expected.generation_id}/diff", params={"format": "patch"}
            )
            assert patch.status_code == 200
            assert patch.text.count("\n+++ ") == len(expected.diff.files)


async def test_a_late_client_replays_the_last_version_once_to_its_end(
    loaded: Client, settings: Settings
) -> None:
    last = max(EXPECTED.generations, key=lambda g: g.version)
    logged = _of(last.generation_id)
    async with running_stack(settings, orchestrator=False) as stack:
        await _settled(stack)
        token = await stack.alice.post(f"/generations/{last.generation_id}/stream-token")
        assert token.status_code == 200, token.text
        events = await stack.events(token.json()["stream_url"], timeout=60)

    assert [e.data["seq"] for e in events] == list(range(1, last.events + 1)), "each once"
    assert [e.id for e in events] == [m.stream_seq for m in logged]
    assert [e.type for e in events] == [json.loads(m.data)["type"] for m in logged]
    assert events[-1].type == "generation.completed"
    assert _fold_sse(events) == last.files


def _fold_sse(events: list[SSEEvent]) -> dict[str, str]:
    """path → sha256 of the version a browser would show from the SSE events it got."""
    files: dict[str, str] = {}
    for event in events:
        if event.type == "file.written":
            assert _sha(event.data["content"].encode()) == event.data["sha256"]
            files[event.data["path"]] = event.data["sha256"]
        elif event.type == "file.deleted":
            files.pop(event.data["path"], None)
    return files


def _audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "audit", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_kiln_audit_verify_finds_every_chain_intact(
    loaded: Client, settings: Settings, nats_server: EmbeddedNats
) -> None:
    async with running_stack(settings, orchestrator=False) as stack:
        await _settled(stack)
        for expected in EXPECTED.generations:
            gid = expected.generation_id
            for where in (
                ("--verify", "--url", stack.url, "--api-key", ALICE_KEY),
                ("--verify", "--from-nats", nats_server.url),
            ):
                result = await asyncio.to_thread(_audit, gid, *where)
                assert result.returncode == 0, result.stdout + result.stderr
                verdict = json.loads(result.stdout)
                assert verdict["events"] == expected.events, where
                assert verdict["verification"]["broken"] is None
                assert verdict["verification"]["verified"] == expected.events


def test_expectations_name_every_generation_of_the_log() -> None:
    """The sidecar and the log agree: every generation of the log is described, with its
    event count."""
    logged: dict[str, int] = {}
    for message in MESSAGES:
        gid = json.loads(message.data)["generation_id"]
        logged[gid] = logged.get(gid, 0) + 1
    assert logged == {g.generation_id: g.events for g in EXPECTED.generations}
    assert isinstance(EXPECTED, ReleaseExpectations)
