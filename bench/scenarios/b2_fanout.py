"""B2 live fan-out: 1,000 SSE clients on one gateway process, 100 on each of 10 live
generations, 200 events/s published in all (20,000 deliveries/s), each event carrying its
publish time; measured publish→client latency and drops. Baseline: the minimal SSE server
(`bench/baseline/sse_server.py`) under the same load, in the same run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import events
from bench.env import Stack
from bench.loadgen.workers import Worker, split, start_all, stop_all
from bench.procs import CpuMeter
from bench.report import Measurements, Row, client_note, percentile
from bench.scenarios import Context
from services.common.embedded_nats import free_port
from services.common.eventwriter import GenerationWriter

TITLE = "B2 live fan-out"
PROCESSES = 2


class Load:
    def __init__(self, ctx: Context) -> None:
        self.clients = ctx.size(1000, 20)
        self.generations = ctx.size(10, 2)
        self.deliveries_per_s = ctx.size(20_000, 400)
        self.seconds = ctx.seconds(8.0, 1.0)
        per_generation = self.clients // self.generations
        self.events_per_s = self.deliveries_per_s / per_generation / self.generations


async def _publish(gens: list[GenerationWriter], load: Load) -> int:
    """Each generation publishes at its share of the rate, then its terminal event."""
    per_s = load.events_per_s
    count = int(per_s * load.seconds)
    start = time.monotonic() + 0.05

    async def one(index: int, gen: GenerationWriter) -> None:
        offset = index / (per_s * len(gens))  # spread the generations over the period
        for k in range(count):
            delay = start + offset + k / per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await events.emit(gen, events.stamped())

    await asyncio.gather(*(one(i, g) for i, g in enumerate(gens)))
    return count


async def measure(
    ctx: Context, stack: Stack, load: Load, *, port: int, pid: int, kiln: bool
) -> dict[str, Any]:
    assert stack.nc is not None
    gens = [events.writer(stack.js) for _ in range(load.generations)]
    for gen in gens:
        await events.fill(stack.nc, gen, events.opening())
    paths = [
        stack.stream_path(gen.generation_id) if kiln else f"/generations/{gen.generation_id}/stream"
        for gen in gens
    ] * (load.clients // load.generations)
    parts = split(paths, PROCESSES)
    workers = [
        Worker(
            "bench.loadgen.sse",
            {
                "host": "127.0.0.1",
                "port": port,
                "paths": part,
                "decode": True,
                "ready": "event" if kiln else "headers",
                "timeout": 120.0,
            },
            ctx.dir("b2"),
        )
        for part in parts
    ]
    try:
        await start_all(workers)
        for worker in workers:
            await worker.expect("ready", 120)
        await asyncio.sleep(0.5)
        server = CpuMeter(pid).start()
        clients = [CpuMeter(w.pid).start() for w in workers]
        started = time.monotonic()
        published = await _publish(gens, load)
        elapsed = time.monotonic() - started
        server_cpu = server.stop()
        client_cpu = max(c.stop() for c in clients)
        await asyncio.sleep(0.2)  # the last events reach the clients
        for gen in gens:
            await events.emit(gen, events.completed())
        results = [await w.result(120) for w in workers]
    finally:
        await stop_all(workers)
    latencies = [x / 1000 for r in results for x in r["latencies_us"]]
    marked = [m for r in results for m in r["marked"]]
    short = sum(1 for m in marked if m != published)
    completed = sum(r["completed"] for r in results)
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies, default=float("nan")),
        "drops": load.clients * published - sum(marked),
        "short_clients": short,
        "completed": completed,
        "disorder": sum(r["disorder"] for r in results),
        "rate": sum(marked) / elapsed,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "errors": [e for r in results for e in r["errors"]],
    }


async def run(ctx: Context) -> list[Row]:
    load = Load(ctx)
    p99 = Measurements()
    drops = 0
    notes: list[str] = []
    rates: list[float] = []
    cpu = Measurements()
    per_delivery = Measurements()
    client_cpu = 0.0
    async with Stack(ctx.dir("b2"), gateway=True, profile=ctx.profile) as stack:
        minimal_port = free_port()
        minimal = Worker(
            "bench.baseline.sse_server",
            {"url": stack.nats_url, "port": minimal_port, "keepalive_s": 15.0},
            ctx.dir("b2"),
        )
        try:
            await minimal.start()
            for run in range(ctx.runs):
                k = await measure(
                    ctx, stack, load, port=stack.port, pid=stack.pid("gateway"), kiln=True
                )
                b = await measure(ctx, stack, load, port=minimal_port, pid=minimal.pid, kiln=False)
                p99.add(k["p99"], b["p99"])
                cpu.add(k["server_cpu"], b["server_cpu"])
                per_delivery.add(
                    k["server_cpu"] / max(k["rate"], 1), b["server_cpu"] / max(b["rate"], 1)
                )
                drops += k["drops"] + k["disorder"] + (load.clients - k["completed"])
                rates.append(k["rate"])
                client_cpu = max(client_cpu, k["client_cpu"], b["client_cpu"])
                for name, r in (("Kiln", k), ("minimal", b)):
                    if r["drops"] or r["disorder"] or r["completed"] != load.clients:
                        notes.append(
                            f"run {run + 1}, {name}: {r['drops']} events dropped, "
                            f"{r['disorder']} out of order, {r['completed']}/{load.clients} "
                            f"streams ended; {r['errors'][:3]}"
                        )
                ctx.log(
                    f"{TITLE}: run {run + 1}: Kiln p50 {k['p50']:.1f} ms p99 {k['p99']:.1f} ms "
                    f"max {k['max']:.0f} ms at {k['rate']:,.0f}/s, gateway CPU "
                    f"{k['server_cpu']:.0%}; minimal p50 {b['p50']:.1f} ms p99 {b['p99']:.1f} ms "
                    f"at {b['rate']:,.0f}/s, CPU {b['server_cpu']:.0%}; client CPU "
                    f"{k['client_cpu']:.0%} / {b['client_cpu']:.0%}"
                )
        finally:
            await minimal.stop()
    ratio = p99.ratio
    # Issue 18: p99 and CPU per delivery each ≤ 1.25x the minimal server's (CPU per delivery: the
    # server's CPU divided by the deliveries per second it achieved, run by run).
    cpu_ratio = per_delivery.ratio
    met = drops == 0 and p99.kiln_median <= 50 and ratio <= 1.25 and cpu_ratio <= 1.25
    notes.insert(
        0,
        f"{load.clients:,} clients, {load.generations} generations, "
        f"{sorted(rates)[len(rates) // 2]:,.0f} deliveries/s achieved (median), "
        f"{load.seconds:.0f} s a run; drops {drops}; p99 per run (Kiln / minimal): "
        f"{p99.spread('{:.1f}')} ms; server CPU (Kiln / minimal): "
        f"{cpu.spread('{:.0%}')}",
    )
    note = client_note(client_cpu)
    if note:
        notes.append(note)
    return [
        Row(
            f"{TITLE} (p99 publish→client)",
            f"{p99.kiln_median:.1f} ms, {drops} drops",
            f"{p99.baseline_median:.1f} ms",
            f"{ratio:.2f}x (CPU {cpu_ratio:.2f}x)",
            "no drops; p99 ≤ 50 ms; p99 and CPU ≤ 1.25x minimal",
            met,
            notes,
        )
    ]
