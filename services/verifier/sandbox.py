"""The sandbox: one command run under bubblewrap, with limits, a deadline and capped output.

Each run sees a read-only system (`/usr` and the loader's links, a few files of `/etc`),
the verify runtime and the Python it is based on (read-only) and the project read-only at
`SOURCE`. A run that writes (the tests) gets one size-limited tmpfs, `SCRATCH`, holding the
project's copy (`WORKDIR`) and its temporary directory and home (`TEMP`, named by `TMPDIR`
and `HOME`); nothing else is writable, `/tmp` and `/dev/shm` included. It has its own
network namespace (nothing can connect, not even to 127.0.0.1), PID, IPC, UTS and cgroup
namespaces, an empty environment apart from what it needs, no capabilities, and dies with
the verifier.

Resource limits are set on the process before it executes bubblewrap (CPU seconds,
address space, processes, file size, open files). Linux does not count processes for
root, so a verifier running as root runs each sandbox as an unprivileged uid of its own
(one per verifier process and slot; `setpriv` drops to it inside, after bubblewrap has
mounted everything); a verifier that is not root runs bubblewrap unprivileged, in a user
namespace of its own, and its process limit counts its uid's other processes too.

The deadline is wall-clock: bubblewrap is killed (SIGKILL), which kills the sandbox's
PID 1 (`--die-with-parent`), and the kernel then kills every process of its PID
namespace, a child that ignores SIGTERM included. stdout and stderr are read while the
run goes on, keeping the head and the tail of each and counting what was dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.verifier.runtime import Runtime

SCRATCH = "/sandbox"
WORKDIR = "/sandbox/project"
TEMP = "/sandbox/tmp"
SOURCE = "/sandbox/source"
# Written in an argument, it becomes the path of a pipe the verifier reads (a report
# such as JUnit XML), apart from the run's own output.
REPORT = "@report@"
SYSTEM_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
)
REPORT_LIMIT = 16 * 1024 * 1024
KILL_DRAIN_S = 2.0


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot run here; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one run may use."""

    wall_s: float = 120.0
    cpu_s: int = 120
    memory_bytes: int = 2048 * 1024 * 1024
    processes: int = 64
    disk_bytes: int = 256 * 1024 * 1024
    open_files: int = 512
    output_bytes: int = 64 * 1024


class Capture:
    """A stream read up to a cap: its first and last bytes, and how many were dropped."""

    def __init__(self, limit: int) -> None:
        self.head_limit = limit // 2
        self.tail_limit = limit - self.head_limit
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        """Take one chunk."""
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self.tail.append(chunk)
        self.tail_size += len(chunk)
        while self.tail_size - len(self.tail[0]) >= self.tail_limit:
            self.dropped += len(self.tail[0])
            self.tail_size -= len(self.tail[0])
            self.tail.popleft()

    @property
    def total(self) -> int:
        """Every byte the stream carried."""
        return len(self.head) + self.tail_size + self.dropped

    def text(self) -> str:
        """The kept bytes as text, with a line saying how much was left out in between."""
        tail = b"".join(self.tail)
        excess = max(len(tail) - self.tail_limit, 0)
        tail, dropped = tail[excess:], self.dropped + excess
        middle = f"\n[… {dropped:,} bytes not kept …]\n".encode() if dropped else b""
        return (bytes(self.head) + middle + tail).decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class SandboxRun:
    """How one run ended and what it printed."""

    exit_code: int | None
    timed_out: bool
    stdout: str
    stderr: str
    output_bytes: int
    report: bytes
    duration_s: float

    @property
    def output(self) -> str:
        """stdout then stderr."""
        return self.stdout + (("\n" + self.stderr) if self.stderr.strip() else "")


