"""A broker that answers nothing for a while, as a cluster electing a leader does: its
process stopped (SIGSTOP), its connections kept, then let go on (SIGCONT)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

from services.common.embedded_nats import EmbeddedNats


@contextlib.contextmanager
def frozen(server: EmbeddedNats) -> Iterator[None]:
    """`server` answers nothing inside the block; it goes on where it was after it."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
