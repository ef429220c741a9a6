"""The client commands against a real stack: generate and follow, a failure's exit code, a
late watch, a connection cut mid-follow, download and extract, status, events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from contracts.phases import PHASE_NAMES
from services.cli.main import main
from services.common.embedded_nats import EmbeddedNats
from services.orchestrator.providers.base import PhaseRequest, ProviderError, Reporter
from services.orchestrator.providers.offline import OfflineProvider
from tests.conftest import ALICE_KEY, make_settings
from tests.support.stack import running_stack, schema_with


async def kiln(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    """Run `kiln ARGV` in a thread (the stack serves on this loop); exit code, out, err."""

    def run() -> int:
        try:
            main([*argv, "--url", url, "--api-key", ALICE_KEY])
        except SystemExit as exit_:
            return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
        return 0

    code = await asyncio.to_thread(run)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "shop.json"
    path.write_text(json.dumps(schema_with(2)))
    return path


async def test_generate_follow_ends_with_exit_0_and_the_files_download(
    tmp_path: Path,
    nats_server: EmbeddedNats,
    schema_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running_stack(make_settings(tmp_path, nats_server.url)) as stack:
        code, out, _ = await kiln(capsys, stack.url, "generate", str(schema_file), "--follow")
        assert code == 0, out
        gid = re.search(r"generation (\S+) ", out).group(1)  # type: ignore[union-attr]
        assert [f"phase {p} completed" in out for p in PHASE_NAMES] == [True] * len(PHASE_NAMES)
        assert "completed:" in out
        written = re.findall(r"wrote (\S+) ", out)
        assert len(written) == len(set(written)) > 5

        code, out, _ = await kiln(
            capsys, stack.url, "download", gid, "--extract", str(tmp_path / "out")
        )
        assert code == 0
        assert sorted(
            str(p.relative_to(tmp_path / "out"))
            for p in (tmp_path / "out").rglob("*")
            if p.is_file()
        ) == sorted(written)

        code, out, _ = await kiln(capsys, stack.url, "status", gid)
        assert code == 0 and "completed 100%" in out
        code, out, _ = await kiln(capsys, stack.url, "events", gid, "--json")
        assert [json.loads(line)["type"] for line in out.splitlines()][-1] == (
            "generation.completed"
        )
        code, out, _ = await kiln(capsys, stack.url, "projects")
        assert gid in out and "completed" in out


class FailsInSchemas:
    name = "offline"

    def __init__(self) -> None:
        self.inner = OfflineProvider()

    async def run_phase(self, request: PhaseRequest, reporter: Reporter) -> Any:
        if request.phase == "schemas":
            raise ProviderError("the model refused to write the schemas (scripted)")
        return await self.inner.run_phase(request, reporter)


async def test_a_failed_generation_exits_1_with_its_message(
    tmp_path: Path,
    nats_server: EmbeddedNats,
    schema_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(tmp_path, nats_server.url)
    async with running_stack(settings, providers={"offline": FailsInSchemas()}) as stack:
        code, out, err = await kiln(capsys, stack.url, "generate", str(schema_file), "--follow")
    assert code == 1
    assert "FAILED in phase schemas" in out
    assert "the model refused to write the schemas" in err


async def test_watch_on_a_finished_generation_prints_its_whole_history(
    tmp_path: Path, nats_server: EmbeddedNats, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_stack(make_settings(tmp_path, nats_server.url)) as stack:
        accepted = await stack.create(schema_with(1))
        await stack.wait_status(accepted["generation_id"], "completed")
        code, out, _ = await kiln(capsys, stack.url, "watch", accepted["generation_id"])
        files = (await stack.alice.get(f"/generations/{accepted['generation_id']}/files")).json()
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert "requested create" in lines[0]
    assert "completed:" in lines[-1]
    assert len(re.findall(r"wrote (\S+) ", out)) == files["file_count"]


@contextlib.asynccontextmanager
async def cutting_proxy(target_port: int) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A TCP proxy to the gateway; setting the event cuts every open connection once."""
    cut = asyncio.Event()
    open_writers: set[asyncio.StreamWriter] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        open_writers.update({client_w, server_w})
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    async def cutter() -> None:
        await cut.wait()
        for writer in list(open_writers):
            writer.transport.abort()
        open_writers.clear()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    task = asyncio.create_task(cutter())
    try:
        yield f"http://127.0.0.1:{port}", cut
    finally:
        task.cancel()
        server.close()


async def test_a_connection_cut_mid_follow_resumes_without_duplicate_lines(
    tmp_path: Path, nats_server: EmbeddedNats, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path, nats_server.url, KILN_OFFLINE_PHASE_DELAY="0.3")
    async with running_stack(settings) as stack:
        port = int(stack.url.rsplit(":", 1)[1])
        async with cutting_proxy(port) as (proxy_url, cut):
            accepted = await stack.create(schema_with(2))
            watcher = asyncio.create_task(
                kiln(capsys, proxy_url, "watch", accepted["generation_id"])
            )
            async for event in stack.follow(accepted["stream_url"]):
                if event.type == "phase.completed" and event.data["phase"] == "schemas":
                    cut.set()
            code, out, _ = await watcher
        files = (await stack.alice.get(f"/generations/{accepted['generation_id']}/files")).json()
    assert code == 0, out
    assert "resuming after event" in out
    written = re.findall(r"wrote (\S+) ", out)
    assert len(written) == len(set(written)) == files["file_count"], "no line twice, none lost"
    assert sum("completed:" in line for line in out.splitlines()) == 1
