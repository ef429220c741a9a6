"""B6 end to end: offline generations of 1, 20 and 100 entities, timed from the POST to
`completed` in the read model (the SQLite file storage writes), then 50 concurrent ones;
all three services run as `kiln orchestrator | storage | gateway` with default settings
but `KILN_VERIFY=false` (no verifier: B7 measures verification).
Baseline: the same events (read back from the stream) published raw, one at a time, each
awaiting the stream's ack as the orchestrator's appends do, to a stream of the same
configuration (concurrently for the 50)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time

from bench.env import Stack, api_keys
from bench.loadgen.posts import Posts
from bench.report import Measurements, Row
from bench.scenarios import Context
from contracts import streams, subjects
from examples.schemas import schema_with
from services.common.eventlog import read_generation

TITLE = "B6 end to end"
RAW_STREAM = "BENCH_RAW"


class Users:
    """API keys in turn, so that no key meets the per-key rate limit of new generations."""

    def __init__(self) -> None:
        self.keys = list(api_keys().values())
        self.next = 0

    def take(self) -> str:
        key = self.keys[self.next % len(self.keys)]
        self.next += 1
        return key


POLL_S = 0.001
"""How often the read model is looked at. It was every 10 ms, with a new connection in a
thread each time: up to ~10 ms (a third of the 1-entity figure) between the commit and
the bench seeing it. Now a look is a `PRAGMA data_version` on one open connection (a few
microseconds), and the statuses are read only when another connection has committed."""


class ReadModel:
    """The statuses of generations in the SQLite file storage writes, read-only."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.conn: sqlite3.Connection | None = None
        self.version: int | None = None

    def statuses(self, ids: list[str]) -> dict[str, str] | None:
        """id → status of those of `ids` the read model holds; None when nothing was
        committed since the last call (the answer would be the same)."""
        try:
            if self.conn is None:
                # Autocommit: no read transaction stays open between looks (it would hold
                # back storage's WAL checkpoints).
                self.conn = sqlite3.connect(
                    f"file:{self.database}?mode=ro", uri=True, timeout=5, isolation_level=None
                )
            version = int(self.conn.execute("PRAGMA data_version").fetchone()[0])
            if version == self.version:
                return None
            marks = ",".join("?" * len(ids))
            rows = self.conn.execute(
                f"SELECT id, status FROM generations WHERE id IN ({marks})", ids
            ).fetchall()
            self.version = version
            return {row[0]: row[1] for row in rows}
        except sqlite3.OperationalError:
            self.close()
            return {}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.version = None


async def generate(
    stack: Stack, client: Posts, users: Users, entities: int, count: int
) -> tuple[float, list[str], float]:
    """POST `count` generations at once: seconds until all are completed in the read model,
    their ids, and seconds until the stream held the last event of them all."""
    body = {"project_name": "bench", "schema": schema_with(entities), "prompt": "a benchmark"}
    started = time.monotonic()

    async def post() -> str:
        response = await client.post(
            "/generations", body, {"Authorization": f"Bearer {users.take()}"}
        )
        if response.status != 201:
            raise RuntimeError(f"POST /generations: {response.status} {response.body!r}")
        return str(response.json()["generation_id"])

    wall = time.time()
    ids = list(await asyncio.gather(*(post() for _ in range(count))))
    read_model = ReadModel(str(stack.database_path))
    try:
        return await _until_completed(stack, read_model, ids, started, wall)
    finally:
        read_model.close()


async def _until_completed(
    stack: Stack, read_model: ReadModel, ids: list[str], started: float, wall: float
) -> tuple[float, list[str], float]:
    deadline = started + 300
    statuses: dict[str, str] = {}
    while True:
        # Called in the event loop: one look costs microseconds, a thread hop more.
        seen = read_model.statuses(ids)
        if seen is not None:
            statuses = seen
        if len(statuses) == len(ids) and all(s == "completed" for s in statuses.values()):
            seconds = time.monotonic() - started
            last = [
                await stack.js.get_last_msg(
                    streams.EVENTS_STREAM, subjects.generation_events_any_project(g)
                )
                for g in ids
            ]
            published = max(m.time.timestamp() for m in last if m.time) - wall
            return seconds, ids, published
        failed = {i: s for i, s in statuses.items() if s in ("failed", "cancelled")}
        if failed:
            raise RuntimeError(f"generations ended without completing: {failed}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not completed within 300 s: {statuses}")
        await asyncio.sleep(POLL_S)


