"""What a gateway process feels while it is attacked: its resident memory, read from
/proc, and the time a normal request takes meanwhile, on a connection of its own.

The figures are reported (printed, for `pytest -s`, and kept on the probe); tests assert on
memory and on answers, never on wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

MIB = 1024 * 1024


class Resident(Protocol):
    """A process whose memory can be read (`ServiceProcess`, or a bench's PID)."""

    def memory_bytes(self, field: str = "VmRSS") -> int:
        """A figure of /proc/<pid>/status, in bytes."""
        ...


@dataclass
class Probe:
    """RSS samples and the latencies of `GET /healthz`, taken every `every_s`."""

    gateway: Resident
    url: str
    every_s: float = 0.05
    baseline_rss: int = 0
    peak_rss: int = 0
    peak_kernel_queued: int = 0
    latencies_s: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def sample(self) -> int:
        """The gateway's RSS now (and the peaks so far are updated)."""
        rss = self.gateway.memory_bytes("VmRSS")
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_kernel_queued = max(self.peak_kernel_queued, kernel_send_queue(self.url))
        return rss

    @property
    def growth(self) -> int:
        """How far the gateway's RSS rose above its baseline during the attack."""
        return self.peak_rss - self.baseline_rss

    def report(self, attack: str) -> str:
        """One line of figures for the attack."""
        worst = max(self.latencies_s, default=float("nan"))
        ordered = sorted(self.latencies_s)
        median = ordered[len(ordered) // 2] if ordered else float("nan")
        line = (
            f"{attack}: gateway RSS {self.baseline_rss / MIB:.0f} MiB -> peak "
            f"{self.peak_rss / MIB:.0f} MiB (+{self.growth / MIB:.1f}), kernel send queues peak "
            f"{self.peak_kernel_queued / MIB:.1f} MiB; concurrent GET /healthz "
            f"median {median * 1000:.1f} ms, worst {worst * 1000:.1f} ms over "
            f"{len(self.latencies_s)} requests, statuses {sorted(set(self.statuses))}"
        )
        print(line)
        return line

    async def _run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:
            while not stop.is_set():
                self.sample()
                started = time.perf_counter()
                try:
                    response = await http.get("/healthz")
                    self.statuses.append(response.status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)
                self.latencies_s.append(time.perf_counter() - started)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every_s)
        self.sample()


def kernel_send_queue(url: str) -> int:
    """Bytes the kernel holds unsent on the server's side of every connection to `url`
    (the `tx_queue` column of /proc/net/tcp): what a gateway hands the kernel for clients
    that do not read."""
    port = int(url.rsplit(":", 1)[1])
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            total += int(fields[4].split(":")[0], 16)
    return total


@contextlib.asynccontextmanager
async def probing(gateway: Resident, url: str, every_s: float = 0.05) -> AsyncIterator[Probe]:
    """Probe the gateway for as long as the block runs (the attack goes inside it)."""
    probe = Probe(gateway, url, every_s)
    probe.baseline_rss = probe.sample()
    stop = asyncio.Event()
    task = asyncio.create_task(probe._run(stop))
    try:
        yield probe
    finally:
        stop.set()
        await task
