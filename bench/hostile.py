"""`python -m bench.hostile`: the hostile clients of issue 19, each sustained against a real
gateway with default settings, while the gateway's RSS (VmRSS from /proc) is sampled and a
concurrent `GET /healthz` is timed every ~100 ms twice over: on a kept-alive connection
opened before the attack, and on a new connection each time (a client arriving during it:
it waits behind every connection the attack queued before it).

(a) a 128 MiB header on /healthz, again and again; (b) 100,000 header fields, again and
again; (c) 300 connections sending their request one header byte every 2 s; (d) 300 POSTs
with a key and a declared Content-Length whose body comes one byte every 2 s; (e) 600 SSE
clients of a large finished replay (a 200-entity project) with a 4 KiB receive buffer that
never read. The attacks run in a load-generator process (`bench/loadgen/hostile.py`); a
connection the gateway closes in (c) and (d) is opened again at once.

The stack (nats-server, storage, an orchestrator with the offline provider, the gateway)
runs as child processes stopped by PID at the end; `KILN_VERIFY=false` (no verifier: the
replay's generation completes without one). Nothing else is set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.env import API_KEY, Stack
from bench.loadgen.workers import Worker
from bench.procs import rss_bytes
from bench.profile import summarize
from tests.ops.cluster import scrape
from tests.support.pressure import MIB, probing
from tests.support.replays import large_replay

PROBE_EVERY_S = 0.1
WARM_S = 0.5
"""How long the probe runs before an attack starts (its kept-alive connection is open)."""
SETTLE_S = 3.0
"""After an attack, how long the gateway is left alone before its RSS "after" is read."""


@dataclass(frozen=True)
class Sizes:
    """How big each attack is."""

    header_bytes: int = 128 * MIB
    fields: int = 100_000
    trickling: int = 300
    interval_s: float = 2.0
    non_readers: int = 600
    rcvbuf: int = 4096
    entities: int = 200


FULL = Sizes()
TOY = Sizes(
    header_bytes=1 * MIB, fields=2_000, trickling=5, interval_s=0.2, non_readers=5, entities=2
)


@dataclass(frozen=True)
class Attack:
    """One attack: its letter, what the table calls it, and its load generator's config."""

    letter: str
    name: str
    title: Callable[[Sizes], str]
    config: Callable[[Sizes, str], dict[str, Any]]


ATTACKS = [
    Attack(
        "a",
        "huge_header",
        lambda s: f"(a) a {s.header_bytes // MIB} MiB header, repeatedly",
        lambda s, _: {"header_bytes": s.header_bytes},
    ),
    Attack(
        "b",
        "many_headers",
        lambda s: f"(b) {s.fields:,} header fields, repeatedly",
        lambda s, _: {"fields": s.fields},
    ),
    Attack(
        "c",
        "slow_headers",
        lambda s: f"(c) {s.trickling} connections, a header byte every {s.interval_s:g} s",
        lambda s, _: {"connections": s.trickling, "interval": s.interval_s},
    ),
    Attack(
        "d",
        "slow_body",
        lambda s: f"(d) {s.trickling} POSTs with a key, a body byte every {s.interval_s:g} s",
        lambda s, _: {
            "connections": s.trickling,
            "interval": s.interval_s,
            "path": "/generations",
            "key": API_KEY,
        },
    ),
    Attack(
        "e",
        "never_read",
        lambda s: f"(e) {s.non_readers} SSE clients that never read a large replay",
        lambda s, stream_path: {
            "connections": s.non_readers,
            "rcvbuf": s.rcvbuf,
            "stream_path": stream_path,
        },
    ),
]


class Gateway:
    """The gateway's process, as `tests.support.pressure.Probe` reads its memory."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def memory_bytes(self, field: str = "VmRSS") -> int:
        assert field == "VmRSS"
        return rss_bytes(self.pid)


@dataclass(frozen=True)
class Outcome:
    """One attack's row."""

    attack: str
    responses: str
    rss: str
    healthz: str
    """On the probe's kept-alive connection."""
    healthz_new: str
    """Each on a new connection."""