async def raw_publish(stack: Stack, ids: list[str]) -> tuple[float, int]:
    """Publish the generations' events raw (each awaiting its ack); seconds and events."""
    js = stack.js
    logs = [[e.data for e in await read_generation(js, g)] for g in ids]
    started = time.monotonic()

    async def one(index: int, payloads: list[bytes]) -> None:
        subject = f"bench.raw.{index}.{time.monotonic_ns()}"
        for data in payloads:
            await js.publish(subject, data, timeout=10)

    await asyncio.gather(*(one(i, p) for i, p in enumerate(logs)))
    return time.monotonic() - started, sum(len(p) for p in logs)


async def run(ctx: Context) -> list[Row]:
    return await run_on(ctx, TITLE, cluster=0)


async def run_on(ctx: Context, title: str, *, cluster: int) -> list[Row]:
    """B6 on one nats-server (`cluster=0`) or on a cluster of that many nodes, every
    stream at one replica per node (B8)."""
    sizes = [1, 3] if ctx.toy else [1, 20, 100]
    concurrent = ctx.size(50, 3)
    concurrent_entities = ctx.size(20, 1)
    users = Users()
    rows: list[Row] = []
    async with Stack(
        ctx.dir("b8" if cluster else "b6"),
        gateway=True,
        storage=True,
        orchestrator=True,
        profile=ctx.profile,
        cluster=cluster,
        # No verifier runs here (B7 measures verification): without this each generation
        # waits KILN_VERIFY_PICKUP (15 s) for one before `completed`. KILN_VERIFY=false
        # appends the same verify phase events at once.
        settings={"KILN_VERIFY": "false"},
    ) as stack:
        config = streams.events_stream(stack.replicas)
        await stack.js.add_stream(
            dataclasses.replace(
                config, name=RAW_STREAM, subjects=["bench.raw.>"], description="bench"
            )
        )
        async with Posts("127.0.0.1", stack.port) as client:
            await generate(stack, client, users, 1, 1)  # warm-up
            cases = [(f"{n} entit{'y' if n == 1 else 'ies'}", n, 1) for n in sizes]
            cases.append(
                (
                    f"{concurrent} concurrent x {concurrent_entities} entities",
                    concurrent_entities,
                    concurrent,
                )
            )
            for label, entities, count in cases:
                per_event = Measurements()
                totals = Measurements()
                event_counts: list[int] = []
                published: list[float] = []
                for _ in range(ctx.runs):
                    kiln_s, ids, published_s = await generate(stack, client, users, entities, count)
                    published.append(published_s)
                    raw_s, events = await raw_publish(stack, ids)
                    totals.add(kiln_s, raw_s)
                    per_event.add(kiln_s / events * 1e3, raw_s / events * 1e3)
                    event_counts.append(events)
                added = per_event.kiln_median - per_event.baseline_median
                ratio = added / per_event.baseline_median
                ctx.log(
                    f"{title}: {label}: {totals.kiln_median:.2f} s for {event_counts[0]} events "
                    f"(raw publish {totals.baseline_median:.2f} s)"
                )
                rows.append(
                    Row(
                        f"{title}: {label}",
                        f"{totals.kiln_median:.2f} s ({per_event.kiln_median:.2f} ms/event)",
                        f"{totals.baseline_median:.3f} s ({per_event.baseline_median:.3f} ms/event)",
                        f"added {ratio:.1f}x raw",
                        "added time per event ≤ 2x raw publish",
                        ratio <= 2,
                        [
                            f"{event_counts[0]:,} events per run; POST → completed in the read "
                            f"model, runs (Kiln / raw publish): {totals.spread('{:.2f}')} s; "
                            "the orchestrator had published the last event after "
                            f"{', '.join(f'{p:.2f}' for p in published)} s"
                        ],
                    )
                )
    return rows
