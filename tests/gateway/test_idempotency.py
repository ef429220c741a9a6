"""`Idempotency-Key`: a create or iterate sent again makes one generation, never two, and a
request stored without its answer (or its command) is finished by the retry."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import msgspec
import nats

from contracts import streams, subjects
from contracts.events import GenerationRequested
from contracts.schema import ProjectSchema
from services.common.eventlog import read_generation
from services.common.eventwriter import GenerationWriter
from services.common.settings import Settings
from services.gateway.idempotency import generation_id_for, project_id_for
from tests.support.client import SCHEMA_ONE
from tests.support.replica_behind import direct_get_finds, direct_gets_answered_by_a_replica_behind
from tests.support.stack import Stack, running_stack

BODY = {"project_name": "shop", "schema": SCHEMA_ONE, "prompt": "a small shop"}


async def post(stack: Stack, path: str, body: dict[str, Any], key: str | None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await stack.alice.post(path, json=body, headers=headers)


async def requested_count(stack: Stack, generation_id: str) -> int:
    """How many generation.requested the generation's log holds."""
    nc = await nats.connect(stack.settings.nats_servers[0])
    try:
        events = await read_generation(nc.jetstream(), generation_id)
    finally:
        await nc.close()
    return sum(isinstance(e.event, GenerationRequested) for e in events)


async def stored_messages(stack: Stack) -> int:
    """Messages in the events stream."""
    nc = await nats.connect(stack.settings.nats_servers[0])
    try:
        return int((await nc.jetstream().stream_info(streams.EVENTS_STREAM)).state.messages)
    finally:
        await nc.close()


async def test_a_create_sent_again_with_its_key_answers_with_the_first_generation(
    settings: Settings,
) -> None:
    async with running_stack(settings, orchestrator=False) as stack:
        key = str(uuid.uuid4())
        first = await post(stack, "/generations", BODY, key)
        again = await post(stack, "/generations", BODY, key)
        assert (first.status_code, again.status_code) == (201, 201), again.text
        assert "idempotent-replayed" not in first.headers
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["generation_id"] == first.json()["generation_id"]
        assert again.headers["location"] == first.headers["location"]
        assert await requested_count(stack, first.json()["generation_id"]) == 1
        # Without a key, the same body is a new project.
        other = await post(stack, "/generations", BODY, None)
        assert other.json()["project_id"] != first.json()["project_id"]


async def test_the_same_key_for_another_request_is_refused_and_writes_nothing(
    settings: Settings,
) -> None:
    async with running_stack(settings, orchestrator=False) as stack:
        key = "order-42"
        first = await post(stack, "/generations", BODY, key)
        assert first.status_code == 201
        before = await stored_messages(stack)
        other = await post(stack, "/generations", {**BODY, "prompt": "a big shop"}, key)
        assert other.status_code == 422, other.text
        assert other.headers["content-type"].startswith("application/problem+json")
        assert other.json()["differs"] == ["prompt"]
        assert "use a new key" in other.json()["detail"]
        assert await stored_messages(stack) == before
        # Another user's same key is their own.
        bobs = await stack.bob.post("/generations", json=BODY, headers={"Idempotency-Key": key})
        assert (
            bobs.status_code == 201
            and bobs.json()["generation_id"] != first.json()["generation_id"]
        )


async def test_a_malformed_key_is_a_400_that_names_the_header(settings: Settings) -> None:
    async with running_stack(settings, orchestrator=False) as stack:
        for bad in ("", "x" * 129, "has space", "ünïcode".encode()):
            response = await post(stack, "/generations", BODY, bad)
            assert response.status_code == 400, (bad, response.text)
            assert "Idempotency-Key" in response.json()["detail"]


async def test_concurrent_creates_with_one_key_make_one_generation(settings: Settings) -> None:
    async with running_stack(settings, orchestrator=False) as stack:
        key = str(uuid.uuid4())
        answers = await asyncio.gather(*(post(stack, "/generations", BODY, key) for _ in range(6)))
        assert [a.status_code for a in answers] == [201] * 6, [a.text for a in answers]
        assert len({a.json()["generation_id"] for a in answers}) == 1
        assert await requested_count(stack, answers[0].json()["generation_id"]) == 1


async def test_an_iteration_sent_again_keeps_its_version(settings: Settings) -> None:
    async with running_stack(settings) as stack:
        parent = await stack.create_completed()
        body = {
            "parent_generation_id": parent["generation_id"],
            "modification_prompt": "add pagination",
        }
        key = str(uuid.uuid4())
        answers = [await post(stack, "/generations/iterate", body, key) for _ in range(3)]
        assert [a.status_code for a in answers] == [201] * 3
        assert len({(a.json()["generation_id"], a.json()["version"]) for a in answers}) == 1
        assert answers[0].json()["version"] == 2
        changed = {**body, "locked_paths": ["README.md"]}
        refused = await post(stack, "/generations/iterate", changed, key)
        assert refused.status_code == 422 and refused.json()["differs"] == ["locked_paths"]
        await stack.wait_status(answers[0].json()["generation_id"], "completed")
        # The next version is 3: the repeats took no version number.
        nxt = await stack.iterate(parent["generation_id"], "add a Dockerfile")
        assert nxt["version"] == 3


