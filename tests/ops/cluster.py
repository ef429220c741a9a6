"""Kiln as an operator runs it past one machine: each service its own process
(`python -m services.cli.main <service>`), several of a kind, one nats-server, one
migrated database; and the client-side checks the operations tests share."""

from __future__ import annotations

import contextlib
import functools
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client.parser import text_string_to_metric_families

from contracts import subjects
from contracts.events import TERMINAL_TAGS
from contracts.streams import EVENTS_STREAM
from services.common.blobs import BlobStore
from services.common.embedded_nats import free_port
from tests.support import client as kiln
from tests.support.client import SSEEvent
from tests.support.environment import ALICE_KEY, service_env
from tests.support.processes import Processes, ServiceProcess

__all__ = ["SSEEvent", "create", "wait_status"]

START_TIMEOUT_S = 120.0


@dataclass(eq=False)
class Service:
    """A running service process and the base URL of its HTTP endpoints."""

    process: ServiceProcess
    url: str

    @property
    def pid(self) -> int:
        return self.process.process.pid


class Cluster:
    """Starts services as processes sharing one environment; stops them all (by PID)."""

    def __init__(self, tmp_path: Path, nats_url: str, **env: str) -> None:
        self.nats_url = nats_url
        base = {"KILN_GENERATIONS_PER_MINUTE": "0", "KILN_LOG_FORMAT": "json", **env}
        self.processes = Processes(tmp_path, service_env(tmp_path, nats_url, **base))

    def migrate(self) -> None:
        """`kiln migrate`, as an operator runs it before the services."""
        self.processes.migrate()

    def _with_health(self, service: str, name: str, **env: str) -> Service:
        port = free_port()
        process = self.processes.start(
            service, name, KILN_HEALTH_HOST="127.0.0.1", KILN_HEALTH_PORT=str(port), **env
        )
        url = f"http://127.0.0.1:{port}"
        process.wait_http(f"{url}/readyz", timeout=START_TIMEOUT_S)
        return Service(process, url)

    def storage(self, name: str = "storage", **env: str) -> Service:
        return self._with_health("storage", name, **env)

    def orchestrator(self, name: str = "orchestrator", **env: str) -> Service:
        return self._with_health("orchestrator", name, **env)

    def gateway(self, name: str = "gateway", **env: str) -> Service:
        port = free_port()
        process = self.processes.start(
            "gateway", name, KILN_HOST="127.0.0.1", KILN_PORT=str(port), **env
        )
        url = f"http://127.0.0.1:{port}"
        process.wait_http(f"{url}/readyz", timeout=START_TIMEOUT_S)
        return Service(process, url)

    def stop_all(self) -> None:
        self.processes.stop_all()


def client(url: str) -> httpx.AsyncClient:
    """alice's client for one gateway."""
    return kiln.connect(url, ALICE_KEY, timeout=60)


create = kiln.create
# Operations move whole processes: wait longer, and poll less often, than in-process tests.
wait_status = functools.partial(kiln.wait_status, timeout=180, every_s=0.1)


async def watch(
    url: str,
    stream_url: str,
    *,
    last_event_id: int | None = None,
    received: list[SSEEvent] | None = None,
    timeout: float = 180,
) -> list[SSEEvent]:
    """Read a stream (on a connection of its own) until the server ends it, or the gateway
    stops and cuts it; every event received, in order, also appended to `received`."""
    return await kiln.read_stream(
        url,
        stream_url,
        last_event_id=last_event_id,
        received=received,
        cut_is_end=True,
        timeout=timeout,
    )


@dataclass(frozen=True)
class StreamMessage:
    """One message of KILN_EVENTS as the broker holds it."""

    stream_seq: int
    subject: str
    msg_id: str
    event: dict[str, Any]


async def stream_messages(nats_url: str) -> list[StreamMessage]:
    """Every message of the events stream, read from the broker itself."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        last = int((await js.stream_info(EVENTS_STREAM)).state.last_seq)
        messages: list[StreamMessage] = []
        if not last:
            return messages
        sub = await js.subscribe(
            subjects.ALL_EVENTS,
            stream=EVENTS_STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=30)
                seq = int(msg.metadata.sequence.stream)
                messages.append(
                    StreamMessage(
                        seq,
                        msg.subject,
                        (msg.headers or {}).get("Nats-Msg-Id", ""),
                        msgspec.json.decode(msg.data),
                    )
                )
                if seq >= last:
                    return messages
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()


async def files_in_log(nats_url: str, messages: list[StreamMessage]) -> dict[str, tuple[str, str]]:
    """path → (sha256, content) as one generation's log leaves them: its file.written and
    file.deleted, and the files its version.based_on names (contents read from KILN_BLOBS)."""
    named: dict[str, tuple[str, str | None]] = {}
    for m in messages:
        if m.event["type"] == "file.written":
            named[m.event["path"]] = (m.event["sha256"], m.event.get("content"))
        elif m.event["type"] == "file.deleted":
            named.pop(m.event["path"], None)
        elif m.event["type"] == "version.based_on":
            named.update((f["path"], (f["sha256"], None)) for f in m.event["files"])
    unread = {sha for sha, content in named.values() if content is None}
    contents: dict[str, str] = {}
    if unread:
        nc = await nats.connect(nats_url)
        try:
            contents = await BlobStore(nc.jetstream()).get_many(unread)
        finally:
            await nc.close()
    return {
        path: (sha, content if content is not None else contents[sha])
        for path, (sha, content) in named.items()
    }


def by_generation(messages: list[StreamMessage]) -> dict[str, list[StreamMessage]]:
    """The stream's messages grouped by generation, each group in stream order."""
    groups: dict[str, list[StreamMessage]] = {}
    for message in messages:
        groups.setdefault(message.event["generation_id"], []).append(message)
    return groups


_WHY = {"generation.resumed", *TERMINAL_TAGS}


def check_log_is_whole(generation_id: str, messages: list[StreamMessage]) -> None:
    """One writer's log: seq 1..n, every Nats-Msg-Id once, exactly one terminal event, last."""
    assert [m.event["seq"] for m in messages] == list(range(1, len(messages) + 1)), generation_id
    ids = Counter(m.msg_id for m in messages)
    assert all(ids.values()) and max(ids.values()) == 1, f"duplicated Nats-Msg-Id: {ids}"
    assert set(ids) == {f"{generation_id}:{m.event['seq']}" for m in messages}
    types = [m.event["type"] for m in messages]
    # A generation that did not complete says why: its resumes and its terminal event whole.
    why = (generation_id, types, [m.event for m in messages if m.event["type"] in _WHY])
    assert types.count("generation.completed") == 1, why
    assert sum(t in TERMINAL_TAGS for t in types) == 1, why
    assert types[-1] == "generation.completed", why


def check_sse_matches_log(
    received: list[SSEEvent], messages: list[StreamMessage], *, after: int = 0
) -> None:
    """An SSE client got exactly the log's events after `after`: ids, types and bodies."""
    expected = [m for m in messages if m.stream_seq > after]
    assert [(e.id, e.type) for e in received] == [(m.stream_seq, m.event["type"]) for m in expected]
    assert [e.data for e in received] == [m.event for m in expected]


async def scrape(url: str) -> dict[str, float]:
    """A service's /metrics as {`name{label="v",…}`: value} (and each name's sum over labels)."""
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def wait_exit(service: Service, timeout: float) -> tuple[int | None, float]:
    """Wait for the process to exit; its exit code (None if still running) and seconds taken."""
    started = time.monotonic()
    with contextlib.suppress(Exception):
        service.process.process.wait(timeout)
    return service.process.process.poll(), time.monotonic() - started
