"""Local fake LLM HTTP servers, scripted per phase, for tests with no network.

`FakeLLMServer` is the shared part: a small ASGI app served by uvicorn on a free
127.0.0.1 port in a background thread, the per-phase script of steps, the default files a
good answer holds, and the record of every request. `gemini_server.FakeGemini` and
`openai_server.FakeOpenAI` speak each API's wire format.

    with FakeGemini() as fake:
        fake.on("models", RateLimited(retry_after_s=1), Reply())
        fake.on("*", Reply(chunks=5, delay_s=0.1))
        ...  # point the provider at fake.url
        assert fake.calls_for("models")[0].status == 429

The phase of a request is read from the `## Phase: <name>` line of its prompt, the
entities from its `Entities: A, B` line, and the files already saved after an output
limit from its `Already saved from this phase (...): a, b` line. Each phase consumes its
steps in order; the last one repeats. `"*"` scripts every phase without a script of its own.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Self

import msgspec
import uvicorn

from contracts.phases import PHASES
from contracts.schema import Entity, Field, ProjectSchema
from services.orchestrator.providers.base import LlmCall, PhaseRequest

TEN_MB = 10 * 1024 * 1024
HOSTILE_PATHS = ("../../etc/passwd", "/etc/x", "C:\\x", "a/../../b", "app/nul\x00byte.py")

# ---------------------------------------------------------------------------------------
# Steps of a script
# ---------------------------------------------------------------------------------------


@dataclass
class Step:
    """One scripted answer."""


@dataclass
class Reply(Step):
    """A good phase output in `chunks` streamed pieces, `delay_s` apart.

    `files` replaces the phase's default files; `extra` adds file objects (any JSON, so a
    hostile path can be sent as is); `deletions` lists deletion objects.
    """

    chunks: int = 3
    delay_s: float = 0.0
    files: list[dict[str, Any]] | None = None
    extra: list[dict[str, Any]] = field(default_factory=list)
    deletions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Raw(Step):
    """Exactly this text as the answer, with this finish (`stop` or `max_tokens`)."""

    text: str
    finish: str = "stop"


def malformed() -> Raw:
    """An answer that is not valid JSON (a string never closed)."""
    return Raw('{"files": [{"path": "app/broken.py", "content": "x = 1')


def wrong_shape() -> Raw:
    """Valid JSON that is not a phase output."""
    return Raw('{"files": "not a list", "summary": 3}')


@dataclass
class Truncated(Step):
    """The phase's answer cut off at the output limit inside file number `complete`
    (0-based): the files before it are complete, that one is not."""

    complete: int = 1


@dataclass
class RateLimited(Step):
    """429 with a retry delay: in google.rpc.RetryInfo (Gemini) or the body, or in a
    Retry-After header when `header`."""

    retry_after_s: float = 1.0
    header: bool = False


@dataclass
class DailyQuota(Step):
    """429 for an exhausted per-day quota."""


@dataclass
class ServerFailure(Step):
    """A 5xx answer."""

    status: int = 500


@dataclass
class Rejected(Step):
    """The key is rejected (401 by default). The message quotes the key, as some servers
    do, so tests can check that Kiln never repeats it."""

    status: int = 401


def hostile(path: str) -> Reply:
    """A good answer with one more file at `path`."""
    return Reply(extra=[{"path": path, "content": "owned = True\n"}])


def huge(size: int = TEN_MB) -> Reply:
    """A good answer with one file of `size` bytes, streamed in 1 MB pieces."""
    return Reply(
        extra=[{"path": "app/huge.py", "content": "#" * size}],
        chunks=max(1, size // (1024 * 1024)),
    )


# ---------------------------------------------------------------------------------------
# What a scripted answer turns into, before the wire format
# ---------------------------------------------------------------------------------------


@dataclass
class TextAnswer:
    """A streamed answer: its pieces, how it ends, and the pause between pieces."""

    pieces: list[str]
    finish: str  # "stop" | "max_tokens"
    delay_s: float = 0.0


@dataclass
class ErrorAnswer:
    """An error status: `kind` is rate_limited, daily_quota, server or rejected."""

    kind: str
    status: int
    retry_after_s: float | None = None
    header: bool = False


@dataclass
class Call:
    """One request the fake received."""

    phase: str
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: dict[str, Any]
    prompt: str
    system: str
    status: int = 200
    started: float = 0.0
    finished: float = 0.0

    @property
    def seconds(self) -> float:
        """How long the fake spent on this request (scripted delays included)."""
        return max(0.0, self.finished - self.started)


@dataclass
class Response:
    """What the ASGI app sends: a whole body or a stream of SSE bytes."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: Callable[[], AsyncIterator[bytes]] | None = None


