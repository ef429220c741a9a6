"""B4 thundering herd: 1,000 SSE clients connect at once to a finished 600-event generation
(Kiln's default settings; a fresh generation each run, so the replay is cold), against
1,000 raw nats-py ordered consumers replaying the same subject (spread over connections
of 50 consumers each so that they can finish). The SSE clients of a process share what
they read (`bench.loadgen.sse.Seen`): a stream byte-identical to one already checked is
compared, not parsed again, so that the clients take less of the 2 cores the gateway runs
on (0.65-0.8 ms of parsing a stream, against 0.04 ms to compare it)."""

from __future__ import annotations

import os

from bench import events
from bench.env import Stack
from bench.loadgen.workers import Worker, split, start_all, stop_all
from bench.report import Measurements, Row
from bench.scenarios import Context
from contracts import streams, subjects

TITLE = "B4 thundering herd"
PROCESSES = 2


async def _go(workers: list[Worker]) -> list[dict]:
    try:
        for worker in workers:
            await worker.send("go")
        return [await worker.result() for worker in workers]
    finally:
        await stop_all(workers)


async def _kiln(
    ctx: Context, stack: Stack, generation_id: str, clients: int, count: int, target: int
) -> tuple[float, float]:
    paths = [stack.stream_path(generation_id)] * clients
    workers = await start_all(
        [
            Worker(
                "bench.loadgen.sse",
                {
                    "host": "127.0.0.1",
                    "port": stack.port,
                    "paths": part,
                    "wait_go": True,
                    "shared": True,
                },
                ctx.dir("b4"),
            )
            for part in split(paths, PROCESSES)
        ]
    )
    results = await _go(workers)
    done = sum(r["completed"] for r in results)
    complete = sum(1 for r in results for last in r["last_ids"] if last == target)
    if done != clients or complete != clients or sum(r["disorder"] for r in results):
        errors = [e for r in results for e in r["errors"]]
        raise RuntimeError(
            f"{done} of {clients} SSE clients reached the end, {complete} with every event; {errors}"
        )
    if sum(r["events"] for r in results) != clients * count:
        raise RuntimeError("an SSE client missed or doubled events")
    seconds = max(r["finished"] for r in results) - min(r["started"] for r in results)
    return seconds, sum(r["cpu_s"] for r in results) / seconds


async def _raw(
    ctx: Context, stack: Stack, generation_id: str, clients: int, count: int, target: int
) -> float:
    workers = await start_all(
        [
            Worker(
                "bench.loadgen.raw_nats",
                {
                    "url": stack.nats_url,
                    "mode": "ordered",
                    "stream": streams.EVENTS_STREAM,
                    "subject": subjects.generation_events_any_project(generation_id),
                    "target": target,
                    "expect": count,
                    "consumers": len(part),
                    "per_connection": 50,
                },
                ctx.dir("b4"),
            )
            for part in split(list(range(clients)), PROCESSES)
        ]
    )
    results = await _go(workers)
    if sum(r["complete"] for r in results) != clients:
        raise RuntimeError(f"not every raw consumer replayed the subject: {results}")
    return float(max(r["finished"] for r in results) - min(r["started"] for r in results))


async def run(ctx: Context) -> list[Row]:
    clients = ctx.size(1000, 20)
    count = ctx.size(600, 30)
    times = Measurements()
    client_cpu = 0.0
    async with Stack(ctx.dir("b4"), gateway=True, profile=ctx.profile) as stack:
        assert stack.nc is not None
        for run in range(ctx.runs + 1):
            gen = events.writer(stack.js)
            await events.fill(stack.nc, gen, events.history(count, salt=gen.generation_id))
            target = gen.last_stream_seq
            n = clients if run else 20
            # Which of the two reads the fresh generation first alternates between runs.
            if run % 2:
                raw = await _raw(ctx, stack, gen.generation_id, n, count, target)
                kiln, cpu = await _kiln(ctx, stack, gen.generation_id, n, count, target)
            else:
                kiln, cpu = await _kiln(ctx, stack, gen.generation_id, n, count, target)
                raw = await _raw(ctx, stack, gen.generation_id, n, count, target)
            if run == 0:
                continue  # warm-up, with a few clients
            times.add(kiln, raw)
            client_cpu = max(client_cpu, cpu)
            ctx.log(
                f"{TITLE}: run {run}: Kiln {kiln:.2f} s (clients used {cpu:.1f} cores), "
                f"raw {raw:.2f} s"
            )
    ratio = times.ratio
    row = Row(
        TITLE,
        f"{times.kiln_median:.2f} s",
        f"{times.baseline_median:.2f} s",
        f"{ratio:.2f}x",
        "all replayed; ≤ 0.15x raw",
        ratio <= 0.15,
        [
            f"{clients:,} clients x {count} events, all fully replayed in order; "
            f"runs (Kiln / raw): {times.spread('{:.2f}')} s"
        ],
    )
    cores = os.cpu_count() or 1
    row.notes.append(
        f"the SSE clients ({PROCESSES} processes) used up to {client_cpu:.1f} of the "
        f"machine's {cores} cores while Kiln replayed"
        + (
            ": the load generators, not the gateway alone, bound Kiln's time"
            if client_cpu >= cores / 2
            else ""
        )
    )
    return [row]
