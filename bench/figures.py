"""The figures issues #2 and #3 ask for, measured on a real stack (processes, loopback):

- POST → `generation.completed` with the offline provider, 1 and 20 entities (median of 5);
- the number of events per generation;
- the time a late client takes to receive a finished generation's whole history over SSE;
- bytes stored for 10 iterations of a 20-entity project, against 10 full copies.

Run: `.venv/bin/python -m bench.figures` (about a minute).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.env import API_KEY, Stack

RUNS = 5
ITERATIONS = [
    "add authentication",
    "add pagination",
    "add a Dockerfile",
    "add entity Review with fields rating:integer, body:text",
    "add fields sku:string, stock:integer to Entity1",
    "add entity Tag with fields label:string",
    "add fields note:text to Review",
    "remove entity Tag",
    "add entity Coupon with fields code:string, percent:integer",
    "add fields active:boolean to Coupon",
]


def schema(entities: int) -> dict[str, Any]:
    """`entities` entities with a few fields each, chained by relations."""
    items = []
    for i in range(1, entities + 1):
        entity: dict[str, Any] = {
            "name": f"Entity{i}",
            "fields": [
                {"name": "title", "type": "string"},
                {"name": "amount", "type": "decimal"},
                {"name": "active", "type": "boolean"},
            ],
        }
        if i > 1:
            entity["relations"] = [{"name": "parent", "target": f"Entity{i - 1}"}]
        items.append(entity)
    return {"entities": items}


async def until_completed(client: httpx.AsyncClient, stream_url: str) -> int:
    """Follow the stream to its terminal event; the number of events."""
    count = 0
    async with client.stream("GET", stream_url) as response:
        async for line in response.aiter_lines():
            if line.startswith("id:"):
                count += 1
            if line in ("event: generation.failed", "event: generation.cancelled"):
                raise RuntimeError(f"a generation ended with {line}")
    return count


async def create(
    client: httpx.AsyncClient, entities: int, name: str
) -> tuple[float, dict[str, Any], int]:
    """POST and follow to completion: seconds, the 201 body, events."""
    started = time.perf_counter()
    response = await client.post(
        "/generations", json={"project_name": name, "schema": schema(entities)}
    )
    response.raise_for_status()
    body = response.json()
    events = await until_completed(client, body["stream_url"])
    return time.perf_counter() - started, body, events


async def late_replay(client: httpx.AsyncClient, generation_id: str) -> float:
    """A new client reading a finished generation's whole history."""
    token = (await client.post(f"/generations/{generation_id}/stream-token")).json()
    started = time.perf_counter()
    await until_completed(client, token["stream_url"])
    return time.perf_counter() - started


async def stored_bytes(database_url: str) -> tuple[int, int]:
    """(bytes of distinct file contents stored, bytes of every version's files summed)."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            blobs = (
                await conn.execute(text("SELECT coalesce(sum(size),0) FROM blobs"))
            ).scalar_one()
            copies = (
                await conn.execute(text("SELECT coalesce(sum(size),0) FROM generation_files"))
            ).scalar_one()
    finally:
        await engine.dispose()
    return int(blobs), int(copies)


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="kiln-figures-") as root:
        async with (
            Stack(Path(root), gateway=True, storage=True, orchestrator=True) as stack,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{stack.port}",
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=120,
            ) as client,
        ):
            await create(client, 1, "warm-up")
            print("POST → generation.completed, offline provider (median of 5):")
            last: dict[int, dict[str, Any]] = {}
            for entities in (1, 20):
                times, counts = [], []
                for run in range(RUNS):
                    seconds, body, events = await create(client, entities, f"p{entities}-{run}")
                    times.append(seconds)
                    counts.append(events)
                    last[entities] = body
                print(
                    f"  {entities:>2} entities: {statistics.median(times) * 1000:7.1f} ms "
                    f"(runs: {', '.join(f'{t * 1000:.0f}' for t in times)} ms), "
                    f"{counts[0]} events per generation"
                )
            print("A late client reading a finished generation's whole history (median of 5):")
            for entities, body in last.items():
                replays = [await late_replay(client, body["generation_id"]) for _ in range(RUNS)]
                print(f"  {entities:>2} entities: {statistics.median(replays) * 1000:7.1f} ms")

            before = await stored_bytes(stack.database_url)
            parent = last[20]
            for prompt in ITERATIONS:
                response = await client.post(
                    "/generations/iterate",
                    json={
                        "parent_generation_id": parent["generation_id"],
                        "modification_prompt": prompt,
                    },
                )
                response.raise_for_status()
                parent = response.json()
                await until_completed(client, parent["stream_url"])
            await asyncio.sleep(1.0)  # let storage apply the last events
            after = await stored_bytes(stack.database_url)
            stored, copies = after[0] - before[0], after[1] - before[1]
            print("10 iterations of a 20-entity project:")
            print(
                f"  new bytes stored {stored:,} against {copies:,} for 10 full copies "
                f"({stored / copies:.1%})"
            )


if __name__ == "__main__":
    asyncio.run(main())
