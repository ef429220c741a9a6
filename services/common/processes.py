"""Whether a process is still there, by pid (Linux's /proc)."""

from __future__ import annotations

import os
from pathlib import Path


def is_zombie(pid: int) -> bool:
    """True when `pid` has exited and waits to be reaped (or /proc cannot say)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def pid_alive(pid: int) -> bool:
    """True while process `pid` runs (a zombie has stopped running), whoever owns it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not is_zombie(pid)
