"""B5 projection: Kiln's storage service (unchanged, in its own process, on SQLite) applies
50,000 events with file contents, committed; timed from the moment it is ready. Baseline:
a raw durable pull consumer fetching (batches of 256, as storage) and acking the same
events. Each run starts from an empty database and a new consumer; a Kiln run is capped
at MAX_SECONDS (its rate is what it committed by then).

With `KILN_BENCH_POSTGRES_URL` (e.g. `postgresql+asyncpg://postgres@127.0.0.1:5432/test`)
the same runs are made into PostgreSQL too (row B5-PG), each into a database of its own
created on that server and dropped after the run. With `KILN_BENCH_B5_PARTITIONS=n` (n > 1)
the SQLite runs are made again with n storage processes, one per partition
(`KILN_STORAGE_PARTITIONS`), timed from the first one ready to the last one done (row
"B5 projection, n partitions"; measured apart, not part of the goals)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator

from nats.js.errors import NotFoundError
from sqlalchemy import pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bench import events
from bench.env import Stack
from bench.loadgen.workers import Worker, start_all, stop_all
from bench.report import Measurements, Row, client_note
from bench.scenarios import Context
from contracts import streams, subjects
from services.storage.db import migrate

TITLE = "B5 projection"
POSTGRES_ENV = "KILN_BENCH_POSTGRES_URL"
PARTITIONS_ENV = "KILN_BENCH_B5_PARTITIONS"
# A Kiln run stops here and reports the rate it reached, so that the whole bench stays
# under ten minutes however slow the projection is (the note says how far it got).
MAX_SECONDS = 30.0


async def _go(worker: Worker) -> dict:
    try:
        await worker.start()
        await worker.send("go")
        return await worker.result(600)
    finally:
        await worker.stop()


async def _go_together(workers: list[Worker]) -> dict:
    """Start the storage processes, let them go at once, and merge their results."""
    if len(workers) == 1:
        return await _go(workers[0])
    try:
        await start_all(workers)
        for worker in workers:
            await worker.send("go")
        results = await asyncio.gather(*(worker.result(600) for worker in workers))
    finally:
        await stop_all(workers)
    return {
        "started": min(r["started"] for r in results),
        "finished": max(r["finished"] for r in results),
        "cpu_s": sum(r["cpu_s"] for r in results),
        "events": sum(r["events"] for r in results),
        "complete": all(r["complete"] for r in results),
        "batches": sum(r["batches"] for r in results),
    }


async def run(ctx: Context) -> list[Row]:
    total = ctx.size(50_000, 300)
    per_generation = ctx.size(1000, 50)
    postgres = os.environ.get(POSTGRES_ENV, "")
    rows: list[Row] = []
    async with Stack(ctx.dir("b5")) as stack:
        assert stack.nc is not None
        for _ in range(total // per_generation):
            gen = events.writer(stack.js)
            await events.fill(stack.nc, gen, events.history(per_generation, salt=gen.generation_id))
        info = await stack.js.stream_info(streams.EVENTS_STREAM)
        ctx.log(f"{TITLE}: {info.state.messages:,} events, {info.state.bytes / 1e6:.0f} MB stored")
        rows.append(await _measure(ctx, stack, int(info.state.last_seq), total, per_generation))
        if postgres:
            rows.append(
                await _measure(
                    ctx, stack, int(info.state.last_seq), total, per_generation, postgres
                )
            )
        partitions = int(os.environ.get(PARTITIONS_ENV, "1"))
        if partitions > 1:
            rows.append(
                await _measure(
                    ctx,
                    stack,
                    int(info.state.last_seq),
                    total,
                    per_generation,
                    partitions=partitions,
                )
            )
    return rows


@contextlib.asynccontextmanager
async def _database(ctx: Context, run: int, postgres: str) -> AsyncIterator[str]:
    """An empty, migrated read model for one run: a SQLite file, or a PostgreSQL database
    of its own next to `postgres`'s (dropped afterwards)."""
    if not postgres:
        url = f"sqlite+aiosqlite:///{ctx.dir('b5') / f'projection-{run}.db'}"
        await asyncio.to_thread(migrate, url)
        yield url
        return
    name = f"kiln_bench_{uuid.uuid4().hex[:12]}"
    await _admin(postgres, f'CREATE DATABASE "{name}"')
    try:
        url = make_url(postgres).set(database=name).render_as_string(hide_password=False)
        await asyncio.to_thread(migrate, url)
        yield url
    finally:
        await _admin(postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin(url: str, statement: str) -> None:
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    try:
        async with admin.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await admin.dispose()


async def _measure(
    ctx: Context,
    stack: Stack,
    target: int,
    total: int,
    per_generation: int,
    postgres: str = "",
    *,
    partitions: int = 1,
) -> Row:
    title = f"{TITLE} into PostgreSQL (B5-PG)" if postgres else TITLE
    if partitions > 1:
        title = f"{TITLE}, {partitions} partitions (one process each)"
    database = "PostgreSQL" if postgres else "SQLite"
    max_seconds = ctx.seconds(MAX_SECONDS, 60.0)
    rates = Measurements()
    applied: list[int] = []
    storage_cpu = 0.0
    for run in range(1, ctx.runs + 1):
        kilns: list[Worker] = []
        for partition in range(partitions):
            with contextlib.suppress(NotFoundError):
                await stack.js.delete_consumer(
                    streams.EVENTS_STREAM, streams.storage_consumer_name(partition, partitions)
                )
            kilns.append(
                Worker(
                    "bench.loadgen.storage",
                    {"target": target, "max_seconds": max_seconds},
                    ctx.dir("b5"),
                    profile=ctx.profile and run == 1,
                )
            )
        async with _database(ctx, run if partitions == 1 else 100 + run, postgres) as url:
            for partition, kiln in enumerate(kilns):
                kiln.env = {**stack.env(), "KILN_DATABASE_URL": url}
                if partitions > 1:
                    kiln.env["KILN_STORAGE_PARTITIONS"] = str(partitions)
                    kiln.env["KILN_STORAGE_PARTITION"] = str(partition)
            k = await _go_together(kilns)
        raw = Worker(
            "bench.loadgen.raw_nats",
            {
                "url": stack.nats_url,
                "mode": "pull",
                "stream": streams.EVENTS_STREAM,
                "subject": subjects.ALL_EVENTS,
                "durable": f"bench-raw-{database.lower()}-{partitions}-{run}",
                "target": target,
                "batch": 256,
            },
            ctx.dir("b5"),
        )
        b = await _go(raw)
        if not k["complete"] and k["finished"] - k["started"] < max_seconds:
            raise RuntimeError(f"storage applied {k['events']} of {total} events: {k}")
        applied.append(k["events"])
        k_seconds = k["finished"] - k["started"]
        b_seconds = b["finished"] - b["started"]
        rates.add(k["events"] / k_seconds, total / b_seconds)
        storage_cpu = max(storage_cpu, k["cpu_s"] / k_seconds)
        ctx.log(
            f"{title}: run {run}: Kiln {k['events'] / k_seconds:,.0f} events/s "
            f"({k['batches']} batches), raw {total / b_seconds:,.0f} events/s"
        )
    ratio = rates.ratio
    goal = 0.5 if postgres else 0.6
    row = Row(
        title,
        f"{rates.kiln_median:,.0f} events/s",
        f"{rates.baseline_median:,.0f} events/s",
        f"{ratio:.2f}x",
        f"≥ {goal}x raw",
        ratio >= goal,
        [
            f"{total:,} events ({per_generation} per generation, ~1 KiB file contents) into "
            f"{database}; runs (Kiln / raw): {rates.spread()} events/s; "
            + (
                "storage process at "
                if partitions == 1
                else f"the {partitions} storage processes at "
            )
            + f"{storage_cpu:.0%} of a core"
        ],
    )
    if min(applied) < total:
        row.notes.append(
            f"each Kiln run was stopped after {max_seconds:.0f} s, having committed "
            f"{', '.join(f'{a:,}' for a in applied)} of the {total:,} events: the rate is "
            "what it sustained until then"
        )
    note = client_note(storage_cpu, "the storage process")
    if note:
        row.notes.append(note.replace("the client may be the bottleneck", "it is CPU-bound"))
    return row
