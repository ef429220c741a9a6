"""Child processes of the bench: started in their own session, measured from /proc, and
stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_bytes(pid: int) -> int:
    """The resident set size of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM one process we started, SIGKILL it if it does not exit in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class CpuMeter:
    """CPU used by a process between `start()` and `stop()`, as a fraction of one core."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._cpu = 0.0
        self._at = 0.0

    def start(self) -> CpuMeter:
        self._cpu = cpu_seconds(self.pid)
        self._at = time.monotonic()
        return self

    def stop(self) -> float:
        try:
            used = cpu_seconds(self.pid) - self._cpu
        except OSError:  # it has exited
            return float("nan")
        return used / max(time.monotonic() - self._at, 1e-9)