_PHASE = re.compile(r"^## Phase: (\w+)", re.MULTILINE)
_ENTITIES = re.compile(r"^Entities: (.+)$", re.MULTILINE)
_DONE = re.compile(r"^Already saved from this phase[^:]*: (.+)$", re.MULTILINE)


def snake(name: str) -> str:
    """`OrderLine` → `order_line`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def default_files(phase: str, entities: list[str]) -> list[dict[str, Any]]:
    """The files a good answer of the fake writes in a phase (Python that compiles)."""
    names = [snake(e) for e in entities] or ["item"]
    if phase == "plan":
        return [
            {"path": "PLAN.md", "content": "# Plan\n\n" + "".join(f"- {n}\n" for n in names)},
            {"path": "pyproject.toml", "content": '[project]\nname = "fake"\nversion = "0.1.0"\n'},
            {"path": "app/__init__.py", "content": '"""The generated app."""\n'},
        ]
    if phase == "models":
        return [
            {"path": "app/models/__init__.py", "content": '"""Models."""\n'},
            *(
                {
                    "path": f"app/models/{n}.py",
                    "content": f'"""The {n} model."""\n\n\nclass {n.title().replace("_", "")}:\n'
                    "    name: str = ''\n",
                }
                for n in names
            ),
        ]
    if phase == "schemas":
        return [
            {"path": "app/schemas/__init__.py", "content": '"""Schemas."""\n'},
            *(
                {
                    "path": f"app/schemas/{n}.py",
                    "content": f'"""Schemas of {n}."""\n\nFIELDS = ("name",)\n',
                }
                for n in names
            ),
        ]
    if phase == "api":
        return [
            {"path": "app/api/__init__.py", "content": '"""Routes."""\n'},
            *(
                {
                    "path": f"app/api/{n}.py",
                    "content": f'"""Routes of {n}."""\n\n\ndef list_{n}() -> list:\n'
                    "    return []\n",
                }
                for n in names
            ),
        ]
    if phase == "tests":
        return [
            {"path": "tests/__init__.py", "content": ""},
            *(
                {
                    "path": f"tests/test_{n}.py",
                    "content": f"def test_{n}() -> None:\n    assert True\n",
                }
                for n in names
            ),
        ]
    if phase == "docs":
        return [
            {"path": "README.md", "content": "# Fake\n\n" + "".join(f"- {n}\n" for n in names)},
            {"path": "docs/api.md", "content": "# API\n\n" + "".join(f"- /{n}\n" for n in names)},
        ]
    return []


def split(text: str, pieces: int) -> list[str]:
    """`text` in `pieces` nearly equal parts (at least one)."""
    pieces = max(1, min(pieces, len(text) or 1))
    size = -(-len(text) // pieces) or 1
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


# ---------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------


class FakeLLMServer:
    """The shared part of a fake LLM API; subclasses implement `handle` for a wire format.

    `key` is the API key the fake expects (and quotes in its 401 messages); `provider` is
    the name of the Kiln provider that talks to it.
    """

    provider = ""

    def __init__(self, key: str = "fake-llm-key-0123456789") -> None:
        self.key = key
        self.url = ""
        self.calls: list[Call] = []
        self._script: dict[str, list[Step]] = {}
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def env(self) -> dict[str, str]:
        """The settings (environment variables) that point Kiln's provider at this fake."""
        raise NotImplementedError

    # -- the script --------------------------------------------------------------------

    def on(self, phase: str, *steps: Step) -> Self:
        """Script `phase` ("*" for every phase without its own script)."""
        with self._lock:
            self._script[phase] = list(steps)
        return self

    def next_step(self, phase: str) -> Step:
        """The phase's next step (the last one repeats; a good Reply when unscripted)."""
        with self._lock:
            steps = self._script.get(phase) or self._script.get("*")
            if not steps:
                return Reply()
            return steps.pop(0) if len(steps) > 1 else steps[0]

    def calls_for(self, phase: str) -> list[Call]:
        """The requests received for one phase, in order."""
        return [c for c in self.calls if c.phase == phase]

    def answer(self, step: Step, prompt: str) -> TextAnswer | ErrorAnswer:
        """What a step means for this prompt, before the wire format."""
        phase = phase_of(prompt)
        if isinstance(step, RateLimited):
            return ErrorAnswer("rate_limited", 429, step.retry_after_s, step.header)
        if isinstance(step, DailyQuota):
            return ErrorAnswer("daily_quota", 429)
        if isinstance(step, ServerFailure):
            return ErrorAnswer("server", step.status)
        if isinstance(step, Rejected):
            return ErrorAnswer("rejected", step.status)
        if isinstance(step, Raw):
            return TextAnswer(split(step.text, 2), step.finish)
        done = set(done_of(prompt))
        files = [f for f in default_files(phase, entities_of(prompt)) if f["path"] not in done]
        if isinstance(step, Truncated):
            number = len(done)
            while len(files) <= step.complete:
                number += 1
                files.append({"path": f"app/filler_{number}.py", "content": "FILLER = 1\n" * 50})
            head = ", ".join(json.dumps(f) for f in files[: step.complete])
            cut = json.dumps(files[step.complete])
            text = '{"files": [' + head + (", " if head else "") + cut[: len(cut) // 2]
            return TextAnswer(split(text, 3), "max_tokens")
        assert isinstance(step, Reply)
        if step.files is not None:
            files = list(step.files)
        output = {
            "files": files + step.extra,
            "deletions": step.deletions,
            "summary": f"The fake wrote the {phase} phase.",
        }
        return TextAnswer(split(json.dumps(output), step.chunks), "stop", step.delay_s)

    # -- serving -----------------------------------------------------------------------

    async def handle(self, call: Call) -> Response:
        """The response to one recorded request (set call.phase, prompt, system, status)."""
        raise NotImplementedError

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI application."""
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            parsed = json.loads(body) if body else {}
        except ValueError:
            parsed = {}
        call = Call(
            phase="",
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode(),
            headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
            body=parsed,
            prompt="",
            system="",
            started=time.monotonic(),
        )
        with self._lock:
            self.calls.append(call)
        response = await self.handle(call)
        call.status = response.status
        headers = [(k.encode(), v.encode()) for k, v in response.headers.items()]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if response.stream is None:
            await send({"type": "http.response.body", "body": response.body})
            call.finished = time.monotonic()
            return
        try:
            async for data in response.stream():
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            call.finished = time.monotonic()

    def start(self) -> Self:
        """Serve on a free 127.0.0.1 port in a background thread; `url` is set on return."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            interface="asgi3",
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake LLM server did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        """Stop serving (open streams are cut after a second)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def phase_of(prompt: str) -> str:
    """The phase a prompt asks for ("" when it names none)."""
    match = _PHASE.search(prompt)
    return match.group(1) if match else ""


def entities_of(prompt: str) -> list[str]:
    """The entity names a prompt lists."""
    match = _ENTITIES.search(prompt)
    return [e.strip() for e in match.group(1).split(",")] if match else []


def done_of(prompt: str) -> list[str]:
    """The files a continuation prompt says are already saved."""
    match = _DONE.search(prompt)
    return [p.strip() for p in match.group(1).split(",")] if match else []


async def paced(pieces: list[bytes], delay_s: float) -> AsyncIterator[bytes]:
    """The pieces, `delay_s` apart."""
    for index, piece in enumerate(pieces):
        if index and delay_s:
            await asyncio.sleep(delay_s)
        yield piece


# ---------------------------------------------------------------------------------------
# For tests that drive a provider directly
# ---------------------------------------------------------------------------------------


class RecordingReporter:
    """A Reporter that records every report (with the time it came) and can be cancelled."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, float, dict[str, Any]]] = []
        self.cancel = False
        self._changed = asyncio.Event()

    def _record(self, kind: str, fields: dict[str, Any]) -> None:
        self.reports.append((kind, time.monotonic(), fields))
        self._changed.set()

    async def wait_for(self, kind: str) -> None:
        """Return once a report of this kind has come."""
        while not self.of(kind):
            self._changed.clear()
            await self._changed.wait()

    async def progress(
        self, *, bytes_received: int = 0, tokens_received: int = 0, message: str = ""
    ) -> None:
        """Record a progress report (unthrottled)."""
        self._record(
            "progress", {"bytes_received": bytes_received, "tokens_received": tokens_received}
        )

    async def llm_called(self, call: LlmCall) -> None:
        """Record one call (its fields)."""
        self._record("llm_called", msgspec.structs.asdict(call))

    async def retrying(self, **fields: Any) -> None:
        """Record an announced retry."""
        self._record("retrying", fields)

    def cancelled(self) -> bool:
        """True once the test sets `cancel`."""
        return self.cancel

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The fields of every report of one kind, in order."""
        return [fields for k, _, fields in self.reports if k == kind]


SCHEMA = ProjectSchema(
    entities=[
        Entity(name="Product", fields=[Field(name="title", type="string")]),
        Entity(name="OrderLine", fields=[Field(name="quantity", type="integer")]),
    ]
)
MODEL_FILES = ["app/models/__init__.py", "app/models/order_line.py", "app/models/product.py"]
"""The files the fake writes in the models phase of SCHEMA, sorted."""


def phase_request(phase: str = "models", **changes: Any) -> PhaseRequest:
    """A request for one phase of a new project of SCHEMA."""
    request = PhaseRequest(
        generation_id="gen-1",
        project_name="shop",
        phase=phase,
        plan=list(PHASES),
        kind="create",
        prompt="a small shop",
        schema=SCHEMA,
        files={},
        parent_files={},
    )
    return msgspec.structs.replace(request, **changes) if changes else request
