"""Issue 19, items 5, 7 and 9, against a real gateway process over raw sockets (what a
stranger's bytes do, not what Litestar's test client would send): hostile bodies are a
401 before a byte of the body is sent without a valid key, and a 400 problem+json with it;
a name ending in a newline, an id ending in `%0A` and a project name with a control or
bidi character are refused up front; raw HTML and hidden characters in the text a project
is generated from reach no generated file raw. Never a 5xx, never an ERROR line in the
gateway's log. The cases are those of the in-process tests (`hostile_inputs.py`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from services.common.embedded_nats import EmbeddedNats
from tests.security.hostile_inputs import (
    BODIES,
    HIDDEN_IN_NAMES,
    HIDDEN_IN_SCHEMA,
    KEYS,
    MALFORMED,
    hidden_character,
    id_routes,
    schema,
)
from tests.support import client as kiln
from tests.support.environment import ALICE_KEY, service_env
from tests.support.hostile_text import SCRIPT, UNSAFE
from tests.support.processes import Processes, ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ANSWER_TIMEOUT_S = 15.0
HOSTILE_PROMPT = f"# Heading\n\x00 nul \u202e rlo {SCRIPT} <img src=x onerror=alert(1)>"


@dataclass
class Wire:
    """The gateway under test, its URL, and a finished generation of alice's."""

    gateway: ServiceProcess
    url: str
    generation_id: str
    project_id: str

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)


@dataclass(frozen=True)
class Answer:
    """One HTTP response as it came off the socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, Any]:
        """The problem+json body (AssertionError if the response is not one)."""
        assert self.headers.get("content-type", "").startswith("application/problem+json"), self
        problem: dict[str, Any] = json.loads(self.body)
        assert problem["status"] == self.status
        return problem


@pytest.fixture(scope="module")
def _stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Processes, str]]:
    root = tmp_path_factory.mktemp("wire")
    server = EmbeddedNats(root / "nats").start()
    group = Processes(root, service_env(root, server.url, KILN_GENERATIONS_PER_MINUTE="0"))
    try:
        group.migrate()
        group.start("storage")
        group.start("orchestrator")
        _, url = group.gateway()
        yield group, url
    finally:
        group.stop_all()
        server.stop()


@pytest.fixture(scope="module")
def _finished(_stack: tuple[Processes, str]) -> tuple[str, str]:
    """A finished generation of alice's: its id and its project's."""
    _, url = _stack

    async def create() -> tuple[str, str]:
        async with kiln.connect(url, ALICE_KEY) as http:
            accepted = await kiln.create(http)
            await kiln.wait_status(http, accepted["generation_id"], "completed")
        return accepted["generation_id"], accepted["project_id"]

    return asyncio.run(create())


@pytest.fixture
def wire(_stack: tuple[Processes, str], _finished: tuple[str, str]) -> Iterator[Wire]:
    """The module's gateway; after each test, no ERROR line it logged meanwhile."""
    group, url = _stack
    gateway = next(p for p in group.started if p.service == "gateway")
    logged = len(gateway.log)
    yield Wire(gateway, url, *_finished)
    errors = [line for line in gateway.log[logged:].splitlines() if " ERROR " in line]
    assert errors == [], "\n".join(errors)


def _head(method: str, path: str, key: str | None, body: bytes | None, content_type: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: kiln", "Connection: close"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    if body is not None:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1.1 "), raw[:300]
    headers = {}
    for field in fields:
        name, _, value = field.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunked(body)
    return Answer(int(status_line.split(" ")[1]), headers, body)


def _dechunked(body: bytes) -> bytes:
    whole = b""
    while body:
        size, _, body = body.partition(b"\r\n")
        length = int(size.split(b";")[0], 16)
        if not length:
            break
        whole, body = whole + body[:length], body[length + 2 :]
    return whole


async def exchange(
    wire: Wire,
    method: str,
    path: str,
    *,
    key: str | None = ALICE_KEY,
    body: bytes | None = None,
    send_body: bool = True,
    content_type: str = "application/json",
) -> Answer:
    """One request on a connection of its own, and the whole response (the gateway closes
    the connection after it). `send_body=False` declares the body's length but never sends
    it: the answer must come without it."""
    reader, writer = await asyncio.open_connection(*wire.address)
    try:
        writer.write(_head(method, path, key, body, content_type))
        if body is not None and send_body:
            writer.write(body)
        await writer.drain()
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            raw = await reader.read()
    finally:
        writer.close()
    answer = _parse(raw)
    assert answer.status < 500, answer
    return answer


