"""Shared by the verifier's tests: tiny projects, the sandbox they run in, host snapshots;
a verifier service answering one command; whole generations through the stack with a
scripted provider."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from contracts import streams, subjects
from contracts.codec import content_sha256, encode
from contracts.events import FileWritten, GenerationRequested, utc_now
from contracts.phases import GeneratedFile, PhaseOutput
from contracts.verification import (
    VerifyRequested,
    VerifyResult,
    decode_verify_result,
    request_msg_id,
)
from services.common.eventwriter import GenerationWriter
from services.common.settings import Settings
from services.orchestrator.providers.base import PhaseRequest, Reporter
from services.verifier.runtime import load_runtime
from services.verifier.sandbox import Limits, Sandbox
from services.verifier.service import VerifierService
from tests.support.processes import ServiceProcess
from tests.support.stack import Stack
from tests.support.waiting import eventually

PYPROJECT = """[project]
name = "hostile"
version = "0.1.0"
dependencies = []

[tool.pytest.ini_options]
testpaths = ["tests"]
asyncio_default_fixture_loop_scope = "function"
"""
# Small limits so that a hostile run meets them in seconds. The wall clock is generous:
# on a loaded machine starting pytest alone can take several seconds, and only the tests
# about the deadline (DEADLINE_LIMITS) should ever see it.
LIMITS = Limits(
    wall_s=60.0,
    cpu_s=10,
    memory_bytes=1024 * 1024 * 1024,
    processes=32,
    disk_bytes=32 * 1024 * 1024,
)
# For the tests about the wall-clock deadline only: a run that never ends is killed at 4 s.
DEADLINE_LIMITS = dataclasses.replace(LIMITS, wall_s=4.0)
SECRETS = {
    "GEMINI_API_KEY": "gemini-" + "verifier-test-secret",
    "KILN_SECRET": "kiln-" + "verifier-test-secret",
    "NATS_URL": "nats://verifier-test-secret@127.0.0.1:4222",
}


def project(test_source: str, **extra: str) -> dict[str, str]:
    """A project whose only test module is `test_source`."""
    return {
        "pyproject.toml": PYPROJECT,
        "tests/__init__.py": "",
        "tests/test_it.py": textwrap.dedent(test_source).lstrip(),
        **extra,
    }


# A fork bomb: it must meet the sandbox's process limit (its test fails, saying after
# how many children), not exhaust the host.
FORK_BOMB = project("""
    import os, time

    def test_bomb():
        children = 0
        try:
            while True:
                if os.fork() == 0:
                    while True:
                        try:
                            os.fork()
                        except OSError:
                            time.sleep(0.05)
                children += 1
        except OSError as exc:
            raise AssertionError(f"fork refused after {children}: {exc}")
