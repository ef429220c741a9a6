"""The pipeline end to end: POST → phases → events → storage → SSE, over real HTTP, a real
nats-server and a real SQLite file."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import nats
import pytest

from contracts.phases import PHASE_NAMES
from contracts.streams import COMMANDS_STREAM, EVENTS_STREAM
from services.common.settings import Settings
from services.orchestrator.providers.base import PhaseRequest, ProviderError, Reporter
from services.orchestrator.providers.offline import OfflineProvider
from tests.conftest import make_settings
from tests.support.stack import SCHEMA_ONE, running_stack


def assert_full_story(events: list, generation_id: str) -> None:
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)), "ids strictly increasing, none twice"
    assert events[0].type == "generation.requested"
    assert events[-1].type == "generation.completed"
    assert [e.data["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e.data["generation_id"] == generation_id for e in events)
    completed = [e.data["phase"] for e in events if e.type == "phase.completed"]
    assert completed == list(PHASE_NAMES)


async def test_a_late_client_receives_the_whole_history(settings: Settings) -> None:
    async with running_stack(settings) as stack:
        accepted = await stack.create()
        assert accepted["status"] == "pending" and accepted["version"] == 1
        await stack.wait_status(accepted["generation_id"], "completed")

        events = await stack.events(accepted["stream_url"])

        assert_full_story(events, accepted["generation_id"])
        progress = [e.data["progress"] for e in events if e.type == "phase.completed"]
        assert progress == [5, 20, 40, 60, 80, 95, 100]


async def test_status_is_never_404_right_after_the_post(settings: Settings) -> None:
    async with running_stack(settings, storage=False) as stack:
        accepted = await stack.create()
        response = await stack.alice.get(f"/generations/{accepted['generation_id']}")
        assert response.status_code == 200
        assert response.json()["status"] in ("pending", "running", "completed")


async def test_a_client_that_drops_mid_generation_resumes_with_last_event_id(
    tmp_path: Path, nats_server
) -> None:
    settings = make_settings(tmp_path, nats_server.url, KILN_OFFLINE_PHASE_DELAY="0.3")
    async with running_stack(settings) as stack:
        accepted = await stack.create()
        first = await stack.events(accepted["stream_url"], limit=6)
        assert first[-1].type != "generation.completed", "dropped before the end"

        rest = await stack.events(accepted["stream_url"], last_event_id=first[-1].id)

        whole = await stack.events(accepted["stream_url"])
        assert [e.id for e in first + rest] == [e.id for e in whole]
        assert_full_story(first + rest, accepted["generation_id"])


async def test_a_client_following_live_sees_every_event_once(tmp_path: Path, nats_server) -> None:
    settings = make_settings(tmp_path, nats_server.url, KILN_OFFLINE_PHASE_DELAY="0.1")
    async with running_stack(settings) as stack:
        accepted = await stack.create()
        live = await stack.events(accepted["stream_url"])
        assert_full_story(live, accepted["generation_id"])


async def test_resuming_after_the_end_gets_204(settings: Settings) -> None:
    async with running_stack(settings) as stack:
        accepted = await stack.create()
        events = await stack.events(accepted["stream_url"])
        response = await stack.anonymous.get(
            accepted["stream_url"], headers={"Last-Event-ID": str(events[-1].id)}
        )
        assert response.status_code == 204


async def test_the_zip_holds_exactly_the_files_of_the_events_and_its_tests_pass(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_stack(settings) as stack:
        accepted = await stack.create_completed()
        events = await stack.events(accepted["stream_url"])
        # The events name each file by content; the zip holds exactly that content.
        written = {e.data["path"]: e.data["sha256"] for e in events if e.type == "file.written"}

        response = await stack.alice.get(f"/generations/{accepted['generation_id']}/archive")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/zip"
        archive = zipfile.ZipFile(io.BytesIO(response.content))
        assert sorted(archive.namelist()) == sorted(written)
        for path, sha256 in written.items():
            assert hashlib.sha256(archive.read(path)).hexdigest() == sha256, path

        listing = (await stack.alice.get(f"/generations/{accepted['generation_id']}/files")).json()
        assert sorted(f["path"] for f in listing["files"]) == sorted(written)

    project = tmp_path / "generated"
    archive.extractall(project)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


class FailsInPhase3:
    """The offline provider, except that the third phase fails."""

    name = "offline"

    def __init__(self) -> None:
        self.inner = OfflineProvider()

    async def run_phase(self, request: PhaseRequest, reporter: Reporter):  # type: ignore[no-untyped-def]
        if request.phase == PHASE_NAMES[2]:
            raise ProviderError("the model refused to write the schemas (scripted failure)")
        return await self.inner.run_phase(request, reporter)


async def test_a_provider_failure_keeps_the_files_of_earlier_phases(settings: Settings) -> None:
    async with running_stack(settings, providers={"offline": FailsInPhase3()}) as stack:
        accepted = await stack.create()
        generation_id = accepted["generation_id"]
        status = await stack.wait_status(generation_id)

        assert status["status"] == "failed"
        assert status["error"]["phase"] == "schemas"
        assert "scripted failure" in status["error"]["message"]
        events = await stack.events(accepted["stream_url"])
        assert events[-1].type == "generation.failed"
        earlier = {e.data["path"] for e in events if e.type == "file.written"}
        assert earlier and all(
            e.data["phase"] in ("plan", "models") for e in events if e.type == "file.written"
        )

        listing = (await stack.alice.get(f"/generations/{generation_id}/files")).json()
        assert {f["path"] for f in listing["files"]} == earlier
        archive = zipfile.ZipFile(
            io.BytesIO((await stack.alice.get(f"/generations/{generation_id}/archive")).content)
        )
        assert set(archive.namelist()) == earlier


BAD_BODIES = [
    ("malformed JSON", b'{"project_name": "x", "schema": ', "malformed"),
    ("missing fields", b'{"project_name": "x"}', "schema"),
    (
        "unknown field type",
        b'{"project_name": "x", "schema": {"entities": [{"name": "A", "fields": [{"name": "f", "type": "blob"}]}]}}',
        "type",
    ),
    (
        "duplicate entity names",
        b'{"project_name": "x", "schema": {"entities": [{"name": "A", "fields": [{"name": "f", "type": "string"}]},'
        b' {"name": "A", "fields": [{"name": "g", "type": "string"}]}]}}',
        "duplicate entity name",
    ),
    (
        "relation to a missing entity",
        b'{"project_name": "x", "schema": {"entities": [{"name": "A", "fields": [{"name": "f", "type": "string"}],'
        b' "relations": [{"name": "b", "target": "B"}]}]}}',
        "unknown entity 'B'",
    ),
]


@pytest.mark.parametrize(("case", "body", "named"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_a_bad_request_body_gets_a_problem_and_publishes_nothing(
    settings: Settings, case: str, body: bytes, named: str
) -> None:
    async with running_stack(settings) as stack:
        response = await stack.alice.post(
            "/generations", content=body, headers={"Content-Type": "application/json"}
        )

        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert named.lower() in response.json()["detail"].lower(), response.json()
        nc = await nats.connect(settings.nats_servers)
        try:
            js = nc.jetstream()
            for stream in (EVENTS_STREAM, COMMANDS_STREAM):
                assert (await js.stream_info(stream)).state.messages == 0
        finally:
            await nc.close()


async def test_stream_tokens_are_checked(settings: Settings) -> None:
    async with running_stack(settings) as stack:
        one = await stack.create()
        other = await stack.create()
        await stack.wait_status(one["generation_id"], "completed")
        base = f"/generations/{one['generation_id']}/stream"
        token = one["sse_token"]
        payload, signature = token.split(".")
        tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + signature
        expired, _ = stack.server.config.app.state["gateway"].tokens.issue(
            one["generation_id"], "alice", now=0
        )  # type: ignore[union-attr]

        for label, url in [
            ("no token", base),
            ("wrong token", f"{base}?token=not-a-token"),
            ("tampered token", f"{base}?token={tampered}"),
            ("expired token", f"{base}?token={expired}"),
            ("another generation's token", f"{base}?token={other['sse_token']}"),
        ]:
            response = await stack.anonymous.get(url)
            assert response.status_code == 401, label
            assert response.headers["content-type"].startswith("application/problem+json"), label

        ok = await stack.anonymous.get(f"{base}?token={token}")
        assert ok.status_code == 200


async def test_another_users_generation_is_not_found_everywhere(settings: Settings) -> None:
    async with running_stack(settings) as stack:
        accepted = await stack.create_completed()
        generation_id = accepted["generation_id"]
        first_file = (await stack.alice.get(f"/generations/{generation_id}/files")).json()["files"][
            0
        ]["path"]

        for method, path, body in [
            ("GET", f"/generations/{generation_id}", None),
            ("GET", f"/generations/{generation_id}/files", None),
            ("GET", f"/generations/{generation_id}/files/{first_file}", None),
            ("GET", f"/generations/{generation_id}/archive", None),
            ("GET", f"/generations/{generation_id}/diff", None),
            ("GET", f"/generations/{generation_id}/events", None),
            ("POST", f"/generations/{generation_id}/stream-token", None),
            ("POST", f"/generations/{generation_id}/cancel", None),
            (
                "POST",
                "/generations/iterate",
                {"parent_generation_id": generation_id, "modification_prompt": "add auth"},
            ),
            ("GET", f"/projects/{accepted['project_id']}", None),
        ]:
            response = await stack.bob.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
        assert (await stack.bob.get("/projects")).json() == {"projects": []}


async def test_the_project_lists_its_versions(settings: Settings) -> None:
    async with running_stack(settings) as stack:
        accepted = await stack.create_completed()
        projects = (await stack.alice.get("/projects")).json()["projects"]
        assert [p["project_id"] for p in projects] == [accepted["project_id"]]
        assert projects[0]["versions"][0]["generation_id"] == accepted["generation_id"]
        await asyncio.sleep(0)


__all__ = ["SCHEMA_ONE"]
