"""B3 idle cost: 1,000 connected, idle SSE clients (on 10 generations that never end;
keepalives on, at Kiln's default 15 s): the server's CPU over whole keepalive periods, and
its RSS growth per connection. Baseline: the minimal SSE server with the same clients."""

from __future__ import annotations

import asyncio
from typing import Any

from bench import events
from bench.env import Stack
from bench.loadgen.workers import Worker, split, start_all, stop_all
from bench.procs import CpuMeter, rss_bytes
from bench.report import Measurements, Row, times
from bench.scenarios import Context
from services.common.embedded_nats import free_port
from services.common.settings import Settings

TITLE = "B3 idle cost"
PROCESSES = 2
KEEPALIVE_S = Settings().sse_keepalive_s


async def measure(
    ctx: Context, stack: Stack, *, port: int, pid: int, kiln: bool, clients: int, window: float
) -> dict[str, Any]:
    assert stack.nc is not None
    gens = [events.writer(stack.js) for _ in range(10 if clients >= 100 else 2)]
    for gen in gens:
        await events.fill(stack.nc, gen, events.opening())
    paths = [
        stack.stream_path(g.generation_id) if kiln else f"/generations/{g.generation_id}/stream"
        for g in gens
    ]
    config = {"host": "127.0.0.1", "port": port, "hold": True, "timeout": 120.0}
    config["ready"] = "event" if kiln else "headers"
    # One client per generation first, so the per-connection memory excludes the logs.
    first = Worker("bench.loadgen.sse", {**config, "paths": paths}, ctx.dir("b3"))
    rest = [
        Worker("bench.loadgen.sse", {**config, "paths": part, "wait_go": True}, ctx.dir("b3"))
        for part in split(paths * (clients // len(paths) - 1), PROCESSES)
    ]
    workers = [first, *rest]
    try:
        await start_all(workers)
        await first.expect("ready", 120)
        await asyncio.sleep(1.0)
        rss_before = rss_bytes(pid)
        for worker in rest:
            await worker.send("go")
        for worker in rest:
            await worker.expect("ready", 120)
        await asyncio.sleep(2.0)
        per_connection = (rss_bytes(pid) - rss_before) / (clients - len(paths))
        cpu: list[float] = []
        client_cpu = 0.0
        for _ in range(ctx.runs):
            server = CpuMeter(pid).start()
            meters = [CpuMeter(w.pid).start() for w in workers]
            await asyncio.sleep(window)
            cpu.append(server.stop())
            client_cpu = max(client_cpu, *(m.stop() for m in meters))
        for worker in workers:
            await worker.send("stop")
        results = [await w.result(60) for w in workers]
    finally:
        await stop_all(workers)
    return {
        "cpu": cpu,
        "kib": per_connection / 1024,
        "keepalives": sum(r["keepalives"] for r in results),
        "errors": [e for r in results for e in r["errors"]],
        "client_cpu": client_cpu,
    }


async def run(ctx: Context) -> list[Row]:
    clients = ctx.size(1000, 20)
    window = ctx.seconds(KEEPALIVE_S, 1.0)
    async with Stack(ctx.dir("b3"), gateway=True, profile=ctx.profile) as stack:
        minimal_port = free_port()
        minimal = Worker(
            "bench.baseline.sse_server",
            {"url": stack.nats_url, "port": minimal_port, "keepalive_s": KEEPALIVE_S},
            ctx.dir("b3"),
        )
        try:
            await minimal.start()
            k = await measure(
                ctx,
                stack,
                port=stack.port,
                pid=stack.pid("gateway"),
                kiln=True,
                clients=clients,
                window=window,
            )
            b = await measure(
                ctx,
                stack,
                port=minimal_port,
                pid=minimal.pid,
                kiln=False,
                clients=clients,
                window=window,
            )
        finally:
            await minimal.stop()
    cpu = Measurements(k["cpu"], b["cpu"])
    ctx.log(
        f"{TITLE}: CPU (Kiln / minimal) {cpu.spread('{:.2%}')}; KiB/conn {k['kib']:.1f} / {b['kib']:.1f}"
    )
    notes = [
        f"{clients:,} clients; CPU over {ctx.runs} windows of {window:.0f} s "
        f"(one keepalive period each), per window (Kiln / minimal): {cpu.spread('{:.2%}')}; "
        f"keepalives received (Kiln / minimal): {k['keepalives']:,} / {b['keepalives']:,}; "
        "memory: RSS growth from the 10th to the last connection, measured once"
    ]
    errors = k["errors"] + b["errors"]
    if errors:
        notes.append(f"client errors: {errors[:3]}")
    cpu_ratio = cpu.ratio
    kib_ratio = k["kib"] / b["kib"] if b["kib"] > 0 else float("nan")
    return [
        Row(
            f"{TITLE} (CPU, 1,000 idle)",
            f"{cpu.kiln_median:.2%} of a core",
            f"{cpu.baseline_median:.2%}",
            times(cpu_ratio),
            "≤ 1% of a core",
            cpu.kiln_median <= 0.01 and not k["errors"],
            notes,
        ),
        Row(
            f"{TITLE} (memory)",
            f"{k['kib']:.1f} KiB/connection",
            f"{b['kib']:.1f} KiB",
            times(kib_ratio),
            "≤ 1.5x the minimal server's per connection",
            kib_ratio <= 1.5,
        ),
    ]
