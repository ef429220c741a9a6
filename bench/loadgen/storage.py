"""Kiln's storage service, unchanged, in a process of its own, timed from the moment it is
ready until the projector has committed every event up to `target` (or `max_seconds`).

Run as `python -m bench.loadgen.storage <config.json>` with the service's environment
(NATS_URL, KILN_DATABASE_URL); it logs as `kiln storage` does.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from bench.loadgen.workers import Control
from services.common.logs import setup_logging
from services.common.settings import load_settings
from services.storage.service import StorageService


async def run(control: Control, config: dict[str, Any]) -> dict[str, Any]:
    settings = load_settings()
    setup_logging(settings.log_format, settings.log_level, settings.secret_values())
    target = int(config["target"])
    service = StorageService(settings)
    stop = asyncio.Event()
    await control.wait("go")
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 60)
    started = time.time()
    cpu = time.process_time()
    projector = service.projector
    assert projector is not None
    # With `max_seconds`, the run ends there and the rate is what was committed by then.
    deadline = time.monotonic() + config.get("max_seconds", 600.0)
    while projector.last_applied_stream_seq < target and time.monotonic() < deadline:
        if task.done():
            task.result()
            raise RuntimeError("the storage service stopped")
        await asyncio.sleep(0.002)
    finished = time.time()
    cpu = time.process_time() - cpu
    stop.set()
    await asyncio.wait_for(task, 30)
    return {
        "started": started,
        "finished": finished,
        "cpu_s": cpu,
        "events": projector.events_applied,
        "complete": projector.last_applied_stream_seq >= target,
        "skipped": projector.events_skipped,
        "batches": projector.batches,
        "apply_s": projector.apply_seconds,
    }


if __name__ == "__main__":
    Control.main(run, sys.argv[1])
