"""The example subscriber service against a real stack: it follows a generation's events in
order and posts one JSON message to a webhook when it ends; started late with `since`, it
sees only the later events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from contracts.events import is_terminal
from contracts.phases import PHASE_NAMES
from contracts.streams import EVENTS_STREAM
from examples.notify_on_completion import run
from services.common.settings import Settings
from services.sdk import Received, subscribe
from tests.support.stack import Stack, running_stack


class Webhook:
    """A tiny HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.arrived = threading.Condition()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with webhook.arrived:
                    webhook.received.append(json.loads(body))
                    webhook.arrived.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    async def wait_for(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        def wait() -> list[dict[str, Any]]:
            with self.arrived:
                self.arrived.wait_for(lambda: len(self.received) >= count, timeout)
                return list(self.received)

        received = await asyncio.to_thread(wait)
        assert len(received) >= count, f"the webhook got {len(received)} messages"
        return received


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    thread = threading.Thread(target=hook.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.server.shutdown()
        hook.server.server_close()


@contextlib.asynccontextmanager
async def notifier(nc: NATS, url: str, **kwargs: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(run(nc, url, **kwargs))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def connected(stack: Stack) -> AsyncIterator[NATS]:
    nc = await nats.connect(stack.settings.nats_servers)
    try:
        yield nc
    finally:
        await nc.close()


async def test_it_posts_one_message_when_a_generation_completes(
    settings: Settings, webhook: Webhook
) -> None:
    async with running_stack(settings) as stack, connected(stack) as nc:
        start = int((await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq)
        async with notifier(nc, webhook.url, since=start):
            accepted = await stack.create()
            gid = accepted["generation_id"]
            [note] = await webhook.wait_for(1)
            status = await stack.wait_status(gid)

    assert note["generation_id"] == gid and note["project_id"] == accepted["project_id"]
    assert note["status"] == "completed" == status["status"]
    assert note["text"].startswith(f"Kiln generation {gid} completed: ")
    assert note["file_count"] == status["file_count"]
    # It saw the whole log, in order: every event from seq 1, every phase in plan order.
    assert note["first_seq"] == 1
    assert note["events_seen"] == note["last_seq"]
    assert [p["phase"] for p in note["phases"]] == list(PHASE_NAMES)


async def test_a_late_start_with_since_sees_only_the_later_events(
    settings: Settings, webhook: Webhook
) -> None:
    async with running_stack(settings) as stack, connected(stack) as nc:
        accepted = await stack.create()
        gid = accepted["generation_id"]
        await stack.wait_status(gid)
        log = [r async for r in _whole_log(nc, gid)]
        third_phase = [r for r in log if r.type == "phase.completed"][2]

        async with notifier(nc, webhook.url, since=third_phase.stream_seq):
            [note] = await webhook.wait_for(1)

    assert note["generation_id"] == gid
    assert note["first_seq"] == third_phase.event.seq + 1
    assert note["events_seen"] == log[-1].event.seq - third_phase.event.seq
    assert [p["phase"] for p in note["phases"]] == list(PHASE_NAMES[3:])


async def _whole_log(nc: NATS, generation_id: str) -> AsyncIterator[Received]:
    async with asyncio.timeout(30):
        async for received in subscribe(nc, generation_id=generation_id):
            yield received
            if is_terminal(received.event):
                return
