"""What a scenario runs against, on loopback: its own nats-server (a fresh store in a
temporary directory), a migrated SQLite file, and Kiln's services as child processes with
Kiln's default settings. Everything started is stopped by PID at the end, even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from bench.procs import stop_process
from services.common.broker import ensure_streams_when_ready
from services.common.embedded_nats import EmbeddedNats, NatsCluster, free_port
from services.gateway.tokens import TokenSigner

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-" + secrets.token_hex(8)
USER = "bench"
API_KEY = "bench-key-" + secrets.token_hex(8)
EXTRA_USERS = 8
TOKEN_TTL_S = 3600.0


def api_keys() -> dict[str, str]:
    """The bench's users and their keys (several, so B6 stays under the per-key rate limit)."""
    keys = {USER: API_KEY}
    for i in range(EXTRA_USERS):
        keys[f"{USER}{i}"] = f"{API_KEY}-{i}"
    return keys


def service_env(nats_url: str, database_url: str, data_dir: Path, port: int) -> dict[str, str]:
    """The environment of a Kiln service: the inherited one without any Kiln setting, plus
    only what must be set (where NATS and the database are, keys, the port)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KILN_", "NATS_", "GEMINI_", "GOOGLE_API"))
    }
    env.update(
        NATS_URL=nats_url,
        KILN_DATABASE_URL=database_url,
        KILN_DATA_DIR=str(data_dir),
        KILN_API_KEYS=",".join(f"{u}:{k}" for u, k in api_keys().items()),
        KILN_SECRET=SECRET,
        KILN_HOST="127.0.0.1",
        KILN_PORT=str(port),
        PYTHONPATH=str(REPO),
    )
    return env


def profiled(command: list[str], out: Path) -> list[str]:
    """`command` run under py-spy, which writes collapsed stacks to `out`."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return [str(py_spy), "record", "-f", "raw", "-r", "250", "-o", str(out), "--", *command]


def child_of(pid: int, timeout: float = 10.0) -> int:
    """The first child of a process (the program py-spy started)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} started no child")
        time.sleep(0.05)


class Stack:
    """nats-server, the read model and the Kiln services a scenario asks for."""

    def __init__(
        self,
        root: Path,
        *,
        gateway: bool = False,
        storage: bool = False,
        orchestrator: bool = False,
        verifier: bool = False,
        profile: bool = False,
        cluster: int = 0,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.settings = settings or {}
        """Kiln settings the services run with beyond the defaults (`KILN_VERIFY=false`)."""
        self.profile = profile
        self.replicas = max(cluster, 1)
        """Replicas of every stream: `cluster` nodes, each stream on all of them."""
        self.want = [
            name
            for name, on in (
                ("storage", storage),
                ("orchestrator", orchestrator),
                ("verifier", verifier),
                ("gateway", gateway),
            )
            if on
        ]
        self.broker: EmbeddedNats | NatsCluster = (
            NatsCluster(root / "nats", cluster) if cluster else EmbeddedNats(root / "nats")
        )
        self.port = free_port()
        self.database_path = root / "kiln.db"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.nc: Client | None = None
        self.tokens = TokenSigner(SECRET.encode(), TOKEN_TTL_S)

    @property
    def database_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.database_path}"

    @property
    def js(self) -> JetStreamContext:
        assert self.nc is not None
        return self.nc.jetstream()

    @property
    def nats_url(self) -> str:
        return self.broker.url

    def env(self) -> dict[str, str]:
        env = service_env(self.nats_url, self.database_url, self.root / "data", self.port)
        if self.replicas > 1:
            env["KILN_STREAM_REPLICAS"] = str(self.replicas)
        env.update(self.settings)
        return env

    def stream_path(self, generation_id: str, owner: str = USER) -> str:
        """The SSE path of a generation, with a token signed by the gateways' secret."""
        token, _ = self.tokens.issue(generation_id, owner)
        return f"/generations/{generation_id}/stream?token={token}"

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.broker.start)
        self.nc = await nats.connect(
            servers=self.nats_url.split(","), name="kiln-bench", pending_size=256 * 1024**2
        )
        await ensure_streams_when_ready(self.js, self.replicas)
        if self.want:
            from services.storage.db import migrate

            await asyncio.to_thread(migrate, self.database_url)
        for name in self.want:
            command = [sys.executable, "-m", "services.cli.main", name]
            if self.profile:
                command = profiled(command, self.root / f"{name}.pyspy")
            self.start_service(name, command=command)
        if "gateway" in self.want:
            await self.wait_ready()

    def start_service(self, name: str, *, command: list[str] | None = None) -> int:
        """Start `python -m services.cli.main <name>` (or `command`) as a child process."""
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed when the child ends
        self.processes[name] = subprocess.Popen(
            command or [sys.executable, "-m", "services.cli.main", name],
            env=self.env(),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self.processes[name].pid

    async def stop_service(self, name: str) -> None:
        """Stop one service (SIGTERM, then SIGKILL if it does not exit in time)."""
        await asyncio.to_thread(stop_process, self.processes.pop(name))

    def pid(self, name: str) -> int:
        """The PID of a service (under py-spy, of the profiled child)."""
        pid = self.processes[name].pid
        return child_of(pid) if self.profile else pid

    async def wait_ready(self, timeout: float = 60.0) -> None:
        url = f"http://127.0.0.1:{self.port}/readyz"
        deadline = time.monotonic() + timeout

        def ready() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        while time.monotonic() < deadline:
            process = self.processes["gateway"]
            if process.poll() is not None:
                raise RuntimeError(
                    f"the gateway exited with code {process.returncode}; see {self.root}/gateway.log"
                )
            if await asyncio.to_thread(ready):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the gateway was not ready within {timeout:.0f} s")

    async def stop(self) -> None:
        for name in reversed(list(self.processes)):
            if self.profile:
                # Stop the profiled service; py-spy then writes its profile and exits.
                with contextlib.suppress(Exception):
                    os.kill(self.pid(name), signal.SIGTERM)
                    await asyncio.to_thread(self.processes[name].wait, 30)
            await asyncio.to_thread(stop_process, self.processes[name])
        self.processes.clear()
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.close(), 5)
            except Exception:
                pass
            self.nc = None
        await asyncio.to_thread(self.broker.stop)