ROUTES = ["/generations", "/generations/iterate", "/generations/{id}/cancel"]
STRANGERS = {who: key for who, key in KEYS.items() if key != ALICE_KEY}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("key", STRANGERS.values(), ids=STRANGERS.keys())
@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
async def test_without_a_valid_key_a_hostile_body_is_a_401_before_it_is_sent(
    wire: Wire, body: bytes, key: str | None, route: str
) -> None:
    path = route.format(id=wire.generation_id)
    answer = await exchange(wire, "POST", path, key=key, body=body, send_body=False)

    assert answer.status == 401, answer
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.problem()["detail"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
async def test_with_a_valid_key_a_hostile_body_is_a_400_saying_it_is_malformed(
    wire: Wire, body: bytes, route: str
) -> None:
    path = route.format(id=wire.generation_id)
    answer = await exchange(wire, "POST", path, body=body)

    assert answer.status == 400, answer
    problem = answer.problem()
    assert problem["detail"].startswith(MALFORMED), problem
    assert problem["problems"][0]["location"] == "body"


def _create(project_name: str, project_schema: dict[str, object], prompt: str = "") -> bytes:
    body = {"project_name": project_name, "schema": project_schema, "prompt": prompt}
    return json.dumps(body).encode()


@pytest.mark.parametrize(("project_schema", "location"), HIDDEN_IN_SCHEMA)
async def test_a_schema_name_ending_in_a_newline_or_hiding_a_character_is_a_400_naming_it(
    wire: Wire, project_schema: dict[str, object], location: str
) -> None:
    answer = await exchange(wire, "POST", "/generations", body=_create("shop", project_schema))

    assert answer.status == 400, answer
    assert location in [p["location"] for p in answer.problem()["problems"]]


@pytest.mark.parametrize("name", HIDDEN_IN_NAMES)
async def test_a_project_name_with_a_control_or_bidi_character_is_a_400_naming_it(
    wire: Wire, name: str
) -> None:
    answer = await exchange(wire, "POST", "/generations", body=_create(name, schema()))

    assert answer.status == 400, answer
    problem = answer.problem()["problems"][0]
    assert problem["location"] == "project_name"
    assert hidden_character(name) in problem["message"]


async def test_an_id_ending_in_an_encoded_newline_is_a_400_on_any_route(wire: Wire) -> None:
    assert (await exchange(wire, "GET", f"/generations/{wire.generation_id}")).status == 200
    for method, path in id_routes(wire.generation_id, wire.project_id):
        answer = await exchange(wire, method, path, body=b"{}" if method == "POST" else None)
        assert answer.status == 400, f"{method} {path}: {answer}"
        assert "\\n" in answer.problem()["detail"], answer  # it names the id it refused
    iterate = {"parent_generation_id": f"{wire.generation_id}\n", "modification_prompt": "a"}
    answer = await exchange(wire, "POST", "/generations/iterate", body=json.dumps(iterate).encode())
    assert answer.status == 400, answer
    assert answer.problem()["problems"][0]["location"] == "body.parent_generation_id"


async def test_raw_html_and_hidden_characters_reach_no_generated_file_raw(wire: Wire) -> None:
    """A project name and the schema's descriptions may hold raw HTML (it is escaped where
    it goes), the prompt NUL and U+202E too (they are cleaned away)."""
    html = schema(description=f"1. listed {SCRIPT} **bold**")
    body = _create(f"shop {SCRIPT}", html, HOSTILE_PROMPT)
    answer = await exchange(wire, "POST", "/generations", body=body)
    assert answer.status == 201, answer
    accepted = json.loads(answer.body)

    async with kiln.connect(wire.url, ALICE_KEY) as http:
        await kiln.wait_status(http, accepted["generation_id"], "completed")
        files = {}
        for path in ("README.md", "docs/api.md", "kiln.json", "pyproject.toml"):
            response = await http.get(f"/generations/{accepted['generation_id']}/files/{path}")
            assert response.status_code == 200, response.text
            files[path] = response.text
    for path, content in files.items():
        assert not [f"U+{ord(c):04X}" for c in UNSAFE if c in content], path
        if path.endswith(".md"):
            assert "<script" not in content.lower() and "<img" not in content.lower(), path
    assert "&lt;script&gt;" in files["README.md"]
    assert json.loads(files["kiln.json"])["name"] == f"shop {SCRIPT}"
