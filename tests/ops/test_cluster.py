"""Kiln past one machine, for real: three nats-server nodes on loopback with every stream and
bucket at 3 replicas, two orchestrators, two gateways and storage as processes, the read
model on PostgreSQL (SQLite, with a warning, where `KILN_TEST_POSTGRES_URL` is unset).

- The node leading KILN_EVENTS is SIGKILLed while 20 generations run, then restarted:
  every generation completes once, every SSE client (resuming with Last-Event-ID where its
  connection broke) gets every event once, the read model matches the log, no request
  answers 5xx but a 503 with Retry-After, and the restarted node catches up.
- One node is cut off from the others while it keeps running: writes through it answer
  503 with Retry-After and go through once it is back; nothing is written twice.

Each test prints its failover figures (run with `-s` to see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
import uuid
import warnings
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.embedded_nats import EmbeddedNats
from tests.ops.cluster import (
    Cluster,
    StreamMessage,
    by_generation,
    check_log_is_whole,
    check_sse_matches_log,
    client,
    create,
    files_in_log,
    stream_messages,
    wait_status,
)
from tests.ops.nats_cluster import NatsCluster, kiln_streams, nats_cluster
from tests.storage.conftest import POSTGRES_ENV, postgres_database
from tests.support import client as kiln
from tests.support.client import SSEEvent, ended
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

GENERATIONS = 20
# Long enough per phase that the kill lands mid-run, short enough for CI.
PHASE_DELAY = "0.5"
# Time between two rounds of a poller (each round asks one generation three questions).
POLL_EVERY_S = 0.05


@contextlib.asynccontextmanager
async def database(tmp_path: Path) -> AsyncIterator[str]:
    """A PostgreSQL database of its own, or a SQLite file (saying so) without a server."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        warnings.warn(
            f"{POSTGRES_ENV} is not set: the cluster test runs its storage on SQLite",
            stacklevel=2,
        )
        yield f"sqlite+aiosqlite:///{tmp_path / 'kiln.db'}"
        return
    async with postgres_database(base) as url:
        yield url


@contextlib.asynccontextmanager
async def services_on(tmp_path: Path, nats_url: str, database_url: str) -> AsyncIterator[Cluster]:
    """Service processes against the cluster, streams at 3 replicas; stopped by PID."""
    running = Cluster(
        tmp_path,
        nats_url,
        KILN_DATABASE_URL=database_url,
        KILN_STREAM_REPLICAS="3",
        KILN_OFFLINE_PHASE_DELAY=PHASE_DELAY,
    )
    try:
        await asyncio.to_thread(running.migrate)
        yield running
    finally:
        await asyncio.to_thread(running.stop_all)


