"""Load-generator processes and how the bench drives them.

A worker is `python -m <module> <config.json>`. It prints one JSON object per line on
stdout: `{"loaded": true}` once started, whatever it reports on the way (`{"ready": t}`),
and `{"done": true}` after writing its result to `config["result_file"]`. The bench
writes `go` and `stop` lines on its stdin. Workers run on uvloop when it is installed:
the client must not be the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.procs import cpu_seconds

REPO = Path(__file__).resolve().parent.parent.parent


class Control:
    """The worker's side: lines from the bench on stdin, reports on stdout."""

    def __init__(self) -> None:
        self.reader = asyncio.StreamReader()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self.reader), os.fdopen(0, "rb", buffering=0)
        )

    async def wait(self, word: str) -> None:
        """Block until the bench writes `word`."""
        while True:
            line = await self.reader.readline()
            if not line:
                raise SystemExit("the bench went away")
            if line.strip().decode() == word:
                return

    def send(self, report: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()

    @staticmethod
    def main(
        run: Callable[[Control, dict[str, Any]], Awaitable[dict[str, Any]]], config_file: str
    ) -> None:
        config = json.loads(Path(config_file).read_text())

        async def runner() -> None:
            control = Control()
            await control.start()
            control.send({"loaded": True})
            result = await run(control, config)
            await asyncio.to_thread(Path(config["result_file"]).write_text, json.dumps(result))
            control.send({"done": True})

        try:
            import uvloop

            uvloop.run(runner())
        except ImportError:
            asyncio.run(runner())


class Worker:
    """The bench's side: one load-generator process."""

    counter = 0

    def __init__(
        self, module: str, config: dict[str, Any], root: Path, *, profile: bool = False
    ) -> None:
        Worker.counter += 1
        self.name = f"{module.rsplit('.', 1)[-1]}-{Worker.counter}"
        self.module = module
        self.root = root
        self.config_file = root / f"{self.name}.json"
        self.result_file = root / f"{self.name}.result.json"
        self.log_file = root / f"{self.name}.log"
        self.config = {**config, "result_file": str(self.result_file)}
        self.env: dict[str, str] = dict(os.environ)
        self.profile = profile
        self.process: asyncio.subprocess.Process | None = None
        self.reports: list[dict[str, Any]] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout: float = 30.0) -> Worker:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(self.config))
        log = await asyncio.to_thread(self.log_file.open, "ab")
        with log:
            command = [sys.executable, "-m", self.module, str(self.config_file)]
            if self.profile:  # py-spy runs the worker and writes its samples beside its log
                py_spy = str(Path(sys.executable).parent / "py-spy")
                out = str(self.root / f"{self.name}.pyspy")
                command = [py_spy, "record", "-f", "raw", "-r", "250", "-o", out, "--", *command]
            self.process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=REPO,
                env={**self.env, "PYTHONPATH": str(REPO)},
                start_new_session=True,
            )
        await self.expect("loaded", timeout)
        return self

    async def expect(self, key: str, timeout: float) -> dict[str, Any]:
        """The next report that has `key`."""
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(self.process.stdout.readline(), max(left, 0.01))
            except TimeoutError:
                raise RuntimeError(
                    f"load generator {self.name} did not report {key!r} within {timeout:.0f} s"
                    f"{self._tail()}"
                ) from None
            if not line:
                await self.process.wait()
                raise RuntimeError(
                    f"load generator {self.name} exited with code {self.process.returncode}"
                    f"{self._tail()}"
                )
            if not line.startswith(b"{"):
                continue  # py-spy's own messages, when profiling
            report = json.loads(line)
            self.reports.append(report)
            if key in report:
                return dict(report)

    def _tail(self) -> str:
        try:
            text = self.log_file.read_text()[-2000:]
        except OSError:
            return ""
        return f"; its log ends with:\n{text}" if text else ""

    async def send(self, word: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(word.encode() + b"\n")
        await self.process.stdin.drain()

    def cpu_seconds(self) -> float:
        try:
            return cpu_seconds(self.pid)
        except OSError:
            return 0.0

    async def result(self, timeout: float = 300.0) -> dict[str, Any]:
        await self.expect("done", timeout)
        assert self.process is not None
        await asyncio.wait_for(self.process.wait(), 60)
        return dict(json.loads(self.result_file.read_text()))

    async def stop(self) -> None:
        """Kill the process if it still runs (by its PID; under py-spy, its child first, so
        that py-spy writes the profile)."""
        if self.process is None or self.process.returncode is not None:
            return
        if self.profile:
            for child in children(self.pid):
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 30)
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def start_all(workers: list[Worker]) -> list[Worker]:
    return list(await asyncio.gather(*(w.start() for w in workers)))


async def run_once(module: str, config: dict[str, Any], root: Path) -> dict[str, Any]:
    """Start one load generator, tell it to go, and return its result (stopped either way)."""
    worker = await Worker(module, config, root).start()
    try:
        await worker.send("go")
        return await worker.result()
    finally:
        await worker.stop()


async def stop_all(workers: list[Worker]) -> None:
    await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """`items` dealt into `parts` lists of nearly equal size (round robin)."""
    return [items[i::parts] for i in range(parts) if items[i::parts]]
