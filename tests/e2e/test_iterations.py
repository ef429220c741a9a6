"""Iterations (issue #3): a new version from any completed parent, nothing silently lost.

Real nats-server, real SQLite, the offline provider for the chain and a scripted provider
for the data-loss guard."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext

from contracts import streams, subjects
from contracts.events import FileWritten, VersionBasedOn, event_tag
from contracts.phases import GeneratedFile, PhaseOutput
from services.common.blobs import BlobStore
from services.common.eventlog import read_generation
from services.common.settings import Settings
from services.orchestrator.providers.base import PhaseRequest, Reporter
from tests.support.stack import Stack, running_stack, schema_with


async def _complete(stack: Stack, accepted: dict[str, Any]) -> dict[str, Any]:
    status = await stack.wait_status(accepted["generation_id"], timeout=120)
    assert status["status"] == "completed", status
    return status


async def _files(stack: Stack, generation_id: str) -> dict[str, str]:
    listing = (await stack.alice.get(f"/generations/{generation_id}/files")).json()
    return {f["path"]: f["sha256"] for f in listing["files"]}


async def _zip(stack: Stack, generation_id: str) -> zipfile.ZipFile:
    response = await stack.alice.get(f"/generations/{generation_id}/archive")
    assert response.status_code == 200, response.text
    return zipfile.ZipFile(io.BytesIO(response.content))


async def _deleted(stack: Stack, generation_id: str) -> set[str]:
    log = (await stack.alice.get(f"/generations/{generation_id}/events")).json()
    return {e["event"]["path"] for e in log["events"] if e["type"] == "file.deleted"}


async def test_a_chain_and_a_branch_keep_every_file_unless_deleted_explicitly(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings) as stack:
        v1 = await stack.create(schema_with(2))
        await _complete(stack, v1)
        v2 = await stack.iterate(v1["generation_id"], "add authentication")
        await _complete(stack, v2)
        v3 = await stack.iterate(
            v2["generation_id"], "add entity Review with fields rating:integer, body:text"
        )
        await _complete(stack, v3)
        v4 = await stack.iterate(v1["generation_id"], "add pagination")
        await _complete(stack, v4)

        assert [v["version"] for v in (v1, v2, v3, v4)] == [1, 2, 3, 4]
        assert v2["parent_generation_id"] == v1["generation_id"]
        assert v4["parent_generation_id"] == v1["generation_id"], "a branch from v1"
        files = {
            name: await _files(stack, v["generation_id"])
            for name, v in {"v1": v1, "v2": v2, "v3": v3, "v4": v4}.items()
        }
        deleted = await _deleted(stack, v2["generation_id"]) | await _deleted(
            stack, v3["generation_id"]
        )
        lost = set(files["v1"]) - set(files["v3"]) - deleted
        assert not lost, f"v1 files missing from v3 without an explicit deletion: {lost}"
        assert any("auth" in path for path in set(files["v3"]) - set(files["v1"]))
        assert any("review" in path.lower() for path in files["v3"])
        assert not any("review" in path.lower() for path in files["v4"])

        # Each zip holds exactly its version's files, byte for byte.
        for name, version in {"v1": v1, "v2": v2, "v3": v3, "v4": v4}.items():
            archive = await _zip(stack, version["generation_id"])
            assert sorted(archive.namelist()) == sorted(files[name]), name

        # The project lists its versions as a tree.
        project = (await stack.alice.get(f"/projects/{v1['project_id']}")).json()
        parents = {v["version"]: v["parent_generation_id"] for v in project["versions"]}
        assert parents == {
            1: None,
            2: v1["generation_id"],
            3: v2["generation_id"],
            4: v1["generation_id"],
        }

        # The diff of v2 against v1: per-file status, unified diffs.
        diff = (await stack.alice.get(f"/generations/{v2['generation_id']}/diff")).json()
        assert diff["summary"]["added"] > 0 and diff["summary"]["modified"] > 0
        assert diff["summary"]["unchanged"] > 0
        assert all(f["diff"].startswith("---") for f in diff["files"])

        archive = await _zip(stack, v3["generation_id"])
        project_dir = tmp_path / "v3"
        archive.extractall(project_dir)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


async def test_iterating_needs_a_completed_parent(settings: Settings) -> None:
    async with running_stack(settings, orchestrator=False) as stack:
        pending = await stack.create(schema_with(1))
        refused = await stack.alice.post(
            "/generations/iterate",
            json={
                "parent_generation_id": pending["generation_id"],
                "modification_prompt": "add pagination",
            },
        )
        assert refused.status_code == 409, refused.text
        assert "only a completed version" in refused.json()["detail"]
        await stack.alice.post(f"/generations/{pending['generation_id']}/cancel")
        await stack.wait_status(pending["generation_id"], "cancelled")
        refused = await stack.alice.post(
            "/generations/iterate",
            json={
                "parent_generation_id": pending["generation_id"],
                "modification_prompt": "add pagination",
            },
        )
        assert refused.status_code == 409
        assert "cancelled" in refused.json()["detail"]
        missing = await stack.alice.post(
            "/generations/iterate",
            json={
                "parent_generation_id": "00000000-0000-4000-8000-000000000000",
                "modification_prompt": "add pagination",
            },
        )
        assert missing.status_code == 404


class Saboteur:
    """Creates three files; on an iteration breaks one rule in the models phase, twice."""

    name = "offline"
    BODY = "".join(f"def function_{i}():\n    return {i}\n\n" for i in range(40))

    def __init__(self, rule: str) -> None:
        self.rule = rule
        self.calls: list[tuple[str, str, int, str | None]] = []

    async def run_phase(self, request: PhaseRequest, reporter: Reporter) -> PhaseOutput:
        self.calls.append((request.kind, request.phase, request.attempt, request.correction))
        if request.kind == "create":
            if request.phase != "plan":
                return PhaseOutput(summary="nothing")
            return PhaseOutput(
                files=[
                    GeneratedFile("app/a.py", self.BODY),
                    GeneratedFile("app/b.py", self.BODY.replace("function", "helper")),
                    GeneratedFile("app/c.py", "C = 3\n"),
                ]
            )
        if request.phase != "models":
            return PhaseOutput(summary="nothing")
        broken = {
            "dropped": GeneratedFile("app/a.py", ""),
            "placeholder": GeneratedFile(
                "app/a.py", self.BODY + "\n# ... existing code remains the same ...\n"
            ),
            "shrunk": GeneratedFile("app/a.py", self.BODY[: len(self.BODY) // 3]),
            "locked": GeneratedFile("app/b.py", self.BODY + "\nNEW = 1\n"),
        }[self.rule]
        return PhaseOutput(files=[broken], summary="sabotage")


@pytest.mark.parametrize(
    ("rule", "path", "named"),
    [
        ("dropped", "app/a.py", "dropped"),
        ("placeholder", "app/a.py", "placeholder"),
        ("shrunk", "app/a.py", "shrunk"),
        ("locked", "app/b.py", "locked"),
    ],
)
async def test_the_guard_rejects_retries_once_then_fails_and_the_parent_is_untouched(
    settings: Settings, rule: str, path: str, named: str
) -> None:
    saboteur = Saboteur(rule)
    async with running_stack(settings, providers={"offline": saboteur}) as stack:
        parent = await stack.create(schema_with(1))
        await _complete(stack, parent)
        before = await _files(stack, parent["generation_id"])
        child = await stack.iterate(
            parent["generation_id"], "change things", locked_paths=["app/b.py"]
        )
        status = await stack.wait_status(child["generation_id"], timeout=60)
        after = await _files(stack, parent["generation_id"])
        kept = await _files(stack, child["generation_id"])

    assert status["status"] == "failed", status
    assert status["error"]["kind"] == "guard"
    assert status["error"]["phase"] == "models"
    message = status["error"]["message"]
    assert path in message and named in message, message
    models_calls = [c for c in saboteur.calls if c[:2] == ("iterate", "models")]
    assert [c[2] for c in models_calls] == [1, 2], "retried exactly once"
    assert models_calls[1][3] and path in models_calls[1][3], "with a corrective instruction"
    assert after == before, "the parent version is never modified"
    assert kept == before, "the new version kept the parent's files and saved nothing broken"


class OneFileChange:
    """Creates a project of many files; each iteration changes one file in the models phase."""

    name = "offline"
    FILES = 24
    BODY = "".join(f"def handler_{i}(request):\n    return {{'n': {i}}}\n\n" for i in range(100))

    async def run_phase(self, request: PhaseRequest, reporter: Reporter) -> PhaseOutput:
        if request.kind == "create" and request.phase == "plan":
            return PhaseOutput(
                files=[
                    GeneratedFile(f"app/module_{n:02d}.py", f"# module {n}\n{self.BODY}")
                    for n in range(self.FILES)
                ]
            )
        if request.kind == "iterate" and request.phase == "models":
            path = "app/module_00.py"
            change = f"{request.files[path]}\n# {request.prompt}\n"
            return PhaseOutput(files=[GeneratedFile(path, change)], summary="one change")
        return PhaseOutput(summary="nothing")


async def test_an_iteration_names_its_parents_files_and_costs_the_broker_what_changed(
    settings: Settings,
) -> None:
    async with running_stack(settings, providers={"offline": OneFileChange()}) as stack:
        nc = await nats.connect(settings.nats_url)
        js = nc.jetstream()
        try:
            v1 = await stack.create(schema_with(1))
            await _complete(stack, v1)
            # Every file.written names its content, stored once in KILN_BLOBS.
            first_before = await _broker_bytes(js)
            v2 = await stack.iterate(v1["generation_id"], "change one thing")
            await _complete(stack, v2)
            # Then each iteration adds the change and the manifest, not the project.
            before = await _broker_bytes(js)
            v3 = await stack.iterate(v2["generation_id"], "change another thing")
            await _complete(stack, v3)
            after = await _broker_bytes(js)

            parent = await _listing(stack, v2["generation_id"])
            mine = await _listing(stack, v3["generation_id"])
            events = await read_generation(js, v3["generation_id"])
            manifests = [e.event for e in events if isinstance(e.event, VersionBasedOn)]
            assert len(manifests) == 1, "exactly one version.based_on"
            assert manifests[0].parent_generation_id == v2["generation_id"]
            named = {f.path: (f.sha256, f.size) for f in manifests[0].files}
            unchanged = {path: entry for path, entry in mine.items() if parent.get(path) == entry}
            assert len(unchanged) == OneFileChange.FILES - 1, "one file changed"
            assert {path: named[path] for path in unchanged} == unchanged
            assert named == parent, "the manifest names the parent's files as its API has them"
            copies = [
                e for e in events if isinstance(e.event, FileWritten) and e.event.origin == "parent"
            ]
            assert not copies, "no parent file is copied into the log"

            blobs = await js.stream_info(streams.BLOBS_STREAM, subjects_filter=subjects.ALL_BLOBS)
            held = blobs.state.subjects or {}
            for sha256, _ in named.values():
                assert held.get(subjects.blob_subject(sha256)) == 1, sha256
            assert blobs.state.messages == len(held), "one message per content"
            for generation in (v1, v3):
                written = [
                    e.event
                    for e in await read_generation(js, generation["generation_id"])
                    if isinstance(e.event, FileWritten)
                ]
                assert written, "the version wrote files"
                assert all(w.content is None for w in written), "no content in the log"
                for w in written:
                    assert held.get(subjects.blob_subject(w.sha256)) == 1, w.path
            contents = await BlobStore(js).get_many(sha256 for sha256, _ in named.values())
            assert {sha: len(c.encode()) for sha, c in contents.items()} == dict(named.values())

            project_bytes = sum(size for _, size in parent.values())
            added = {name: after[name] - before[name] for name in after}
            first = {name: before[name] - first_before[name] for name in before}
            sizes = Counter[str]()
            for e in events:
                sizes[event_tag(type(e.event))] += len(e.data)
            print(f"payload bytes by event type: {dict(sizes)}")
            print(
                f"project {project_bytes} B in {len(parent)} files; broker bytes added by the "
                f"first iteration {first}, by the next (one file changed) {added}"
            )
            assert sum(added.values()) < project_bytes / 2, (added, project_bytes)
            assert first[streams.EVENTS_STREAM] < project_bytes / 2, "no copies in the log"
        finally:
            await nc.close()


async def _listing(stack: Stack, generation_id: str) -> dict[str, tuple[str, int]]:
    listing = (await stack.alice.get(f"/generations/{generation_id}/files")).json()
    return {f["path"]: (f["sha256"], f["size"]) for f in listing["files"]}


async def _broker_bytes(js: JetStreamContext) -> dict[str, int]:
    """The bytes KILN_EVENTS and KILN_BLOBS hold."""
    return {
        name: (await js.stream_info(name)).state.bytes
        for name in (streams.EVENTS_STREAM, streams.BLOBS_STREAM)
    }
