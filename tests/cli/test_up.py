"""One broker per store, one `kiln up` per data directory (#19 item 8), with real processes.

Before: SIGKILL of the `kiln up` process group left its nats-server (in its own session)
running as an orphan, and a second `kiln up` on the same `--data-dir` started another
nats-server on the same JetStream store.

And `kiln up` runs a verifier (#14 item 1): a generation under it is verified by one of its
child processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.embedded_nats import EmbeddedNats, servers_running
from services.common.embedded_nats import free_port as free_tcp_port
from tests.support import client as kiln
from tests.support.environment import process_env
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
UP = [sys.executable, "-m", "services.cli.main", "up"]

pytestmark = pytest.mark.timeout(300)


def brokers_on(data_dir: Path) -> list[int]:
    """The live nats-servers running on the data directory's store."""
    return servers_running(data_dir / "nats" / "kiln.conf")


class KilnUp:
    """`kiln up` as an operator starts it, in its own process group."""

    def __init__(self, data_dir: Path, log: Path, **settings: str) -> None:
        self.port = free_tcp_port()
        self.log = log
        env = process_env({"KILN_SECRET": "test-secret-not-for-production", **settings})
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [*UP, "--data-dir", str(data_dir), "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    async def ready(self) -> None:
        """Wait until its gateway answers /readyz."""

        async def answers() -> bool:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                async with httpx.AsyncClient() as client:
                    url = f"http://127.0.0.1:{self.port}/readyz"
                    return (await client.get(url, timeout=1)).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(answers, 120, 0.2, what="kiln up to become ready")

    def kill_group(self) -> None:
        """SIGKILL the whole process group, as a crash or `kill -9 -<pgid>` would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """Ctrl-C, the ordinary way to stop it."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill_group()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory; any broker still running on its store is ended after the test."""
    path = tmp_path / "data"
    yield path
    for pid in brokers_on(path):
        os.kill(pid, signal.SIGKILL)


async def test_a_killed_kiln_up_leaves_no_broker_and_a_second_one_is_refused(
    tmp_path: Path, data_dir: Path
) -> None:
    first = KilnUp(data_dir, tmp_path / "first.log")
    try:
        await first.ready()
        serving = brokers_on(data_dir)
        assert len(serving) == 1

        second = KilnUp(data_dir, tmp_path / "second.log")
        assert second.process.wait(60) == 1
        refusal = (tmp_path / "second.log").read_text()
        assert "in use by another `kiln up`" in refusal, refusal
        assert str(data_dir) in refusal and f"pid {first.process.pid}" in refusal
        assert brokers_on(data_dir) == serving

        first.kill_group()
        # The broker started in its own session dies with its parent, not orphaned.
        await eventually(lambda: not brokers_on(data_dir), 30, what="the orphaned broker to end")

        third = KilnUp(data_dir, tmp_path / "third.log")
        try:
            await third.ready()
            assert len(brokers_on(data_dir)) == 1
        finally:
            third.stop()
        assert third.process.returncode == 0, (tmp_path / "third.log").read_text()[-3000:]
        assert brokers_on(data_dir) == []
    finally:
        first.kill_group()


async def test_kiln_up_runs_a_verifier_that_verifies_each_version(
    tmp_path: Path, data_dir: Path
) -> None:
    # Issue #14 item 1: `kiln up` starts a verifier as its fourth service. The wait for a
    # verifier is long, so a slow start shows as a slow test, not as `verify.unavailable`.
    up = KilnUp(
        data_dir, tmp_path / "up.log", KILN_VERIFY_PICKUP="120", KILN_VERIFY_CONCURRENCY="1"
    )
    try:
        await up.ready()
        await eventually(
            lambda: "taking verify commands" in up.log.read_text(),
            120,
            0.2,
            what="the verifier of `kiln up` to take commands",
        )
        key = (data_dir / "dev-api-key").read_text().strip()
        async with kiln.connect(f"http://127.0.0.1:{up.port}", key) as http:
            accepted = await kiln.create(http, project_name="up")  # SCHEMA_ONE: one entity
            events = await kiln.read_events(http, accepted["stream_url"], timeout=180)
            status = await kiln.wait_status(http, accepted["generation_id"], timeout=30)
        children = _children_of(up.process.pid)
    finally:
        up.stop()
    log = (tmp_path / "up.log").read_text()
    assert up.process.returncode == 0, log[-3000:]

    verify = [(e.type, e.data) for e in events if e.type.startswith("verify.")]
    assert [t for t, _ in verify] == ["verify.started", "verify.completed"], (verify, log[-3000:])
    completed = verify[1][1]
    assert completed["verdict"] == "passed", completed
    assert completed["passed"] > 0 and completed["failed"] == completed["errors"] == 0
    # The verifier that answered is a child process of `kiln up`.
    assert int(completed["verifier"].rpartition(":")[2]) in children, (completed, children)
    assert status["status"] == "completed"
    assert status["verification"]["status"] == "passed"


def _children_of(pid: int) -> set[int]:
    """The PIDs of the live child processes of `pid`."""
    children: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def test_a_broker_left_running_on_the_store_is_stopped_before_another_starts(
    tmp_path: Path,
) -> None:
    # An orphan as an older `kiln up` left it: no parent-death signal, its own session.
    orphan = EmbeddedNats(tmp_path / "nats").start()
    assert orphan.process is not None
    left = orphan.process
    config = orphan.config_path
    assert servers_running(config) == [left.pid]

    successor = EmbeddedNats(tmp_path / "nats").start()
    try:
        assert left.poll() is not None, "the broker left on the store was not stopped"
        assert successor.process is not None
        assert servers_running(config) == [successor.process.pid]
        log = (tmp_path / "nats" / "nats-server.log").read_text()
        assert "Server is ready" in log.rpartition("Starting nats-server")[2]
    finally:
        successor.stop()
    assert servers_running(config) == []
