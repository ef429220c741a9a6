"""Kiln's services as separate processes (`python -m services.cli.main <service>`), the way
an operator runs them: each with its own environment and log file, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from services.common.embedded_nats import free_port
from tests.support.environment import process_env, service_env

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """One running service; its stderr goes to `log_path`."""

    def __init__(self, service: str, env: dict[str, str], log_path: Path) -> None:
        self.service = service
        self.env = env
        self.log_path = log_path
        with open(log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", service],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def log(self) -> str:
        """Everything the process has logged so far."""
        return self.log_path.read_text(errors="replace")

    def memory_bytes(self, field: str = "VmRSS") -> int:
        """A memory figure of the process from /proc/<pid>/status: `VmRSS` (resident now)
        or `VmHWM` (the most it has been resident)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise LookupError(f"{field} is not in /proc/{self.process.pid}/status")

    def wait_http(self, url: str, timeout: float = 60) -> None:
        """Wait until `url` answers 200 (the process must stay alive meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.service} exited early:\n{self.log[-3000:]}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.service} did not become ready at {url}:\n{self.log[-3000:]}")

    def signal(self, signum: int) -> None:
        """Send a signal to the process (not its group: a test aims at one service)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


class Processes:
    """Starts services with a shared base environment; stops them all at the end."""

    def __init__(self, tmp_path: Path, base_env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.base_env = process_env(base_env)
        self.started: list[ServiceProcess] = []

    def migrate(self) -> None:
        """Run `kiln migrate` against the configured database."""
        result = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "migrate"],
            cwd=ROOT,
            env=self.base_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def start(self, service: str, name: str | None = None, **env: str) -> ServiceProcess:
        """Start a service; `name` tells its log file apart from others of the same kind."""
        label = name or service
        process = ServiceProcess(service, {**self.base_env, **env}, self.tmp_path / f"{label}.log")
        self.started.append(process)
        return process

    def gateway(self, name: str = "gateway", **env: str) -> tuple[ServiceProcess, str]:
        """Start a gateway on a free port and wait until it is ready; returns it and its URL."""
        port = free_port()
        process = self.start("gateway", name, KILN_HOST="127.0.0.1", KILN_PORT=str(port), **env)
        url = f"http://127.0.0.1:{port}"
        process.wait_http(f"{url}/readyz")
        return process, url

    def stop_all(self) -> None:
        """Stop every process started, newest first."""
        for process in reversed(self.started):
            process.stop()


@contextlib.contextmanager
def lone_gateway(tmp_path: Path, nats_url: str, **env: str) -> Iterator[tuple[ServiceProcess, str]]:
    """One gateway process and nothing else (its database migrated), with `env` on top of
    the test's environment; it and its URL, stopped at the end."""
    group = Processes(tmp_path, service_env(tmp_path, nats_url))
    group.migrate()
    try:
        yield group.gateway(**env)
    finally:
        group.stop_all()