class Sandbox:
    """Runs commands of a project in bubblewrap (or, only when told, without it)."""

    def __init__(
        self,
        runtime: Runtime,
        limits: Limits,
        *,
        slots: int = 1,
        uid_base: int = 61000,
        unsandboxed: bool = False,
        bwrap: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.limits = limits
        self.unsandboxed = unsandboxed
        self.bwrap = bwrap or shutil.which("bwrap") or "/usr/bin/bwrap"
        self.setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        self.as_root = os.geteuid() == 0
        self._slots: asyncio.Queue[int] = asyncio.Queue()
        for slot in range(max(slots, 1)):
            self._slots.put_nowait(slot)
        # Distinct per verifier process and slot, so one run's process limit is its own.
        self._uid_base = uid_base + 64 * (os.getpid() % 512)

    # -- checking that it can run -------------------------------------------------------

    async def probe(self) -> None:
        """Run a trivial command in the sandbox; SandboxUnavailable when that fails."""
        if self.unsandboxed:
            return
        if not _is_file(self.bwrap):
            raise SandboxUnavailable(
                "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap` (./kiln "
                "does it where it can), or set KILN_VERIFY_UNSANDBOXED_DEV_ONLY on a "
                "development machine only"
            )
        if self.as_root and not _is_file(self.setpriv):
            raise SandboxUnavailable("setpriv (util-linux) is needed to drop root in the sandbox")
        with tempfile.TemporaryDirectory(prefix="kiln-probe-") as source:
            os.chmod(source, 0o755)
            run = await self.run(
                [str(self.runtime.python), "-c", "import sys; print('ok', sys.prefix)"],
                Path(source),
                wall_s=30.0,
            )
        if run.exit_code != 0 or not run.stdout.startswith("ok"):
            raise SandboxUnavailable(
                f"bubblewrap cannot run here (exit {run.exit_code}): "
                f"{(run.stderr or run.stdout).strip()[-500:] or 'no output'}"
            )

    # -- one run ------------------------------------------------------------------------

    async def run(
        self,
        argv: Sequence[str],
        source: Path,
        *,
        writable: bool = False,
        wall_s: float | None = None,
    ) -> SandboxRun:
        """Run `argv` in the project at `source` (read-only) or in a writable copy of it.

        The working directory is the project. An argument holding `REPORT` names a pipe
        whose content comes back as `SandboxRun.report`.
        """
        slot = await self._slots.get()
        try:
            return await self._run(argv, source, writable, wall_s or self.limits.wall_s, slot)
        finally:
            self._slots.put_nowait(slot)

    async def _run(
        self, argv: Sequence[str], source: Path, writable: bool, wall_s: float, slot: int
    ) -> SandboxRun:
        report_r, report_w = os.pipe()
        os.set_inheritable(report_w, True)
        # The run reopens the pipe by its /proc path as its own (unprivileged) uid.
        os.fchmod(report_w, 0o622)
        report_path = f"/proc/self/fd/{report_w}"
        argv = [a.replace(REPORT, report_path) for a in argv]
        scratch = None
        try:
            if self.unsandboxed:
                scratch = tempfile.mkdtemp(prefix="kiln-verify-unsandboxed-")
                command, cwd, env = self._unsandboxed(argv, source, writable, Path(scratch))
            else:
                command, cwd, env = self._command(argv, source, writable, slot), None, _host_env()
            uid = self._uid_base + slot if self.as_root and not self.unsandboxed else None
            processes = self.limits.processes
            if uid is None:
                # Not root: the limit counts every process of this uid, the verifier's too.
                processes += _tasks_of(os.getuid())
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(report_w,),
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_limiter(self.limits, processes),
            )
            os.close(report_w)
            report_w = -1
            assert proc.stdout is not None and proc.stderr is not None
            stdout, stderr = Capture(self.limits.output_bytes), Capture(self.limits.output_bytes)
            readers = [
                asyncio.create_task(_drain(proc.stdout, stdout)),
                asyncio.create_task(_drain(proc.stderr, stderr)),
            ]
            report = Capture(REPORT_LIMIT * 2)
            report_reader = asyncio.create_task(_drain_fd(report_r, report))
            report_r = -1
            timed_out = False
            try:
                await asyncio.wait_for(proc.wait(), wall_s)
            except TimeoutError:
                timed_out = True
                _kill(proc.pid)
                await proc.wait()
            except asyncio.CancelledError:
                _kill(proc.pid)
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.wait())
                raise
            finally:
                _, pending = await asyncio.wait([*readers, report_reader], timeout=KILL_DRAIN_S)
                for task in pending:
                    task.cancel()
            duration = time.monotonic() - started
            return SandboxRun(
                exit_code=None if timed_out else proc.returncode,
                timed_out=timed_out,
                stdout=stdout.text(),
                stderr=stderr.text(),
                output_bytes=stdout.total + stderr.total,
                report=bytes(report.head) if not report.dropped else b"",
                duration_s=duration,
            )
        finally:
            for fd in (report_r, report_w):
                if fd >= 0:
                    os.close(fd)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    def _run_env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.runtime.bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": TEMP,
            "TMPDIR": TEMP,
            "USER": "sandbox",
            "LOGNAME": "sandbox",
            "LANG": "C.UTF-8",
            "VIRTUAL_ENV": str(self.runtime.path),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONHASHSEED": "0",
        }

    def _command(self, argv: Sequence[str], source: Path, writable: bool, slot: int) -> list[str]:
        """The bubblewrap command line of one run."""
        disk = str(self.limits.disk_bytes)
        cmd = [self.bwrap, "--die-with-parent", "--new-session"]
        if self.as_root:
            # Real root: no user namespace (its uid would still be root outside); setpriv
            # drops to an unprivileged uid once bubblewrap has mounted everything.
            cmd += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
            cmd += ["--unshare-cgroup-try"]
        else:
            cmd += ["--unshare-all", "--unshare-user", "--disable-userns"]
        cmd += ["--clearenv"]
        for key, value in self._run_env().items():
            cmd += ["--setenv", key, value]
        cmd += ["--ro-bind", "/usr", "/usr"]
        bound = [Path("/usr")]
        for name in SYSTEM_LINKS:
            path = Path("/") / name
            if path.is_symlink():
                cmd += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                cmd += ["--ro-bind", str(path), str(path)]
                bound.append(path)
        # /tmp stays a read-only directory (a runtime under it, a checkout there, is bound
        # below it); the scratch tmpfs comes before the project's bind, which lies in it.
        cmd += ["--perms", "0755", "--dir", "/tmp"]
        cmd += ["--dev", "/dev"]
        if writable:
            cmd += ["--perms", "0777", "--size", disk, "--tmpfs", SCRATCH]
            cmd += ["--perms", "0777", "--dir", WORKDIR, "--perms", "1777", "--dir", TEMP]
        # bubblewrap makes missing parents of a mount point 0700: each is made 0755 first.
        made: set[Path] = {Path("/tmp"), Path("/dev")}
        if writable:
            made.add(Path(SCRATCH))

        def parents_of(path: Path) -> list[str]:
            args = []
            for ancestor in reversed(path.parents[:-1]):
                if ancestor not in made:
                    made.add(ancestor)
                    args += ["--perms", "0755", "--dir", str(ancestor)]
            return args

        for etc in ETC_FILES:
            if os.path.exists(etc):
                cmd += [*parents_of(Path(etc)), "--ro-bind", etc, etc]
        for tree in (self.runtime.base_prefix.resolve(), self.runtime.path):
            if any(tree == b or b in tree.parents for b in bound):
                continue
            cmd += [*parents_of(tree), "--ro-bind", str(tree), str(tree)]
            bound.append(tree)
        cmd += [*parents_of(Path(SOURCE)), "--ro-bind", str(source), SOURCE]
        cmd += ["--proc", "/proc"]
        cmd += ["--remount-ro", "/", "--chdir", WORKDIR if writable else SOURCE]
        if self.as_root:
            uid = str(self._uid_base + slot)
            cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--"]
            cmd += [self.setpriv, "--reuid", uid, "--regid", uid, "--clear-groups"]
            cmd += ["--no-new-privs", "--inh-caps", "-all", "--bounding-set", "-all", "--"]
        else:
            cmd += ["--"]
        if writable:
            cmd += ["/bin/sh", "-c", 'cp -R "$0"/. . && exec "$@"', SOURCE]
        return cmd + list(argv)

    def _unsandboxed(
        self, argv: Sequence[str], source: Path, writable: bool, scratch: Path
    ) -> tuple[list[str], str, dict[str, str]]:
        """DEVELOPMENT ONLY: the same run without bubblewrap (limits and environment kept)."""
        cwd = source
        if writable:
            cwd = scratch / "project"
            shutil.copytree(source, cwd)
        tmp = scratch / "tmp"
        tmp.mkdir()
        env = self._run_env() | {"HOME": str(tmp), "TMPDIR": str(tmp)}
        return list(argv), str(cwd), env


