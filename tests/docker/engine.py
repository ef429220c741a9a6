"""The Docker engine a docker test talks to: the one already running, or a dockerd this
module starts and stops again. One it starts makes no bridge of its own, writes no iptables
rule and turns on no forwarding (a compose network is a bridge of its own, removed with it;
published ports go through docker-proxy), keeps its state in the cache folder (images built
once are there next time) and its sockets in a folder of its own under /run; stopped, it
leaves no process, mount or folder there, and the host's network is checked to be as it
was (`HostNetwork`)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.waiting import eventually

RUN_DIR = Path("/run/kiln-docker")
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
# Network settings that dockerd changes when let: forwarding and the bridge netfilter hooks.
SYSCTLS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")
# What dockerd makes outside the folders it is given: its plugin folder under /run/docker
# and its identity key. Removed afterwards where they were not there before.
OUTSIDE = (Path("/run/docker"), Path("/etc/docker/key.json"))


class EngineUnavailable(Exception):
    """No Docker engine can run here; the message says why (the test is skipped with it)."""


@dataclass(frozen=True)
class HostNetwork:
    """What the host's network looks like: its links, iptables rules and forwarding."""

    links: tuple[str, ...]
    rules: dict[str, str]
    sysctls: dict[str, str]

    @classmethod
    def now(cls) -> HostNetwork:
        """The host's network as it is now (rules only where iptables is installed)."""
        links = subprocess.run(
            ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
        ).stdout
        rules = {}
        for tool in ("iptables-save", "ip6tables-save"):
            if shutil.which(tool):
                rules[tool] = subprocess.run(
                    [tool], capture_output=True, text=True, check=True
                ).stdout
        sysctls = {
            name: Path("/proc/sys", *name.split(".")).read_text().strip()
            for name in SYSCTLS
            if Path("/proc/sys", *name.split(".")).exists()
        }
        return cls(tuple(sorted(_link_name(line) for line in links.splitlines())), rules, sysctls)

    def changes_since(self, before: HostNetwork) -> list[str]:
        """What differs from `before`, in words (empty: nothing)."""
        changes = []
        if self.links != before.links:
            changes.append(f"links {before.links} became {self.links}")
        for tool in sorted(set(before.rules) | set(self.rules)):
            if _rules(before.rules.get(tool, "")) != _rules(self.rules.get(tool, "")):
                changes.append(f"{tool}:\n{before.rules.get(tool)}\nbecame\n{self.rules.get(tool)}")
        if self.sysctls != before.sysctls:
            changes.append(f"sysctls {before.sysctls} became {self.sysctls}")
        return changes


def _link_name(line: str) -> str:
    """`4: eth0: <…> …` → eth0 (a veth's `@peer` kept)."""
    return line.split(":", 2)[1].strip()


def _rules(saved: str) -> list[str]:
    """iptables-save's output without its comments and packet counters."""
    return [
        line.split(" [", 1)[0] if line.startswith(":") else line
        for line in saved.splitlines()
        if line and not line.startswith("#")
    ]


@dataclass
class Engine:
    """A Docker engine to run `docker` against; `started`: this test started it."""

    env: dict[str, str]
    started: bool
    log: Path | None = None
    steps: dict[str, float] = field(default_factory=dict)

    def docker(self, *args: str, timeout: float = 900) -> str:
        """Run `docker ARGS` against this engine; its output (CalledProcessError, with the
        output, if it fails)."""
        return run(["docker", *args], self.env, timeout=timeout)


def run(command: list[str], env: dict[str, str], *, timeout: float = 900) -> str:
    """Run a command, its stdout and stderr together as its output; CalledProcessError
    carrying that output when it fails."""
    done = subprocess.run(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, command, done.stdout)
    return done.stdout


def _answers(env: dict[str, str]) -> bool:
    """Whether the engine `env` points the docker CLI at answers."""
    probe = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return probe.returncode == 0


@contextlib.contextmanager
def docker_engine(cache: Path) -> Iterator[Engine]:
    """The Docker engine already running (DOCKER_HOST or the default socket), else a dockerd
    started here for the duration (one at a time: a lock in `cache`), stopped afterwards.
    EngineUnavailable says why there is none."""
    if shutil.which("docker") is None:
        raise EngineUnavailable("there is no docker CLI (Debian: apt-get install docker.io)")
    # The classic builder: BuildKit would fetch the Dockerfile's `# syntax=` frontend from a
    # registry.
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    if _answers(env):
        yield Engine(env, started=False)
        return
    if shutil.which("dockerd") is None:
        raise EngineUnavailable("no engine answers and there is no dockerd to start")
    if os.geteuid() != 0:
        raise EngineUnavailable("no engine answers and only root can start dockerd")
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "engine.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from _own_engine(cache, env)


def _own_engine(cache: Path, env: dict[str, str]) -> Iterator[Engine]:
    before = HostNetwork.now()
    made = [path for path in OUTSIDE if not path.exists()]
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    socket = RUN_DIR / "docker.sock"
    env = {**env, "DOCKER_HOST": f"unix://{socket}"}
    log = cache / "dockerd.log"
    command = [
        "dockerd",
        f"--host=unix://{socket}",
        f"--exec-root={RUN_DIR / 'exec'}",
        f"--pidfile={RUN_DIR / 'dockerd.pid'}",
        f"--data-root={cache / 'engine'}",
        "--bridge=none",
        "--iptables=false",
        "--ip-forward=false",
        "--ip-masq=false",
    ]
    with log.open("w") as output:
        daemon = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    engine = Engine(env, started=True, log=log)
    try:

        async def up() -> bool:
            if daemon.poll() is not None:
                raise EngineUnavailable(
                    f"dockerd exited at once ({daemon.returncode}): {_tail(log)}"
                )
            return await asyncio.to_thread(_answers, env)

        try:
            asyncio.run(eventually(up, START_TIMEOUT_S, 0.5, what="dockerd to answer"))
        except AssertionError:
            raise EngineUnavailable(
                f"dockerd did not answer within {START_TIMEOUT_S} s: {_tail(log)}"
            ) from None
        yield engine
    finally:
        _stop(daemon)
        for folder in (RUN_DIR, *made):
            _unmount_under(folder)
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
            else:
                folder.unlink(missing_ok=True)
    changes = HostNetwork.now().changes_since(before)
    assert not changes, "dockerd left the host's network changed:\n" + "\n".join(changes)


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the dockerd this module started (it stops its containers and its
    containerd), SIGKILL to its process group if it is still there after STOP_TIMEOUT_S."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()


def _unmount_under(folder: Path) -> None:
    """Unmount what is still mounted under `folder` (dockerd leaves its default network
    namespace mounted when it stops), deepest first."""
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(f"{folder}/")
    ]
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", point], check=False)


def _tail(log: Path, lines: int = 8) -> str:
    """The last lines of a log, on one line."""
    return " | ".join(log.read_text(errors="replace").splitlines()[-lines:])
