"""`kiln up`: the whole of Kiln on one machine, as one process tree.

An embedded nats-server (unless NATS_URL is set), SQLite in the data directory (unless
KILN_DATABASE_URL is set), migrations, a development API key (unless KILN_API_KEYS is
set), then the orchestrator, storage, verifier and gateway as child processes, restarted if one
dies. Ctrl-C stops everything it started.

One `kiln up` per data directory: it holds the directory's lock for its whole life (a
second one refuses to start), and its nats-server dies with it even when it is killed
(a server an older crash left on the store is stopped before a new one starts).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from services.cli.lock import hold_data_dir
from services.common.embedded_nats import EmbeddedNats
from services.common.logs import get_logger, setup_logging
from services.common.settings import Settings

log = get_logger(__name__)

SERVICES = ("storage", "orchestrator", "verifier", "gateway")


def development_key(data_dir: Path) -> str:
    """The development API key kept in the data directory (made on first use)."""
    path = data_dir / "dev-api-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("kiln_dev_" + secrets.token_urlsafe(24))
    return path.read_text().strip()


def _wait_ready(
    url: str,
    processes: dict[str, subprocess.Popen[bytes]],
    stopping: Callable[[], bool],
    timeout: float = 60.0,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stopping():
            return  # asked to stop while starting: the services' exits are expected
        for name, process in processes.items():
            if process.poll() is not None:
                raise SystemExit(
                    f"kiln up: the {name} service exited with code {process.returncode}; see the log above"
                )
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"kiln up: the gateway did not become ready at {url} within {timeout:.0f} s")


def up(settings: Settings, nats_port: int | None) -> None:
    """Bring Kiln up and keep it up until interrupted."""
    setup_logging(settings.log_format, settings.log_level, settings.secret_values())
    data_dir = settings.data_path.resolve()
    lock = hold_data_dir(data_dir)  # held open until this function returns
    env = dict(os.environ)
    env["KILN_DATA_DIR"] = str(data_dir)
    env["KILN_HOST"], env["KILN_PORT"] = settings.host, str(settings.port)

    broker: EmbeddedNats | None = None
    if not settings.nats_url:
        broker = EmbeddedNats(data_dir / "nats", port=nats_port, die_with_parent=True).start()
        env["NATS_URL"] = broker.url
    database_url = settings.effective_database_url
    env["KILN_DATABASE_URL"] = database_url
    dev_key = None
    if not settings.api_keys:
        dev_key = development_key(data_dir)
        env["KILN_API_KEYS"] = f"dev:{dev_key}"

    from services.storage.db import migrate

    migrate(database_url)

    processes: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def start(name: str) -> None:
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", name], env=env, stdin=subprocess.DEVNULL
        )

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for name in SERVICES:
            start(name)
        base = (
            settings.public_url
            or f"http://{'127.0.0.1' if settings.host in ('0.0.0.0', '::') else settings.host}:{settings.port}"
        )
        _wait_ready(
            f"http://127.0.0.1:{settings.port}/readyz"
            if settings.host in ("0.0.0.0", "::")
            else f"{base}/readyz",
            processes,
            lambda: stopping,
        )
        lines = [
            "",
            f"  Kiln is up:  {base}/",
        ]
        if dev_key:
            lines += [
                f"  API key:     {dev_key}",
                f"  Open (signs you in): {base}/#key={dev_key}",
            ]
        lines += [
            f"  NATS:        {env.get('NATS_URL', settings.nats_url)}",
            f"  Database:    {database_url}",
            f"  API docs:    {base}/schema/openapi.json",
            "  Stop with Ctrl-C.",
            "",
        ]
        if not stopping:
            print("\n".join(lines), flush=True)
        while not stopping:
            time.sleep(0.2)
            for name, process in list(processes.items()):
                if process.poll() is not None and not stopping:
                    log.warning(
                        "The {service} service exited with code {code}; restarting it",
                        service=name,
                        code=process.returncode,
                    )
                    start(name)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in processes.values():
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if broker is not None:
            broker.stop()
        log.info("Kiln stopped")
        lock.close()