def _is_file(path: str) -> bool:
    return os.path.isfile(path)


def _host_env() -> dict[str, str]:
    """bubblewrap's own environment: nothing of the verifier's (its PID 1 keeps it)."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def _limiter(limits: Limits, processes: int) -> Callable[[], None]:
    def set_limits() -> None:
        def cap(which: int, value: int) -> None:
            resource.setrlimit(which, (value, value))

        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        cap(resource.RLIMIT_AS, limits.memory_bytes)
        cap(resource.RLIMIT_NPROC, processes)
        cap(resource.RLIMIT_FSIZE, limits.disk_bytes)
        cap(resource.RLIMIT_NOFILE, limits.open_files)
        cap(resource.RLIMIT_CORE, 0)

    return set_limits


def _kill(pid: int) -> None:
    """SIGKILL bubblewrap (and its session): the sandbox's PID namespace dies with it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def _drain(stream: asyncio.StreamReader, capture: Capture) -> None:
    while chunk := await stream.read(65536):
        capture.feed(chunk)


async def _drain_fd(fd: int, capture: Capture) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        await _drain(reader, capture)
    finally:
        transport.close()


def _tasks_of(uid: int) -> int:
    """Processes and threads of one uid now (what RLIMIT_NPROC counts)."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            text = status.read_text()
            uid_line = next(line for line in text.splitlines() if line.startswith("Uid:"))
            if int(uid_line.split()[1]) == uid:
                threads = next(line for line in text.splitlines() if line.startswith("Threads:"))
                count += int(threads.split()[1])
    return count
