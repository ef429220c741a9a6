"""A process is alive while it runs: a zombie and a reaped one are not."""

from __future__ import annotations

import os
import subprocess

from services.common.processes import is_zombie, pid_alive


def test_this_process_is_alive() -> None:
    assert pid_alive(os.getpid()) and not is_zombie(os.getpid())


def test_an_exited_child_is_not_alive_before_or_after_it_is_reaped() -> None:
    child = subprocess.Popen(["true"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert is_zombie(child.pid) and not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)