def _responses(result: dict[str, Any]) -> str:
    statuses = ", ".join(
        f"{'no status' if code == '0' else code} x{count:,}"
        for code, count in result["statuses"].items()
    )
    parts = [statuses or "none", f"{result['opened']:,} connections"]
    closed = sorted(result["closed_after"])
    if closed:
        parts.append(
            f"{len(closed):,} closed by the gateway, {_s(closed[0])} to {_s(closed[-1])} after "
            f"opening (median {_s(statistics.median(closed))})"
        )
    if result["still_open"]:
        parts.append(f"{result['still_open']:,} open at the end, as the client sees them")
    if result["opened"] and result["sent"] > 1024 * result["opened"]:
        per = result["sent"] / result["opened"] / 1024
        parts.append(f"~{per:,.0f} KiB written per connection (the kernel's buffers included)")
    return "; ".join(parts)


def _streams(metrics: dict[str, float]) -> str:
    """What the gateway's /metrics count of SSE streams cut and refused, once the attack is
    over (a client cannot see a cut while its receive window is full: the FIN waits
    behind the unread data)."""
    cut = {
        name.split('reason="')[1].rstrip('"}'): int(value)
        for name, value in metrics.items()
        if name.startswith("kiln_gateway_sse_streams_cut_total{") and value
    }
    said = [f"{n:,} cut ({reason})" for reason, n in sorted(cut.items())]
    refused = int(metrics.get("kiln_gateway_sse_streams_refused_total", 0))
    said += [f"{refused:,} refused"] if refused else []
    return "the gateway's metrics: streams " + ", ".join(said) if said else ""


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _latencies(latencies_s: list[float], statuses: list[int]) -> str:
    ordered = sorted(latencies_s)
    if not ordered:
        return "no request"
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    failed = sum(1 for s in statuses if s != 200)
    text = (
        f"{statistics.median(ordered) * 1000:.1f} / {p99 * 1000:.0f} / "
        f"{ordered[-1] * 1000:.0f} ms ({len(ordered)} requests"
    )
    return text + (f", {failed} not 200)" if failed else ")")


async def _new_connections(
    port: int, stop: asyncio.Event, latencies_s: list[float], statuses: list[int]
) -> None:
    """`GET /healthz` every PROBE_EVERY_S, each on a new connection (a client arriving
    during the attack), timed from the connect to the whole response."""
    while not stop.is_set():
        started = time.perf_counter()
        status = 0
        try:
            async with asyncio.timeout(60):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(
                        b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n"
                    )
                    response = await reader.read()
                finally:
                    writer.close()
            if response.startswith(b"HTTP/1.1 "):
                status = int(response.split(b" ", 2)[1])
        except (OSError, TimeoutError):
            pass
        latencies_s.append(time.perf_counter() - started)
        statuses.append(status)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PROBE_EVERY_S)


