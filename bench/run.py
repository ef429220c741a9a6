"""`python -m bench`: every scenario, Kiln beside its raw baseline, the table printed and
written to `bench/RESULTS.md`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.profile import summarize
from bench.report import Row, table, write
from bench.scenarios import Context

HERE = Path(__file__).resolve().parent
SCENARIOS = {
    "B1": "bench.scenarios.b1_replay",
    "B2": "bench.scenarios.b2_fanout",
    "B3": "bench.scenarios.b3_idle",
    "B4": "bench.scenarios.b4_herd",
    "B5": "bench.scenarios.b5_projection",
    "B6": "bench.scenarios.b6_end_to_end",
    "B7": "bench.scenarios.b7_verify",
    "B8": "bench.scenarios.b8_cluster",
    "B9": "bench.scenarios.b9_iterations",
    "B10": "bench.scenarios.b10_repair",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument(
        "--only", default="", help="comma-separated scenarios to run, e.g. B1,B4 (default all)"
    )
    parser.add_argument(
        "--toy", action="store_true", help="toy sizes: proves the bench works in seconds"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write the report (default bench/RESULTS.md; with --toy or --only, none)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the gateway under py-spy and print where its time went (implies --keep)",
    )
    return parser


async def run_scenarios(ctx: Context, names: list[str]) -> list[Row]:
    # SIGTERM (like Ctrl-C) cancels the run, so that every scenario stops what it started.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    rows: list[Row] = []
    for name in names:
        module = importlib.import_module(SCENARIOS[name])
        ctx.log(f"{module.TITLE}: starting")
        started = time.monotonic()
        try:
            rows += await module.run(ctx)
        except Exception as exc:
            traceback.print_exc()
            rows.append(Row(module.TITLE, "—", "—", "—", "—", None, [f"failed: {exc!r}"[:500]]))
        ctx.log(f"{module.TITLE}: done in {time.monotonic() - started:.0f} s")
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    args = _parser().parse_args(argv)
    names = [n.strip().upper() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        sys.exit(f"bench: unknown scenario {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    root = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    ctx = Context(root=root, runs=max(args.runs, 1), toy=args.toy, profile=args.profile)
    args.keep = args.keep or args.profile
    started = time.monotonic()
    ctx.log(f"Kiln bench: {', '.join(names)}, {ctx.runs} runs each; files in {root}")
    try:
        rows = asyncio.run(run_scenarios(ctx, names))
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit("bench: interrupted; everything it started has been stopped")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - started
    for profile in sorted(root.glob("*/*.pyspy")):
        print(f"\n== {profile}\n{summarize(profile)}")
    print()
    print(table(rows))
    for row in rows:
        for note in row.notes:
            print(f"- {row.scenario}: {note}")
    out = args.out or (None if args.toy or args.only else HERE / "RESULTS.md")
    if out is not None:
        command = "python -m bench" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
        write(
            out,
            rows,
            command=command.strip(),
            runs=ctx.runs,
            elapsed_s=elapsed,
        )
        print(f"\nWritten to {out}")
    print(f"Took {elapsed / 60:.1f} min")
    return rows
