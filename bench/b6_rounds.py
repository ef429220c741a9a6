"""Where B6's concurrent rounds spend the machine: rounds of B6's `N concurrent x E
entities` on one stack, each with its wall time, when the stream held its last event, the
raw publish of the same events, and the CPU seconds every process used in the round.

    python -m bench.b6_rounds [--rounds 6] [--entities 20] [--concurrent 50] [--profile DIR]

The stack is B6's (nats-server, storage, orchestrator and gateway as processes,
`KILN_VERIFY=false`), warmed up with 1 x 1 and 3 x 1 x E generations. CPU seconds come
from /proc (user + system, every thread) just before the POSTs and just after `completed`
is in the read model; "bench" is this process (the POSTs and the read-model polls).
`--profile DIR` records the orchestrator and storage with py-spy (250 Hz, raw collapsed
stacks) over the measured rounds. Medians are printed at the end. bench/RESULTS.md
quotes its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.env import Stack
from bench.loadgen.posts import Posts
from bench.procs import cpu_seconds
from bench.scenarios.b6_end_to_end import RAW_STREAM, Users, generate, raw_publish
from contracts import streams
from services.common.embedded_nats import EmbeddedNats

PROCESSES = ("orchestrator", "storage", "gateway", "nats", "bench")


def _spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` into `out` until stopped."""
    py_spy = str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [py_spy, "record", "-f", "raw", "-r", "250", "--pid", str(pid), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop_spies(spies: list[subprocess.Popen[bytes]]) -> None:
    """Stop each py-spy (SIGINT: it writes its profile, then exits)."""
    for spy in spies:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)


async def measure(
    root: Path, *, rounds: int, entities: int, concurrent: int, profile: Path | None = None
) -> list[dict[str, float]]:
    """The figures of each round (seconds; CPU seconds by process), printed as they come."""
    async with (
        Stack(
            root, gateway=True, storage=True, orchestrator=True, settings={"KILN_VERIFY": "false"}
        ) as stack,
        Posts("127.0.0.1", stack.port) as client,
    ):
        config = streams.events_stream(stack.replicas)
        await stack.js.add_stream(
            dataclasses.replace(
                config, name=RAW_STREAM, subjects=["bench.raw.>"], description="bench"
            )
        )
        assert isinstance(stack.broker, EmbeddedNats) and stack.broker.process is not None
        pids = {name: stack.pid(name) for name in PROCESSES[:3]}
        pids |= {"nats": stack.broker.process.pid, "bench": os.getpid()}
        users = Users()
        await generate(stack, client, users, 1, 1)
        for _ in range(3):
            await generate(stack, client, users, entities, 1)
        spies = (
            [_spy(pids[name], profile / f"{name}.pyspy") for name in ("orchestrator", "storage")]
            if profile is not None
            else []
        )
        measured: list[dict[str, float]] = []
        try:
            for _ in range(rounds):
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                wall, ids, published = await generate(stack, client, users, entities, concurrent)
                used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
                raw, _ = await raw_publish(stack, ids)
                figures = {"wall": wall, "last event": published, "raw": raw, **used}
                measured.append(figures)
                print(
                    "  ".join(f"{k} {v:.3f}" for k, v in figures.items())
                    + f"  CPU sum {sum(used.values()):.2f}",
                    flush=True,
                )
        finally:
            await asyncio.to_thread(_stop_spies, spies)
        return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--entities", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kiln-b6-rounds-") as root:
        rounds = asyncio.run(
            measure(
                Path(root),
                rounds=args.rounds,
                entities=args.entities,
                concurrent=args.concurrent,
                profile=args.profile,
            )
        )
    medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    cpu = sum(medians[name] for name in PROCESSES)
    added = (medians["wall"] - medians["raw"]) / medians["raw"]
    print(
        f"medians of {len(rounds)} rounds: "
        + "  ".join(f"{k} {v:.3f}" for k, v in medians.items())
        + f"  CPU sum {cpu:.2f}; added time per event {added:.2f}x raw"
    )


if __name__ == "__main__":
    main()
