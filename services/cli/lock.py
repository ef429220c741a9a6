"""The data directory belongs to one `kiln up` at a time.

`kiln up` holds an exclusive `fcntl` lock on `<data dir>/kiln-up.lock` for as long as it
runs; the kernel releases it when the process ends, however it ends (SIGKILL included), so
there is never a stale lock to clear by hand. The file holds the holder's pid, to name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_NAME = "kiln-up.lock"


class DataDirInUse(SystemExit):
    """Another live process holds the data directory."""


def hold_data_dir(data_dir: Path) -> IO[str]:
    """Lock `data_dir` for this process; keep the returned file open for as long as it is
    used. DataDirInUse (a clear message, exit code 1) when another process holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DataDirInUse(
            f"kiln up: the data directory {data_dir} is in use by another `kiln up` "
            f"(pid {holder}); stop that one first, or give this one another --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