async def _profiler(pid: int, seconds: float, out: Path) -> asyncio.subprocess.Process:
    """py-spy attached to the gateway for `seconds` (non-blocking: it does not pause the
    gateway to sample it), writing collapsed stacks to `out`."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return await asyncio.create_subprocess_exec(
        str(py_spy), "record", "--nonblocking", "-f", "raw", "-r", "250", "-d",
        str(max(1, round(seconds))), "-p", str(pid), "-o", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def measure(
    stack: Stack,
    attack: Attack,
    sizes: Sizes,
    seconds: float,
    stream_path: str,
    profile: bool = False,
) -> Outcome:
    """Run one attack for `seconds` while probing the gateway (and profiling it)."""
    url = f"http://127.0.0.1:{stack.port}"
    gateway = Gateway(stack.pid("gateway"))
    config = {
        "attack": attack.name,
        "host": "127.0.0.1",
        "port": stack.port,
        "seconds": seconds,
        **attack.config(sizes, stream_path),
    }
    worker = await Worker("bench.loadgen.hostile", config, stack.root).start()
    out = stack.root / f"gateway-{attack.letter}.pyspy"
    profiler = await _profiler(gateway.pid, seconds, out) if profile else None
    fresh: tuple[list[float], list[int]] = ([], [])
    try:
        async with probing(gateway, url, PROBE_EVERY_S) as probe:
            await asyncio.sleep(WARM_S)  # the probe's kept-alive connection is open
            stop = asyncio.Event()
            arriving = asyncio.create_task(_new_connections(stack.port, stop, *fresh))
            await worker.send("go")
            try:
                result = await worker.result(timeout=seconds + 120)
            finally:
                stop.set()
                await arriving
    finally:
        await worker.stop()
        if profiler is not None:
            await profiler.wait()
            if out.exists():
                print(f"== {out}\n{summarize(out)}", flush=True)
    counted = _streams(await scrape(url))
    await asyncio.sleep(SETTLE_S)
    after = gateway.memory_bytes()
    rss = f"{probe.baseline_rss / MIB:.0f} → {probe.peak_rss / MIB:.0f} → {after / MIB:.0f} MiB"
    if probe.peak_kernel_queued >= MIB:
        rss += f" (kernel send queues ≤ {probe.peak_kernel_queued / MIB:.1f} MiB)"
    if probe.latencies_s:
        worst = max(range(len(probe.latencies_s)), key=probe.latencies_s.__getitem__)
        at = sum(probe.latencies_s[:worst]) + worst * PROBE_EVERY_S
        _log(f"  the slowest /healthz began ~{at:.1f} s into the attack")
    return Outcome(
        attack.title(sizes),
        "; ".join(filter(None, [_responses(result), counted])),
        rss,
        _latencies(probe.latencies_s, probe.statuses),
        _latencies(*fresh),
    )


async def run(
    root: Path, seconds: float, sizes: Sizes, only: str = "", profile: bool = False
) -> list[Outcome]:
    """Start the stack in `root`, build the large replay, run the attacks; their rows."""
    chosen = [a for a in ATTACKS if not only or a.letter in only]
    outcomes: list[Outcome] = []
    async with Stack(
        root, gateway=True, storage=True, orchestrator=True, settings={"KILN_VERIFY": "false"}
    ) as stack:
        url = f"http://127.0.0.1:{stack.port}"
        stream_path = ""
        if any(a.letter == "e" for a in chosen):
            stream_path, events = await large_replay(url, API_KEY, sizes.entities)
            _log(f"large replay: {len(events)} events, {sizes.entities} entities")
        for attack in chosen:
            _log(f"{attack.title(sizes)}: {seconds:g} s")
            outcomes.append(await measure(stack, attack, sizes, seconds, stream_path, profile))
            _log(f"  {outcomes[-1].responses}")
        log = (root / "gateway.log").read_text(errors="replace").splitlines()
        errors = [line for line in log if "ERROR" in line]
        _log(f"gateway log: {len(errors)} ERROR lines " + (errors[0][:300] if errors else ""))
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| attack | responses seen | gateway RSS before → peak → after | "
        "concurrent GET /healthz, kept-alive connection: median / p99 / max | "
        "the same, a new connection each: median / p99 / max |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {o.attack} | {o.responses} | {o.rss} | {o.healthz} | {o.healthz_new} |"
        for o in outcomes
    ]
    return "\n".join(lines)


_started = time.monotonic()


def _log(message: str) -> None:
    print(f"[{time.monotonic() - _started:6.1f} s] {message}", flush=True)


def main(argv: list[str] | None = None) -> list[Outcome]:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.add_argument("--seconds", type=float, help="how long each attack lasts (default 15)")
    parser.add_argument("--only", default="", help="attacks to run, e.g. a,e (default all)")
    parser.add_argument("--toy", action="store_true", help="toy sizes, 1 s each: proves it works")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="attach py-spy to the gateway during each attack and print where its time went",
    )
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.0 if args.toy else 15.0)
    root = Path(tempfile.mkdtemp(prefix="kiln-hostile-"))
    try:
        sizes = TOY if args.toy else FULL
        outcomes = asyncio.run(run(root, seconds, sizes, args.only.lower(), args.profile))
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(table(outcomes))
    return outcomes


if __name__ == "__main__":
    main()