""")


def make_sandbox(limits: Limits = LIMITS, slots: int = 1) -> Sandbox:
    """The real sandbox with the real verify runtime."""
    return Sandbox(load_runtime(), limits, slots=slots)


def host_snapshot(paths: list[Path]) -> dict[Path, tuple[int, int] | None]:
    """(size, mtime_ns) of each path, None when absent: what a run must not change."""
    state: dict[Path, tuple[int, int] | None] = {}
    for path in paths:
        try:
            st = os.stat(path)
            state[path] = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            state[path] = None
    return state


def outside_paths() -> list[Path]:
    """Where a hostile project tries to write, seen from the host."""
    return [Path("/tmp/x"), Path("/x"), Path("/sandbox"), Path.home() / ".bashrc"]


# -- a verifier service, and whole generations through the stack -------------------------


async def write_generation(js: JetStreamContext, files: dict[str, str]) -> tuple[str, str, int]:
    """A generation whose log holds `files`; (project id, generation id, last seq)."""
    project_id, generation_id = str(uuid.uuid4()), str(uuid.uuid4())
    writer = GenerationWriter(js, project_id, generation_id, source="test")
    await writer.emit(GenerationRequested, owner="alice", project_name="hostile", version=1)
    for path, content in files.items():
        await writer.emit(
            FileWritten,
            path=path,
            content=content,
            sha256=content_sha256(content),
            size=len(content.encode()),
            phase="tests",
        )
    return project_id, generation_id, writer.last_seq


async def request(js: JetStreamContext, project_id: str, generation_id: str, upto: int) -> None:
    """Ask for round 0 of the version at `upto`."""
    command = VerifyRequested(
        generation_id=generation_id, project_id=project_id, round=0, upto_seq=upto, at=utc_now()
    )
    await js.publish(
        subjects.VERIFY_REQUESTS,
        encode(command),
        headers={"Nats-Msg-Id": request_msg_id(generation_id, 0)},
    )


async def result_of(js: JetStreamContext, generation_id: str, timeout: float = 90) -> VerifyResult:
    """The result of round 0, once it is published."""
    subject = subjects.verify_result_subject(generation_id, 0)

    async def published() -> VerifyResult | None:
        with contextlib.suppress(NotFoundError):
            msg = await js.get_last_msg(streams.VERIFY_RESULTS_STREAM, subject)
            return decode_verify_result(msg.data)
        return None

    return await eventually(published, timeout, 0.2, what=f"the verify result on {subject}")


async def verify_once(
    settings: Settings, js: JetStreamContext, project_id: str, generation_id: str, upto: int
) -> tuple[VerifierService, VerifyResult]:
    """Run a verifier service with `settings` until it has answered the command for the
    version at `upto`; the service (stopped) and its result."""
    stop = asyncio.Event()
    service = VerifierService(settings)
    task = asyncio.create_task(service.run(stop))
    try:
        await request(js, project_id, generation_id, upto)
        result = await result_of(js, generation_id)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    return service, result


NORMAL = {
    "pyproject.toml": PYPROJECT.replace('"hostile"', '"normal"'),
    "app/__init__.py": "",
    "app/calc.py": "def add(a: int, b: int) -> int:\n    return a + b\n",
    "tests/__init__.py": "",
    "tests/test_calc.py": (
        "from app.calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    ),
}


class ScriptedProvider:
    """Writes the project scripted for the generation's project name in its first phase,
    and nothing after; the name `normal` gets a small project whose one test passes."""

    name = "offline"

    def __init__(self, projects: dict[str, dict[str, str]]) -> None:
        self.projects = {"normal": NORMAL, **projects}

    async def run_phase(self, request: PhaseRequest, reporter: Reporter) -> PhaseOutput:
        if request.phase != request.plan[0].name:
            return PhaseOutput(summary="nothing more")
        files = self.projects[request.project_name]
        return PhaseOutput(
            files=[GeneratedFile(path, content) for path, content in files.items()],
            summary="scripted",
        )


@dataclass
class Generation:
    """What one generation's log and status said."""

    status: dict[str, Any]
    verify: list[tuple[str, dict[str, Any]]]
    result: VerifyResult
    events: list[str] = field(default_factory=list)

    @property
    def completed(self) -> dict[str, Any]:
        [(kind, data)] = [v for v in self.verify if v[0] != "verify.started"]
        assert kind == "verify.completed", self.verify
        return data

    def failure(self, test: str) -> str:
        """The message of the failing test whose id ends with `test`."""
        found = [f for f in self.completed["failures"] if f["test_id"].endswith(test)]
        assert found, self.completed["failures"]
        return str(found[0]["message"])


async def stored_result(nc: Client, generation_id: str) -> VerifyResult:
    """The verifier's own answer for round 0, from the results stream."""
    msg = await nc.jetstream().get_last_msg(
        streams.VERIFY_RESULTS_STREAM, subjects.verify_result_subject(generation_id, 0)
    )
    return decode_verify_result(msg.data or b"")


async def generate(stack: Stack, nc: Client, project_name: str) -> Generation:
    """Create a generation of the scripted project `project_name` and read it to its end."""
    accepted = await stack.create(project_name=project_name)
    events = await stack.events(accepted["stream_url"], timeout=120)
    status = await stack.wait_status(accepted["generation_id"], "completed", "failed")
    assert status["status"] == "completed", status
    verify = [(e.type, e.data) for e in events if e.type.startswith("verify.")]
    assert [t for t, _ in verify][:1] == ["verify.started"] and len(verify) == 2, verify
    result = await stored_result(nc, accepted["generation_id"])
    return Generation(status, verify, result, [e.type for e in events])


async def wait_log(process: ServiceProcess, text: str, timeout: float = 60) -> None:
    """Wait until the service process has logged `text` (failing if it exits first)."""

    def logged() -> bool:
        assert process.process.poll() is None, process.log[-3000:]
        return text in process.log

    await eventually(logged, timeout, 0.1, what=lambda: f"{text!r} in {process.log[-2000:]}")