async def test_a_request_stored_without_its_command_is_finished_by_the_retry(
    settings: Settings,
) -> None:
    """The ambiguous 503: the broker stored generation.requested, the command never went
    out, the client heard 503. Its retry with the same key sends the command."""
    async with running_stack(settings) as stack:
        key = str(uuid.uuid4())
        project_id, generation_id = project_id_for("alice", key), generation_id_for("alice", key)
        nc = await nats.connect(settings.nats_servers[0])
        try:
            kv = await nc.jetstream().key_value(streams.VERSIONS_BUCKET)
            await kv.create(project_id, b"1")
            writer = GenerationWriter(nc.jetstream(), project_id, generation_id, source="test")
            await writer.emit(
                GenerationRequested,
                owner="alice",
                project_name="shop",
                version=1,
                schema=msgspec.convert(SCHEMA_ONE, ProjectSchema),
                prompt="a small shop",
            )
        finally:
            await nc.close()
        await asyncio.sleep(0.5)
        status = (await stack.alice.get(f"/generations/{generation_id}")).json()
        assert status["status"] == "pending", "no command: nobody runs it"

        retried = await post(stack, "/generations", BODY, key)
        assert retried.status_code == 201, retried.text
        assert retried.headers["idempotent-replayed"] == "true"
        assert retried.json()["generation_id"] == generation_id
        await stack.wait_status(generation_id, "completed")
        assert await requested_count(stack, generation_id) == 1


async def test_a_create_sent_again_while_a_replica_is_behind_answers_with_the_first(
    settings: Settings,
) -> None:
    """The partition test's 500 (issue 17): the retry's direct get landed on a replica that
    had not caught up, found nothing, and the gateway wrote the generation again (refused:
    its own earlier event). The stream's leader is asked before anything is written."""
    async with running_stack(settings, orchestrator=False) as stack:
        key = str(uuid.uuid4())
        first = await post(stack, "/generations", BODY, key)
        assert first.status_code == 201, first.text
        generation_id = first.json()["generation_id"]
        nc = await nats.connect(settings.nats_servers[0])
        try:
            await direct_gets_answered_by_a_replica_behind(nc.jetstream())
            assert not await direct_get_finds(nc.jetstream(), generation_id)
        finally:
            await nc.close()
        before = await stored_messages(stack)

        again = await post(stack, "/generations", BODY, key)

        assert again.status_code == 201, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["generation_id"] == generation_id
        assert again.headers["location"] == first.headers["location"]
        assert await stored_messages(stack) == before
        assert await requested_count(stack, generation_id) == 1


async def test_a_key_whose_generation_cannot_be_read_back_is_a_503_not_a_500(
    settings: Settings,
) -> None:
    """Another writer got to the key's generation first with something that is not a
    readable first event: the create cannot know what was requested, so it answers 503
    with Retry-After (problem+json), writes nothing, and is never a 500."""
    async with running_stack(settings, orchestrator=False) as stack:
        key = str(uuid.uuid4())
        project_id, generation_id = project_id_for("alice", key), generation_id_for("alice", key)
        nc = await nats.connect(settings.nats_servers[0])
        try:
            await nc.jetstream().publish(
                subjects.generation_events(project_id, generation_id), b"not an event"
            )
        finally:
            await nc.close()
        before = await stored_messages(stack)

        answer = await post(stack, "/generations", BODY, key)

        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert int(answer.headers["retry-after"]) > 0
        assert "Idempotency-Key" in answer.json()["detail"]
        assert answer.json()["instance"] == "/generations"
        assert await stored_messages(stack) == before


async def test_an_iteration_sent_again_while_a_replica_is_behind_keeps_its_version(
    settings: Settings,
) -> None:
    async with running_stack(settings) as stack:
        parent = await stack.create_completed()
        body = {
            "parent_generation_id": parent["generation_id"],
            "modification_prompt": "add pagination",
        }
        key = str(uuid.uuid4())
        first = await post(stack, "/generations/iterate", body, key)
        assert first.status_code == 201, first.text
        nc = await nats.connect(settings.nats_servers[0])
        try:
            await direct_gets_answered_by_a_replica_behind(nc.jetstream())
            assert not await direct_get_finds(nc.jetstream(), first.json()["generation_id"])
        finally:
            await nc.close()

        again = await post(stack, "/generations/iterate", body, key)

        assert again.status_code == 201, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert (again.json()["generation_id"], again.json()["version"]) == (
            first.json()["generation_id"],
            2,
        )
        await stack.wait_status(first.json()["generation_id"], "completed")
        # The repeat took no version number.
        assert (await stack.iterate(parent["generation_id"], "add a Dockerfile"))["version"] == 3