@dataclass
class Answers:
    """Every HTTP answer the clients got: (what was asked, status, Retry-After)."""

    seen: list[tuple[str, int, str | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, what: str, response: httpx.Response) -> None:
        self.seen.append((what, response.status_code, response.headers.get("retry-after")))

    def count(self, predicate: Callable[[int], bool]) -> int:
        return sum(predicate(status) for _, status, _ in self.seen)

    def check(self, allowed: dict[str, set[int]]) -> None:
        """No 5xx but a 503 with Retry-After; each kind of request answers only `allowed`."""
        wrong = [
            a
            for a in self.seen
            if (a[1] >= 500 and not (a[1] == 503 and a[2])) or a[1] not in allowed.get(a[0], {a[1]})
        ]
        assert not wrong, f"unexpected answers: {Counter(wrong).most_common(10)}"
        assert not self.errors, f"requests that got no answer: {Counter(self.errors)}"


async def poll(
    http: httpx.AsyncClient, ids: list[str], answers: Answers, stop: asyncio.Event, label: str
) -> None:
    """Ask status, files and a stream token of each generation in turn until `stop`."""
    index = 0
    while not stop.is_set():
        generation_id = ids[index % len(ids)]
        index += 1
        for kind, method, path in (
            ("status", "GET", f"/generations/{generation_id}"),
            ("files", "GET", f"/generations/{generation_id}/files"),
            ("token", "POST", f"/generations/{generation_id}/stream-token"),
        ):
            try:
                answers.add(kind, await http.request(method, path))
            except httpx.HTTPError as exc:
                answers.errors.append(f"{label} {kind}: {type(exc).__name__}")
        await asyncio.sleep(POLL_EVERY_S)


async def watch(
    url: str, stream_url: str, received: list[SSEEvent], answers: list[httpx.Response]
) -> None:
    """Follow a stream to its end through one gateway, resuming with Last-Event-ID."""
    async with kiln.connect(url, timeout=kiln.SSE_TIMEOUT) as http:
        async for event in kiln.follow(http, stream_url, timeout=240, answers=answers):
            received.append(event)


async def settle(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Stop the pollers and end every client task (a failed test leaves some running)."""
    stop.set()
    for task in tasks:
        if not task.done() and task.get_coro().__name__ == "watch":  # type: ignore[union-attr]
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def check_read_model(
    http: httpx.AsyncClient, nats_url: str, generation_id: str, messages: list[StreamMessage]
) -> None:
    """The version's files (listing and archive) are exactly what its log says, once the
    read model has caught up after the failover (meanwhile the gateway answers 503)."""
    expected = await files_in_log(nats_url, messages)
    deadline = time.monotonic() + 60
    while (listing := await http.get(f"/generations/{generation_id}/files")).status_code == 503:
        assert listing.headers.get("retry-after"), listing.text
        assert time.monotonic() < deadline, f"the read model never caught up: {listing.text}"
        await asyncio.sleep(0.5)
    assert listing.status_code == 200, listing.text
    assert await kiln.files_of(http, generation_id) == {p: s for p, (s, _) in expected.items()}
    archive = await http.get(f"/generations/{generation_id}/archive")
    assert archive.status_code == 200, archive.text
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
        stored = {name: zipped.read(name).decode() for name in zipped.namelist()}
    assert stored == {p: c for p, (_, c) in expected.items()}, generation_id


async def check_streams_replicated(nodes: NatsCluster) -> None:
    """Every Kiln stream and bucket has 3 replicas, as the broker reports them."""
    for name in kiln_streams():
        info = await nodes.stream_info(name)
        assert info.config.num_replicas == 3, name
        assert info.cluster is not None and info.cluster.leader, name
        peers = {info.cluster.leader} | {r.name for r in info.cluster.replicas or []}
        assert peers == {n.server_name for n in nodes.nodes}, (name, peers)


async def wait_caught_up(nodes: NatsCluster, node: EmbeddedNats, timeout: float = 90) -> float:
    """Wait until the node stores every Kiln stream as the other nodes do (each node's own
    /jsz, not the leader's word); seconds taken."""
    started = time.monotonic()
    others = [n for n in nodes.nodes if n is not node]

    async def same() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            states = [await nodes.node_state(n) for n in (node, *others)]
            wanted = kiln_streams()
            views = [{s: state.get(s) for s in wanted} for state in states]
            return all(v == views[0] for v in views) and None not in views[0].values()
        return False

    await eventually(same, timeout, 0.25, what=f"{node.server_name} to catch up")
    return time.monotonic() - started


async def wait_current(nodes: NatsCluster, node: EmbeddedNats, since: float) -> float:
    """Wait until the KILN_EVENTS leader reports the node as a current replica with no lag;
    seconds since `since`."""

    async def current() -> bool:
        with contextlib.suppress(Exception):
            info = await nodes.stream_info("KILN_EVENTS")
            replicas = info.cluster.replicas or []
            return any(r.name == node.server_name and r.current and not r.lag for r in replicas)
        return False

    await eventually(current, 120, 0.1, what=f"{node.server_name} to be current")
    return time.monotonic() - since


def check_logs(created: list[dict[str, Any]], logs: dict[str, list[StreamMessage]]) -> None:
    """One whole log per accepted generation, and no other generation in the stream: a
    create that answered 503 while the broker stored its request anyway was retried with
    its Idempotency-Key, and that retry answered with it."""
    accepted_ids = {a["generation_id"] for a in created}
    assert set(logs) == accepted_ids, set(logs) ^ accepted_ids
    for accepted in created:
        messages = logs[accepted["generation_id"]]
        check_log_is_whole(accepted["generation_id"], messages)
        types = [m.event["type"] for m in messages]
        assert types.count("generation.requested") == 1


async def test_the_node_leading_the_events_stream_is_killed_mid_run_and_restarted(
    tmp_path: Path,
) -> None:
    with nats_cluster(tmp_path / "nats") as nodes:
        await nodes.wait_ready()
        async with (
            database(tmp_path) as database_url,
            services_on(tmp_path, nodes.url, database_url) as services,
        ):
            services.storage()
            services.orchestrator("orchestrator-1")
            services.orchestrator("orchestrator-2")
            gateways = [services.gateway("gateway-a"), services.gateway("gateway-b")]
            await check_streams_replicated(nodes)
            https = [client(g.url) for g in gateways]
            answers = Answers()
            sse_answers: list[httpx.Response] = []
            stop = asyncio.Event()
            tasks: list[asyncio.Task[None]] = []
            try:
                created = await asyncio.gather(
                    *(create(https[i % 2], project_name=f"shop-{i}") for i in range(GENERATIONS))
                )
                ids = [a["generation_id"] for a in created]
                received: list[list[SSEEvent]] = [[] for _ in created]
                watchers = [
                    asyncio.create_task(
                        watch(gateways[i % 2].url, a["stream_url"], received[i], sse_answers)
                    )
                    for i, a in enumerate(created)
                ]
                pollers = [
                    asyncio.create_task(poll(h, ids, answers, stop, f"gateway-{i}"))
                    for i, h in enumerate(https)
                ]
                tasks += watchers + pollers

                def phases_done() -> int:
                    return sum(any(e.type == "phase.completed" for e in r) for r in received)

                await eventually(
                    lambda: phases_done() >= GENERATIONS // 2, 120, 0.05, what="mid-run"
                )
                leader = await nodes.leader("KILN_EVENTS")
                assert leader is not None
                victim = nodes.node(leader)
                finished_before = sum(any(ended(e) for e in r) for r in received)
                answered_before = len(answers.seen)
                killed_at = time.monotonic()
                victim.kill()

                survivors = ",".join(n.url for n in nodes.nodes if n is not victim)

                async def new_leader() -> bool:
                    return (await nodes.leader("KILN_EVENTS", survivors)) not in (None, leader)

                await eventually(new_leader, 60, 0.1, what="a new KILN_EVENTS leader")
                elected_s = time.monotonic() - killed_at

                # Survivors answer again; then the killed node comes back on its own store.
                await eventually(
                    lambda: answers.seen[-1][1] == 200, 60, 0.05, what="gateways to answer 200"
                )
                victim.start()
                restarted_at = time.monotonic()
                rejoined = asyncio.create_task(wait_current(nodes, victim, restarted_at))

                await asyncio.wait_for(asyncio.gather(*watchers), 240)
                for generation_id in ids:
                    status = await wait_status(https[1], generation_id)
                    assert status["status"] == "completed", status
                stop.set()
                await asyncio.gather(*pollers)
                current_s = await rejoined
                await wait_caught_up(nodes, victim)

                nats_url = nodes.url.split(",")[0]
                logs = by_generation(await stream_messages(nats_url))
                check_logs(created, logs)
                for index, generation_id in enumerate(ids):
                    check_sse_matches_log(received[index], logs[generation_id])
                    await check_read_model(
                        https[index % 2], nats_url, generation_id, logs[generation_id]
                    )
            finally:
                await settle(stop, tasks)
                for h in https:
                    await h.aclose()

        after_kill = answers.seen[answered_before:]
        not_ok = [(i, a) for i, a in enumerate(after_kill) if a[1] != 200]
        answers.check({"status": {200, 503}, "files": {200, 503}, "token": {200, 503}})
        sse = Counter(r.status_code for r in sse_answers)
        assert set(sse) <= {200, 503}, sse
        assert all(r.headers.get("retry-after") for r in sse_answers if r.status_code == 503)
        assert finished_before < GENERATIONS, "the kill came after every generation ended"
        reconnects = len(sse_answers) - GENERATIONS
        print(
            f"\nKILL {leader} (leader of KILN_EVENTS) with {GENERATIONS - finished_before} of "
            f"{GENERATIONS} generations running: new leader after {elected_s:.1f} s; "
            f"{len(not_ok)} of {len(after_kill)} answers after the kill were not 200 "
            f"({Counter(a[1] for _, a in not_ok)}), all 503 with Retry-After; SSE connections "
            f"{dict(sse)} for {GENERATIONS} clients ({reconnects} resumed with Last-Event-ID); "
            f"RESTART: {victim.server_name} current in KILN_EVENTS {current_s:.1f} s after its "
            "restart, every stream equal on the three nodes after the run; "
            f"{answers.count(lambda s: s >= 500 and s != 503)} other 5xx; "
            "events lost 0, doubled 0"
        )


async def test_a_node_cut_off_from_the_others_refuses_writes_and_resumes(tmp_path: Path) -> None:
    with nats_cluster(tmp_path / "nats", partitionable=True) as nodes:
        await nodes.wait_ready()
        cut_off = nodes.nodes[2]
        majority = ",".join(n.url for n in nodes.nodes[:2])
        async with (
            database(tmp_path) as database_url,
            services_on(tmp_path, majority, database_url) as services,
        ):
            services.storage()
            services.orchestrator()
            outside = services.gateway("gateway-majority")
            inside = services.gateway("gateway-minority", NATS_URL=cut_off.url)
            await check_streams_replicated(nodes)
            led = await nodes.leader("KILN_EVENTS") == cut_off.server_name
            http_out, http_in = client(outside.url), client(inside.url)
            answers = Answers()
            sse_answers: list[httpx.Response] = []
            stop = asyncio.Event()
            tasks: list[asyncio.Task[None]] = []
            try:
                created = [await create(http_in, project_name="before")]
                received: list[list[SSEEvent]] = [[]]
                watchers = [
                    asyncio.create_task(
                        watch(inside.url, created[0]["stream_url"], received[0], sse_answers)
                    )
                ]
                poller = asyncio.create_task(
                    poll(http_in, [created[0]["generation_id"]], answers, stop, "minority")
                )
                tasks += [poller, *watchers]
                await eventually(lambda: len(received[0]) >= 3, 60, 0.05, what="events")

                nodes.cut(cut_off)
                cut_at = time.monotonic()
                # Writes on the majority side go on (once it has its leaders).
                during = await create_retrying(http_out, "majority", answers, 60)
                majority_s = time.monotonic() - cut_at
                # Writes through the cut-off node fail clearly, for as long as it is cut off.
                inside_key = str(uuid.uuid4())
                refused = await http_in.post(
                    "/generations",
                    json=create_body("inside"),
                    headers={"Idempotency-Key": inside_key},
                )
                answers.add("create", refused)
                assert refused.status_code == 503, refused.text
                assert refused.headers["content-type"].startswith("application/problem+json")
                assert int(refused.headers["retry-after"]) > 0

                nodes.heal(cut_off)
                healed_at = time.monotonic()
                # The client asks again, with its key, until the node is back: one generation.
                after = await create_retrying(http_in, "inside", answers, 90, key=inside_key)
                resumed_s = time.monotonic() - healed_at
                created += [during, after]
                for accepted in created[1:]:
                    received.append([])
                    watchers.append(
                        asyncio.create_task(
                            watch(inside.url, accepted["stream_url"], received[-1], sse_answers)
                        )
                    )
                    tasks.append(watchers[-1])
                await asyncio.wait_for(asyncio.gather(*watchers), 240)
                stop.set()
                await poller
                caught_up_s = await wait_caught_up(nodes, cut_off)

                logs = by_generation(await stream_messages(nodes.nodes[0].url))
                check_logs(created, logs)
                for accepted, events in zip(created, received, strict=True):
                    messages = logs[accepted["generation_id"]]
                    check_sse_matches_log(events, messages)
                    await check_read_model(
                        http_out, nodes.nodes[0].url, accepted["generation_id"], messages
                    )
            finally:
                await settle(stop, tasks)
                await http_out.aclose()
                await http_in.aclose()

        answers.check(
            {
                "status": {200, 503},
                "files": {200, 503},
                "token": {200, 503},
                "create": {201, 503},
            }
        )
        assert {r.status_code for r in sse_answers} <= {200, 503}
        refusals = answers.count(lambda s: s == 503)
        print(
            f"\nPARTITION {cut_off.server_name} (leader of KILN_EVENTS: {led}): majority wrote "
            f"again after {majority_s:.1f} s; {refusals} answers 503 with Retry-After through "
            f"the cut-off node; its writes went through {resumed_s:.1f} s after the heal; "
            f"caught up {caught_up_s:.1f} s after; "
            f"{answers.count(lambda s: s >= 500 and s != 503)} other 5xx; "
            f"{len(created)} generations accepted, {len(logs)} in the log, events doubled 0"
        )


def create_body(project_name: str) -> dict[str, Any]:
    return {"project_name": project_name, "schema": kiln.SCHEMA_ONE, "prompt": "a small shop"}


async def create_retrying(
    http: httpx.AsyncClient,
    project_name: str,
    answers: Answers,
    timeout: float,
    key: str | None = None,
) -> dict[str, Any]:
    """POST /generations as the CLI does: with an Idempotency-Key, a 503 is waited out
    (Retry-After), then asked again with the same key; the 201 body."""
    body = create_body(project_name)
    headers = {"Idempotency-Key": key or str(uuid.uuid4())}
    deadline = time.monotonic() + timeout
    while True:
        response = await http.post("/generations", json=body, headers=headers)
        answers.add("create", response)
        if response.status_code == 201:
            return dict(response.json())
        assert response.status_code == 503 and response.headers.get("retry-after"), response.text
        assert time.monotonic() < deadline, f"{project_name}: still 503 after {timeout} s"
        await asyncio.sleep(min(float(response.headers["retry-after"]), 0.5))
