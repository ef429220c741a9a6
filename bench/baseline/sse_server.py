"""The minimal SSE server of B2 and B3: one shared JetStream subscription (new events on
`kiln.events.>`) fanned out to one queue per client, one shared keepalive task. No
replay, no auth, no framework: the floor a real gateway is compared with.

Runs on uvloop when installed, as the gateway does. `python -m
bench.baseline.sse_server <config.json>` (protocol in `bench/loadgen/workers.py`);
config: url, port, keepalive_s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


async def serve(config: dict[str, Any]) -> None:
    watchers: dict[str, set[asyncio.Queue[bytes | None]]] = {}
    nc = await nats.connect(config["url"], pending_size=256 * 1024**2)
    js = nc.jetstream()

    async def on_message(msg: Msg) -> None:
        queues = watchers.get(msg.subject.rsplit(".", 1)[-1])
        if not queues:
            return
        event_type = (msg.headers or {}).get("ce-type", "kiln.message")[5:]
        block = b"id: %d\nevent: %s\ndata: %s\n\n" % (
            msg.metadata.sequence.stream,
            event_type.encode(),
            msg.data,
        )
        for queue in queues:
            queue.put_nowait(block)

    await js.subscribe(
        "kiln.events.>",
        stream="KILN_EVENTS",
        ordered_consumer=True,
        cb=on_message,
        deliver_policy=DeliverPolicy.NEW,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        path = head.split(b" ", 2)[1].split(b"?")[0].decode()
        generation_id = path.rstrip("/").split("/")[-2]
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        watchers.setdefault(generation_id, set()).add(queue)

        async def until_closed() -> None:
            with contextlib.suppress(Exception):
                while await reader.read(4096):
                    pass
            queue.put_nowait(None)

        closed = asyncio.create_task(until_closed())
        try:
            writer.write(HEAD)
            while True:
                item = await queue.get()
                items = [item]
                while not queue.empty():
                    items.append(queue.get_nowait())
                if None in items:
                    break
                body = b"".join(i for i in items if i)
                writer.write(b"%x\r\n%s\r\n" % (len(body), body))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            watchers[generation_id].discard(queue)
            closed.cancel()
            writer.close()

    async def keepalive() -> None:
        while True:
            await asyncio.sleep(config.get("keepalive_s", 15.0))
            for queues in watchers.values():
                for queue in queues:
                    queue.put_nowait(b": keepalive\n\n")

    server = await asyncio.start_server(client, "127.0.0.1", config["port"], backlog=4096)
    ticker = asyncio.create_task(keepalive())
    print(json.dumps({"loaded": True}), flush=True)
    async with server:
        try:
            await server.serve_forever()
        finally:
            ticker.cancel()


if __name__ == "__main__":
    config = json.loads(Path(sys.argv[1]).read_text())
    try:  # the loop the gateway runs on
        import uvloop

        uvloop.run(serve(config))
    except ImportError:
        asyncio.run(serve(config))
