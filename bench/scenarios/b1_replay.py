"""B1 late replay: a new SSE client reads a finished 10,000-event generation over HTTP,
every event parsed and its JSON decoded, against a raw nats-py ordered consumer reading
(and decoding) the same subject. Each run uses a fresh generation, so the gateway's replay
is cold."""

from __future__ import annotations

from bench import events
from bench.env import Stack
from bench.loadgen.workers import run_once
from bench.report import Measurements, Row, client_note
from bench.scenarios import Context
from contracts import streams, subjects

TITLE = "B1 late replay"
RUNS = 7


async def _kiln(ctx: Context, stack: Stack, generation_id: str, count: int) -> tuple[float, float]:
    result = await run_once(
        "bench.loadgen.sse",
        {
            "host": "127.0.0.1",
            "port": stack.port,
            "paths": [stack.stream_path(generation_id)],
            "decode": True,
            "wait_go": True,
        },
        ctx.dir("b1"),
    )
    if result["completed"] != 1 or result["events"] != count or result["disorder"]:
        raise RuntimeError(f"the SSE client did not read the whole generation: {result}")
    seconds = result["finished"] - result["started"]
    return count / seconds, result["cpu_s"] / seconds


async def _raw(ctx: Context, stack: Stack, generation_id: str, target: int, count: int) -> float:
    result = await run_once(
        "bench.loadgen.raw_nats",
        {
            "url": stack.nats_url,
            "mode": "ordered",
            "stream": streams.EVENTS_STREAM,
            "subject": subjects.generation_events_any_project(generation_id),
            "target": target,
            "expect": count,
            "decode": True,
        },
        ctx.dir("b1"),
    )
    if result["events"] != count:
        raise RuntimeError(f"the raw consumer did not read the whole generation: {result}")
    return float(count / (result["finished"] - result["started"]))


async def run(ctx: Context) -> list[Row]:
    count = ctx.size(10_000, 200)
    # A run takes about a second: more than the minimum three steady the median.
    runs = max(ctx.runs, RUNS)
    rates = Measurements()
    client_cpu = 0.0
    async with Stack(ctx.dir("b1"), gateway=True, profile=ctx.profile) as stack:
        assert stack.nc is not None
        for run in range(runs + 1):
            gen = events.writer(stack.js)
            await events.fill(stack.nc, gen, events.history(count, salt=gen.generation_id))
            # Which of the two reads the fresh generation first alternates between runs.
            if run % 2:
                raw = await _raw(ctx, stack, gen.generation_id, gen.last_stream_seq, count)
                kiln, cpu = await _kiln(ctx, stack, gen.generation_id, count)
            else:
                kiln, cpu = await _kiln(ctx, stack, gen.generation_id, count)
                raw = await _raw(ctx, stack, gen.generation_id, gen.last_stream_seq, count)
            if run == 0:
                continue  # warm-up
            rates.add(kiln, raw)
            client_cpu = max(client_cpu, cpu)
            ctx.log(f"{TITLE}: run {run}: Kiln {kiln:,.0f} events/s, raw {raw:,.0f} events/s")
    ratio = rates.ratio
    row = Row(
        TITLE,
        f"{rates.kiln_median:,.0f} events/s",
        f"{rates.baseline_median:,.0f} events/s",
        f"{ratio:.2f}x",
        "≥ 0.85x raw",
        ratio >= 0.85,
        [f"{count:,} events of ~1 KiB, {runs} runs; runs (Kiln / raw): {rates.spread()} events/s"],
    )
    note = client_note(client_cpu, "the SSE client")
    if note:
        row.notes.append(note)
    return [row]
