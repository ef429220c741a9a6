"""Synthetic but valid generations: contracts events built (numbered and hash-chained) by
`GenerationWriter`, so the gateway serves them and storage projects them as real ones.

`fill` appends a whole generation quickly (core publishes, one flush per few hundred, with
the same `Nats-Msg-Id` and CloudEvents headers as the orchestrator's appends);
`GenerationWriter.emit` is used where the publish itself is timed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from bench.env import USER
from contracts import streams
from contracts.codec import content_sha256, encode
from contracts.events import (
    Event,
    FileWritten,
    GenerationCompleted,
    GenerationRequested,
    GenerationStarted,
    PhaseCompleted,
    PhaseProgress,
    PhaseStarted,
)
from contracts.phases import PHASES
from services.common.eventwriter import GenerationWriter, cloudevents_headers

SOURCE = "kiln-bench"
BENCH_MARK = "bench "
Spec = tuple[type[Event], dict[str, Any]]


def new_id() -> str:
    return str(uuid.uuid4())


def writer(js: JetStreamContext, generation_id: str | None = None) -> GenerationWriter:
    """A writer for a fresh generation of a fresh project."""
    return GenerationWriter(js, new_id(), generation_id or new_id(), source=SOURCE)


def file_content(name: str, size: int) -> str:
    """Deterministic Python-looking text of `size` bytes, different for each name."""
    line = f"def handler(request, name={name!r}):\n    return {{'ok': True, 'name': name}}\n"
    return (line * (size // len(line) + 1))[:size]


def opening(owner: str = USER) -> list[Spec]:
    """`generation.requested` and `generation.started`."""
    return [
        (
            GenerationRequested,
            {"owner": owner, "project_name": "bench", "version": 1, "prompt": "a benchmark"},
        ),
        (
            GenerationStarted,
            {"plan": list(PHASES), "worker": SOURCE, "provider": "offline", "progress": 0},
        ),
    ]


def progress(message: str) -> Spec:
    return (PhaseProgress, {"phase": "models", "message": message})


def stamped() -> Spec:
    """A `phase.progress` carrying its publish time, for publish→client latency."""
    return progress(f"{BENCH_MARK}{time.time():.6f}")


def completed(files: int = 0, total_bytes: int = 0) -> Spec:
    return (
        GenerationCompleted,
        {"file_count": files, "total_bytes": total_bytes, "duration_ms": 1, "progress": 100},
    )


def history(
    count: int,
    *,
    salt: str = "",
    content_bytes: int = 1024,
    distinct_paths: int = 500,
    owner: str = USER,
) -> Iterator[Spec]:
    """A finished generation of exactly `count` events (at least 6), mostly `file.written`
    with `content_bytes` of content (different for each `salt`, so blobs are not shared
    between generations), a `phase.progress` every tenth event."""
    assert count >= 6
    yield from opening(owner)
    yield (PhaseStarted, {"phase": "models", "title": "Writing the data models"})
    paths: set[str] = set()
    total = 0
    for i in range(count - 5):
        if i % 10 == 9:
            yield progress(f"{i} files so far")
            continue
        path = f"app/module_{i % distinct_paths}.py"
        content = file_content(f"{salt}-{i}", content_bytes)
        paths.add(path)
        size = len(content.encode())
        total += size
        yield (
            FileWritten,
            {
                "path": path,
                "content": content,
                "sha256": content_sha256(content),
                "size": size,
                "phase": "models",
            },
        )
    yield (PhaseCompleted, {"phase": "models", "files": sorted(paths), "progress": 20})
    yield completed(len(paths), total)


async def fill(nc: Client, gen: GenerationWriter, specs: Iterator[Spec] | list[Spec]) -> int:
    """Append every event of `specs` to the writer's generation; returns the count.

    Core publishes in order on one connection, flushed every few hundred; the stream stores
    them in that order. Returns once the stream holds the last one.
    """
    count = 0
    for event_type, fields in specs:
        event = gen.build(event_type, **fields)
        data = encode(event)
        headers = {
            "Nats-Msg-Id": f"{gen.generation_id}:{event.seq}",
            **cloudevents_headers(event, SOURCE),
        }
        await nc.publish(gen.subject, data, headers=headers)
        gen.last_seq = event.seq
        gen.last_data = data
        count += 1
        if count % 256 == 0:
            await nc.flush()
    await nc.flush()
    await _stored(nc.jetstream(), gen)
    return count


async def _stored(js: JetStreamContext, gen: GenerationWriter, timeout: float = 30.0) -> None:
    want = f"{gen.generation_id}:{gen.last_seq}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = await js.get_last_msg(streams.EVENTS_STREAM, gen.subject)
            if last.headers and last.headers.get("Nats-Msg-Id") == want:
                gen.last_stream_seq = int(last.seq or 0)
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the stream did not store generation {gen.generation_id}")
        await asyncio.sleep(0.02)


async def emit(gen: GenerationWriter, spec: Spec) -> int:
    """Append one event the way the orchestrator does (awaiting the stream's ack)."""
    event_type, fields = spec
    stored = await gen.append(gen.build(event_type, **fields))
    return stored.stream_seq
