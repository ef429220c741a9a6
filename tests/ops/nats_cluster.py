"""Three nats-server nodes on loopback as one JetStream cluster, for the failover tests.

Each node can be killed (SIGKILL) and restarted on its own store, and, when the cluster is
`partitionable`, cut off from the others while it keeps running: every route between two
nodes then goes through a TCP forwarder of its own (`RouteProxy`, one per direction), so
cutting a node's forwarders drops its routes and refuses new ones, while its clients stay
connected to it. (No iptables here, and network namespaces would move the node off
127.0.0.1; a forwarder per route needs neither root nor a change to the host.)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.js.errors import APIError

from contracts import streams
from services.common.broker import NOT_NOW
from services.common.embedded_nats import EmbeddedNats, free_port

NODES = 3
CLUSTER_NAME = "kiln-test"


def kiln_streams() -> list[str]:
    """Every stream Kiln makes at startup: its streams and its key-value buckets'."""
    names = [make().name for make in streams.ALL_STREAMS]
    return [str(n) for n in names] + [
        f"KV_{streams.VERSIONS_BUCKET}",
        f"KV_{streams.RUNS_BUCKET}",
        f"KV_{streams.PROVIDERS_BUCKET}",
    ]


class RouteProxy:
    """A TCP forwarder from a loopback port to one node's cluster port, in a thread of its
    own (the test's event loop blocks while services start; routes must not).

    Its port is bound when it is made and held until `close`: a port picked now and bound
    later could be taken meanwhile (CI saw "address already in use" when opening one).
    Cut, it accepts connections and closes them at once."""

    def __init__(self, target_port: int) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(100)
        self.port = int(self._socket.getsockname()[1])
        self.target_port = target_port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._forwarding = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._forwarding:
            writer.close()
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream}
        try:
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(upstream_reader, writer))
        finally:
            self._writers -= {writer, upstream}

    async def _open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, sock=self._socket)
        self._forwarding = True

    async def _cut(self) -> None:
        self._forwarding = False
        for writer in list(self._writers):
            writer.close()

    async def _close(self) -> None:
        await self._cut()
        if self._server is not None:
            self._server.close()
            self._server = None
        self._socket.close()

    def open(self) -> None:
        """Accept and forward connections."""
        self._call(self._open())

    def cut(self) -> None:
        """Drop every forwarded connection and refuse new ones."""
        self._call(self._cut())

    def close(self) -> None:
        """Cut, free the port, and end the thread."""
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class NatsCluster:
    """Three JetStream nodes named n0, n1, n2; client URLs in `url` (all of them) or per node."""

    def __init__(self, tmp_path: Path, *, partitionable: bool = False) -> None:
        cluster_ports = [free_port() for _ in range(NODES)]
        self.proxies: dict[tuple[int, int], RouteProxy] = {}
        if partitionable:
            self.proxies = {
                (i, j): RouteProxy(cluster_ports[j])
                for i in range(NODES)
                for j in range(NODES)
                if i != j
            }
        self.nodes: list[EmbeddedNats] = []
        for i in range(NODES):
            if partitionable:
                routes = [self.proxies[(i, j)].port for j in range(NODES) if j != i]
                # The route address a node gossips is one where nobody listens: every
                # route between two nodes is one of the configured, cuttable forwarders.
                advertise: int | None = free_port()
            else:
                routes = [cluster_ports[j] for j in range(NODES) if j != i]
                advertise = None
            self.nodes.append(
                EmbeddedNats(
                    tmp_path / f"n{i}",
                    server_name=f"n{i}",
                    cluster_name=CLUSTER_NAME,
                    cluster_port=cluster_ports[i],
                    routes=routes,
                    cluster_advertise=advertise,
                    monitor_port=free_port(),
                )
            )

    @property
    def url(self) -> str:
        """Every node's client URL, as NATS_URL takes them."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> EmbeddedNats:
        """The node of that server name."""
        return next(n for n in self.nodes if n.server_name == name)

    def start(self) -> NatsCluster:
        """Open the forwarders, start every node, and wait for JetStream to have a leader."""
        for proxy in self.proxies.values():
            proxy.open()
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        """Stop every node and forwarder."""
        for node in self.nodes:
            node.kill() if node.process and node.process.poll() is None else None
        for proxy in self.proxies.values():
            proxy.close()

    def cut(self, node: EmbeddedNats) -> None:
        """Cut the node off from the others (it keeps running, its clients stay on it)."""
        i = self.nodes.index(node)
        for (a, b), proxy in self.proxies.items():
            if i in (a, b):
                proxy.cut()

    def heal(self, node: EmbeddedNats) -> None:
        """Let the node's routes through again."""
        i = self.nodes.index(node)
        for (a, b), proxy in self.proxies.items():
            if i in (a, b):
                proxy.open()

    async def wait_ready(self, urls: str | None = None, timeout: float = 60) -> None:
        """Wait until JetStream answers account info through `urls` (default: all nodes)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                nc = await nats.connect((urls or self.url).split(","), connect_timeout=2)
                try:
                    await nc.jetstream().account_info()
                    return
                finally:
                    await nc.close()
            except (*NOT_NOW, APIError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def stream_info(self, stream: str, urls: str | None = None) -> Any:
        """The stream's info (config, state, cluster: leader and replicas)."""
        nc = await nats.connect((urls or self.url).split(","), connect_timeout=2)
        try:
            return await nc.jetstream(timeout=1).stream_info(stream)
        finally:
            await nc.close()

    async def leader(self, stream: str, urls: str | None = None) -> str | None:
        """The server name leading the stream, None while there is none."""
        with contextlib.suppress(*NOT_NOW, APIError, OSError):
            info = await self.stream_info(stream, urls)
            return info.cluster.leader if info.cluster else None
        return None

    async def serves_direct_gets(self, node: EmbeddedNats, stream: str) -> bool:
        """Whether the node's own replica of the stream answers direct gets (a follower
        joins the responders once it has caught up; routed interest is not counted)."""
        subject = f"$JS.API.DIRECT.GET.{stream}"
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(
                f"http://{node.host}:{node.monitor_port}/subsz",
                params={"subs": "true", "test": subject},
            )
        response.raise_for_status()
        subscriptions = response.json().get("subscriptions_list") or []
        return any(s.get("subject") == subject and s.get("qgroup") for s in subscriptions)

    async def node_state(self, node: EmbeddedNats) -> dict[str, tuple[int, int, int]]:
        """Each stream's (messages, first seq, last seq) as this node itself stores it
        (nats-server's /jsz monitoring endpoint, not the leader's answer)."""
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(
                f"http://{node.host}:{node.monitor_port}/jsz",
                params={"accounts": "true", "streams": "true"},
            )
        response.raise_for_status()
        states: dict[str, tuple[int, int, int]] = {}
        for account in response.json().get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                state = stream["state"]
                states[stream["name"]] = (
                    int(state["messages"]),
                    int(state["first_seq"]),
                    int(state["last_seq"]),
                )
        return states


@contextlib.contextmanager
def nats_cluster(tmp_path: Path, *, partitionable: bool = False) -> Iterator[NatsCluster]:
    """A started three-node cluster, stopped (by PID) afterwards."""
    cluster = NatsCluster(tmp_path, partitionable=partitionable)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
