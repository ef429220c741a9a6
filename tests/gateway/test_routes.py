"""Every route and its error answers on Litestar's test client: the real app, contracts,
views, commands and error map over an in-memory broker and read model
(tests/support/gateway_app.py). What needs NATS, storage or an orchestrator is tested
against them elsewhere (tests/e2e, tests/security, tests/gateway/test_streams.py)."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest

from contracts import streams
from contracts.codec import decode_event
from contracts.events import GenerationRequested
from contracts.providers import ADVERT_TTL_S
from services.gateway import views
from tests.support.gateway_app import (
    ALICE,
    BOB,
    GatewayUnderTest,
    assert_problem,
    gateway_app,
    gateway_settings,
)
from tests.support.stack import schema_with

EVENTS = streams.EVENTS_STREAM
COMMANDS = streams.COMMANDS_STREAM
FILES = {"app/models.py": "class Item: ...\n", "README.md": "# shop\n"}


async def create(gw: GatewayUnderTest, **fields: Any) -> dict[str, Any]:
    body = {"project_name": "shop", "schema": schema_with(1), "prompt": "a shop", **fields}
    response = await gw.client.post("/generations", json=body, headers=ALICE)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def completed(gw: GatewayUnderTest) -> str:
    generation_id: str = (await create(gw))["generation_id"]
    await gw.finish(generation_id, FILES, deleted={})
    return generation_id


async def test_a_create_publishes_the_request_and_its_command_and_answers_201() -> None:
    async with gateway_app() as gw:
        response = await gw.client.post(
            "/generations",
            json={"project_name": " shop ", "schema": schema_with(2), "prompt": "a shop"},
            headers=ALICE,
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert response.headers["location"] == body["status_url"]
        assert body["status_url"] == f"/generations/{body['generation_id']}"
        assert body["version"] == 1 and body["status"] == "pending"
        assert body["stream_url"] == (
            f"/generations/{body['generation_id']}/stream?token={body['sse_token']}"
        )
        [requested] = gw.broker.on(EVENTS)
        event = decode_event(requested.data)
        assert isinstance(event, GenerationRequested) and event.seq == 1
        assert (event.owner, event.project_name, event.provider) == ("alice", "shop", "offline")
        assert len(gw.broker.on(COMMANDS)) == 1

        status = await gw.client.get(body["status_url"], headers=ALICE)
        assert status.status_code == 200
        assert status.json()["status"] == "pending"


async def test_a_request_that_breaks_a_rule_is_a_400_and_publishes_nothing() -> None:
    async with gateway_app() as gw:
        cases = {
            "schema": {"project_name": "shop", "schema": {"entities": []}},
            "project_name": {"project_name": "a\x00b", "schema": schema_with(1)},
            "provider": {"project_name": "shop", "schema": schema_with(1), "provider": "nope"},
        }
        for location, body in cases.items():
            refused = await gw.client.post("/generations", json=body, headers=ALICE)
            problems = assert_problem(refused, 400)["problems"]
            assert any(p["location"].startswith(location) for p in problems), problems
        shape = await gw.client.post("/generations", json={"prompt": 1}, headers=ALICE)
        assert_problem(shape, 400)
        malformed = await gw.client.post(
            "/generations", content=b'{"project_name": ', headers=ALICE
        )
        assert "malformed JSON" in assert_problem(malformed, 400)["detail"]
        assert gw.broker.messages == []


async def test_a_provider_no_orchestrator_advertises_is_refused_naming_what_to_set() -> None:
    async with gateway_app() as gw:
        # No orchestrator has said what it runs: accepted (one would fail it clearly).
        await create(gw, provider="gemini")
        adverts = await gw.broker.key_value(streams.PROVIDERS_BUCKET)
        await adverts.put("offline", b"worker-1")
        published = len(gw.broker.messages)

        for provider, setting in [("gemini", "GEMINI_API_KEY"), ("openai", "KILN_OPENAI_BASE_URL")]:
            refused = await gw.client.post(
                "/generations",
                json={"project_name": "shop", "schema": schema_with(1), "provider": provider},
                headers=ALICE,
            )
            assert setting in assert_problem(refused, 400)["detail"]
        assert len(gw.broker.messages) == published

        await adverts.put("gemini", b"worker-2")
        assert (await create(gw, provider="gemini"))["version"] == 1
    assert ADVERT_TTL_S > 0


async def test_no_key_a_wrong_key_and_another_users_generation() -> None:
    async with gateway_app() as gw:
        generation_id = (await create(gw))["generation_id"]
        for path in ("/projects", f"/generations/{generation_id}"):
            refused = await gw.client.get(path)
            assert_problem(refused, 401)
            assert refused.headers["www-authenticate"] == 'Bearer realm="kiln"'
        wrong = await gw.client.post(
            "/generations", json={}, headers={"Authorization": "Bearer wrong"}
        )
        assert_problem(wrong, 401)
        for path in ("", "/files", "/archive", "/diff", "/events"):
            assert_problem(
                await gw.client.get(f"/generations/{generation_id}{path}", headers=BOB), 404
            )
        assert_problem(
            await gw.client.post(f"/generations/{generation_id}/cancel", headers=BOB), 404
        )
        assert_problem(await gw.client.get("/generations/no-such", headers=ALICE), 404)
        assert_problem(await gw.client.get("/generations/no%20such", headers=ALICE), 400)
        assert_problem(await gw.client.get("/no/such/route", headers=ALICE), 404)


async def test_a_body_over_the_limit_is_a_413() -> None:
    async with gateway_app(gateway_settings(KILN_MAX_BODY_BYTES="4096")) as gw:
        big = b'{"prompt": "' + b"x" * 8192 + b'"}'
        assert_problem(await gw.client.post("/generations", content=big, headers=ALICE), 413)


async def test_the_rate_limit_is_a_429_with_retry_after() -> None:
    settings = gateway_settings(KILN_GENERATIONS_PER_MINUTE="1", KILN_GENERATION_BURST="1")
    async with gateway_app(settings) as gw:
        await create(gw)
        body = {"project_name": "shop", "schema": schema_with(1)}
        limited = await gw.client.post("/generations", json=body, headers=ALICE)
        assert_problem(limited, 429)
        assert int(limited.headers["retry-after"]) >= 1


async def test_files_one_file_archive_diff_and_events_of_a_completed_version() -> None:
    async with gateway_app() as gw:
        generation_id = await completed(gw)
        base = f"/generations/{generation_id}"

        files = (await gw.client.get(f"{base}/files", headers=ALICE)).json()
        assert [f["path"] for f in files["files"]] == sorted(FILES)
        assert files["status"] == "completed" and files["file_count"] == 2

        one = await gw.client.get(f"{base}/files/README.md", headers=ALICE)
        assert one.status_code == 200 and one.text == FILES["README.md"]
        assert one.headers["etag"] == f'"{one.headers["x-content-sha256"]}"'
        assert_problem(await gw.client.get(f"{base}/files/nope.py", headers=ALICE), 404)
        assert_problem(await gw.client.get(f"{base}/files/a%01b", headers=ALICE), 400)

        archive = await gw.client.get(f"{base}/archive", headers=ALICE)
        assert archive.headers["content-type"] == "application/zip"
        assert 'filename="shop-v1.zip"' in archive.headers["content-disposition"]
        with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
            assert {n: zipped.read(n).decode() for n in zipped.namelist()} == FILES

        diff = (await gw.client.get(f"{base}/diff", headers=ALICE)).json()
        assert {f["path"]: f["status"] for f in diff["files"]} == dict.fromkeys(FILES, "added")
        patch = await gw.client.get(f"{base}/diff?format=patch", headers=ALICE)
        assert patch.headers["content-type"].startswith("text/x-diff")
        assert "+# shop" in patch.text
        assert_problem(await gw.client.get(f"{base}/diff?format=html", headers=ALICE), 400)

        events = (await gw.client.get(f"{base}/events?verify=true", headers=ALICE)).json()
        assert events["count"] == len(events["events"]) == 1 + 1 + len(FILES) + 1
        assert events["events"][0]["type"] == "generation.requested"
        assert all("content" not in e["event"] for e in events["events"])
        assert events["verification"]["ok"] is True


async def test_a_read_model_that_has_not_caught_up_is_a_503_with_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(views, "CATCH_UP_WAIT_S", 0.05)
    monkeypatch.setattr(views, "SETTLE_WAIT_S", 0.05)
    async with gateway_app() as gw:
        generation_id = await completed(gw)
        gw.read_model.behind.add(generation_id)
        # The status is folded from the log instead; a version's files wait for storage.
        status = await gw.client.get(f"/generations/{generation_id}", headers=ALICE)
        assert status.json()["status"] == "completed"
        waiting = await gw.client.get(f"/generations/{generation_id}/files", headers=ALICE)
        assert_problem(waiting, 503)
        assert waiting.headers["retry-after"] == "1"
        assert_problem(await gw.client.get(f"/generations/{generation_id}/files", headers=BOB), 404)


async def test_iterate_answers_409_until_the_parent_completes_then_201() -> None:
    async with gateway_app() as gw:
        parent = (await create(gw))["generation_id"]
        body = {"parent_generation_id": parent, "modification_prompt": "add auth"}
        early = await gw.client.post("/generations/iterate", json=body, headers=ALICE)
        assert assert_problem(early, 409)["parent_status"] == "pending"

        await gw.finish(parent, FILES)
        outside = {**body, "locked_paths": ["../etc/passwd"]}
        assert_problem(
            await gw.client.post("/generations/iterate", json=outside, headers=ALICE), 400
        )
        missing = {**body, "locked_paths": ["app/nope.py"]}
        refused = await gw.client.post("/generations/iterate", json=missing, headers=ALICE)
        assert assert_problem(refused, 400)["problems"][0]["location"] == "locked_paths[0]"
        assert_problem(await gw.client.post("/generations/iterate", json=body, headers=BOB), 404)

        locked = {**body, "locked_paths": ["README.md", "README.md"]}
        response = await gw.client.post("/generations/iterate", json=locked, headers=ALICE)
        assert response.status_code == 201, response.text
        child = response.json()
        assert child["version"] == 2 and child["parent_generation_id"] == parent
        requested = decode_event(
            gw.broker.on(EVENTS, f"kiln.events.*.{child['generation_id']}")[0].data
        )
        assert isinstance(requested, GenerationRequested) and requested.kind == "iterate"
        assert requested.locked_paths == ["README.md"]


async def test_cancel_ends_a_pending_generation_and_is_a_409_once_it_has_ended() -> None:
    async with gateway_app() as gw:
        generation_id = (await create(gw))["generation_id"]
        cancelled = await gw.client.post(
            f"/generations/{generation_id}/cancel",
            json={"reason": "changed my mind"},
            headers=ALICE,
        )
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        again = await gw.client.post(f"/generations/{generation_id}/cancel", headers=ALICE)
        assert assert_problem(again, 409)["generation_status"] == "cancelled"


async def test_projects_list_the_callers_own() -> None:
    async with gateway_app() as gw:
        created = await create(gw)
        listed = (await gw.client.get("/projects", headers=ALICE)).json()["projects"]
        assert [p["project_id"] for p in listed] == [created["project_id"]]
        assert (await gw.client.get("/projects", headers=BOB)).json()["projects"] == []
        one = await gw.client.get(f"/projects/{created['project_id']}", headers=ALICE)
        assert one.json()["versions"][0]["generation_id"] == created["generation_id"]
        assert_problem(await gw.client.get(f"/projects/{created['project_id']}", headers=BOB), 404)


async def test_stream_auth_token_key_and_last_event_id() -> None:
    async with gateway_app() as gw:
        generation_id = await completed(gw)
        other = (await create(gw))["generation_id"]
        fresh = await gw.client.post(f"/generations/{generation_id}/stream-token", headers=ALICE)
        assert fresh.status_code == 200
        token = fresh.json()["sse_token"]
        stream = f"/generations/{generation_id}/stream"
        end = gw.broker.on(EVENTS, f"kiln.events.*.{generation_id}")[-1].seq

        # A valid token, resuming after the end: 204 stops EventSource retrying.
        done = await gw.client.get(f"{stream}?token={token}&last_event_id={end}")
        assert done.status_code == 204
        by_header = await gw.client.get(
            f"{stream}?token={token}", headers={"Last-Event-ID": str(end)}
        )
        assert by_header.status_code == 204
        # An API key instead of a token: the owner's key, not another user's.
        assert (
            await gw.client.get(stream, headers={**ALICE, "Last-Event-ID": str(end)})
        ).status_code == 204
        assert_problem(await gw.client.get(stream, headers={**BOB, "Last-Event-ID": str(end)}), 404)

        for refused in [
            await gw.client.get(stream),
            await gw.client.get(f"{stream}?token={token}x"),
            await gw.client.get(f"/generations/{other}/stream?token={token}"),
            await gw.client.get(stream, headers={"Authorization": "Bearer wrong"}),
        ]:
            assert_problem(refused, 401)
            assert refused.headers["www-authenticate"].startswith("Bearer")
        bad = await gw.client.get(f"{stream}?token={token}", headers={"Last-Event-ID": "abc"})
        assert "Last-Event-ID" in assert_problem(bad, 400)["detail"]


async def test_health_and_readiness_need_no_key() -> None:
    async with gateway_app() as gw:
        assert (await gw.client.get("/healthz")).json()["status"] == "ok"
        ready = await gw.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"nats": "ok", "database": "ok"}


async def test_the_page_its_scripts_and_the_api_document_need_no_key() -> None:
    async with gateway_app() as gw:
        page = await gw.client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src" in page.headers["content-security-policy"]
        script = await gw.client.get("/static/model.js")
        assert script.status_code == 200 and script.headers["cache-control"] == "no-cache"
        document = (await gw.client.get("/schema/openapi.json")).json()
        assert "/generations/{generation_id}/stream" in document["paths"]
