"""The client commands against a real stack: generate and follow, iterate, a failure's exit
code, a late watch, a connection cut mid-follow, a terminal's progress bar, download and
extract (and a hostile zip refused), status, projects, diff, events, HTTP errors."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import json
import os
import pty
import re
import sys
import threading
import zipfile
from collections.abc import AsyncIterator, Iterator
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

ROOT = Path(__file__).resolve().parents[3]


async def kiln(
    capsys: pytest.CaptureFixture[str], url: str, *argv: str, key: str = ALICE_KEY
) -> tuple[int, str, str]:
    """Run `kiln ARGV` in a thread (the stack serves on this loop); exit code, out, err."""

    def run() -> int:
        try:
            main([*argv, "--url", url, "--api-key", key])
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else 2
        return 0

    code = await asyncio.to_thread(run)
    out, err = capsys.readouterr()
    return code, out, err


def written_paths(out: str) -> list[str]:
    """The paths of the `wrote PATH (…)` lines, in order."""
    return re.findall(r"\] +wrote (\S+) \(", out)


def files_under(directory: Path) -> list[str]:
    """Every file under `directory`, relative, sorted."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "shop.json"
    path.write_text(json.dumps(schema_with(2)))
    return path


async def test_generate_follow_exits_0_listing_the_files_which_download(
    tmp_path: Path,
    nats_server: EmbeddedNats,
    schema_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running_stack(make_settings(tmp_path, nats_server.url)) as stack:
        code, out, err = await kiln(
            capsys, stack.url, "generate", str(schema_file), "--prompt", "a shop", "--follow"
        )
        assert code == 0, out + err
        gid = re.search(r"^generation (\S+) \(project", out, re.M).group(1)  # type: ignore[union-attr]
        for phase in PHASE_NAMES:
            assert len(re.findall(rf"\] phase {phase} started", out)) == 1
            assert len(re.findall(rf"\] phase {phase} completed", out)) == 1
        written = written_paths(out)
        assert len(written) == len(set(written)) > 5
        assert f"{len(written)} files" in out.splitlines()[-1]
        assert out.splitlines()[-2].split("] ", 1)[1].startswith("completed:")

        code, out, _ = await kiln(
            capsys, stack.url, "download", gid, "--extract", str(tmp_path / "out")
        )
        assert code == 0 and f"extracted {len(written)} files" in out
        assert files_under(tmp_path / "out") == sorted(written)
        code, out, _ = await kiln(
            capsys, stack.url, "download", gid, "-o", str(tmp_path / "v1.zip")
        )
        assert code == 0
        assert sorted(zipfile.ZipFile(tmp_path / "v1.zip").namelist()) == sorted(written)

        code, out, _ = await kiln(capsys, stack.url, "status", gid)
        assert code == 0 and "shop v1" in out and "completed 100%" in out
        code, out, _ = await kiln(capsys, stack.url, "status", gid, "--json")
        assert code == 0 and json.loads(out)["file_count"] == len(written)
        code, out, _ = await kiln(capsys, stack.url, "projects")
        assert code == 0 and gid in out and "completed" in out


async def test_iterate_follow_keeps_locked_files_and_diff_shows_the_change(
    tmp_path: Path,
    nats_server: EmbeddedNats,
    schema_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running_stack(make_settings(tmp_path, nats_server.url)) as stack:
        code, out, _ = await kiln(capsys, stack.url, "generate", str(schema_file), "--follow")
        parent = re.search(r"^generation (\S+) ", out, re.M).group(1)  # type: ignore[union-attr]
        locked = written_paths(out)[0]
        code, out, err = await kiln(
            capsys,
            stack.url,
            "iterate",
            parent,
            "add authentication",
            "--lock",
            locked,
            "--follow",
        )
        assert code == 0, out + err
        child = re.search(r"^generation (\S+) \(project .*, version 2\)", out, re.M).group(1)  # type: ignore[union-attr]
        code, patch, _ = await kiln(capsys, stack.url, "diff", child)
        assert code == 0 and patch.startswith("---")
        assert f"+++ b/{locked}" not in patch
        code, out, _ = await kiln(capsys, stack.url, "projects")
        assert f"from {parent}" in out


class FailsInSchemas:
    """The offline provider, except that the schemas phase fails."""

    name = "offline"

    def __init__(self) -> None:
        self.inner = OfflineProvider()

    async def run_phase(self, request: PhaseRequest, reporter: Reporter) -> Any:
        if request.phase == "schemas":
            raise ProviderError("the model refused to write the schemas (scripted)")
        return await self.inner.run_phase(request, reporter)


async def test_a_failed_generation_exits_1_with_its_message_phase_and_files_kept(
    tmp_path: Path,
    nats_server: EmbeddedNats,
    schema_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(tmp_path, nats_server.url)
    async with running_stack(settings, providers={"offline": FailsInSchemas()}) as stack:
        code, out, err = await kiln(capsys, stack.url, "generate", str(schema_file), "--follow")
        kept = len(written_paths(out))
        gid = re.search(r"^generation (\S+) ", out, re.M).group(1)  # type: ignore[union-attr]
        status_code, _, status_err = await kiln(capsys, stack.url, "status", gid)
    assert code == 1
    assert "] FAILED in phase schemas: the model refused" in out
    assert "failed in phase schemas: the model refused to write the schemas" in err
    assert kept > 0 and f"({kept} files kept" in err
    assert status_code == 1 and "the model refused" in status_err


async def test_watch_on_a_finished_generation_prints_its_whole_history(
    tmp_path: Path, nats_server: EmbeddedNats, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_stack(make_settings(tmp_path, nats_server.url)) as stack:
        accepted = await stack.create_completed(schema_with(1))
        code, out, _ = await kiln(capsys, stack.url, "watch", accepted["generation_id"])
        code_json, events_json, _ = await kiln(
            capsys, stack.url, "events", accepted["generation_id"], "--json"
        )
        _, table, _ = await kiln(capsys, stack.url, "events", accepted["generation_id"])
    assert code == 0 == code_json
    log = json.loads(events_json)
    types = [e["type"] for e in log["events"]]
    assert log["count"] == len(types) and types[0] == "generation.requested"
    assert types[-1] == "generation.completed"
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert "requested create of 'shop' v1" in lines[0]
    assert "completed:" in lines[-1]
    assert written_paths(out) == [
        e["event"]["path"] for e in log["events"] if e["type"] == "file.written"
    ]
    assert sum("] phase " in line for line in lines) == 2 * len(PHASE_NAMES)
    rows = table.splitlines()[2:]
    assert len(rows) == len(types)
    assert rows[-1].split()[2] == "generation.completed"


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
    assert "connection lost" in out and "resuming after event" in out
    lines = [line.split("] ", 1)[1] for line in out.splitlines() if re.match(r"\[ *\d", line)]
    assert len(lines) == len(set(lines)), "no line twice"
    assert sorted(written_paths(out)) == sorted(f["path"] for f in files["files"]), "none lost"
    assert sum(line.startswith("completed:") for line in lines) == 1


async def test_on_a_terminal_the_follow_is_a_progress_bar(
    tmp_path: Path, nats_server: EmbeddedNats, schema_file: Path
) -> None:
    async with running_stack(make_settings(tmp_path, nats_server.url)) as stack:
        controller, terminal = pty.openpty()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli.main",
            "generate",
            str(schema_file),
            "--follow",
            "--url",
            stack.url,
            "--api-key",
            ALICE_KEY,
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            cwd=ROOT,
            env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
        )
        os.close(terminal)
        screen = await asyncio.to_thread(_read_all, controller)
        code = await asyncio.wait_for(process.wait(), 60)
    assert code == 0, screen
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert "━" in text, "a bar was drawn"
    assert re.search(r"completed\s+━+\s+100%\s+\d+ files", text)
    assert "phase api completed" in text
    assert "wrote " not in text, "files are counted on the bar, not listed"


def _read_all(fd: int) -> str:
    chunks: list[bytes] = []
    with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


@contextlib.contextmanager
def serving(body: bytes) -> Iterator[str]:
    """A tiny HTTP server answering every GET with `body` (a zip); its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("hostile", ["../escaped.py", "/tmp/escaped.py", "app/../../escaped.py"])
async def test_download_extract_refuses_a_zip_with_a_traversal_entry_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hostile: str
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app/main.py", "A = 1\n")  # a good entry first: still not written
        archive.writestr(hostile, "pwned = True\n")
    target = tmp_path / "deep" / "out"
    with serving(buffer.getvalue()) as url:
        code, _, err = await kiln(capsys, url, "download", "g-1", "--extract", str(target))
    assert code == 2
    assert "refusing to extract" in err and "nothing was written" in err
    assert not target.exists()
    assert files_under(tmp_path) == []


async def test_http_errors_exit_2_with_one_line(
    tmp_path: Path, nats_server: EmbeddedNats, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_schema = tmp_path / "bad.json"
    bad_schema.write_text(json.dumps({"entities": []}))
    async with running_stack(make_settings(tmp_path, nats_server.url)) as stack:
        code, _, err = await kiln(
            capsys, stack.url, "status", "3f1c2a8e-0000-4000-8000-000000000000"
        )
        assert code == 2 and err.startswith("kiln status: 404 Not Found: ") and err.count("\n") == 1
        code, _, err = await kiln(capsys, stack.url, "generate", str(bad_schema))
        assert code == 2 and "400 Bad Request: The schema is not valid" in err
        code, _, err = await kiln(capsys, stack.url, "projects", key="wrong-key-000000")
        assert code == 2 and "401" in err
    code, _, err = await kiln(capsys, stack.url, "projects")
    assert code == 2 and "cannot reach the gateway" in err


@pytest.mark.parametrize("name", ["商店", "\u0455hop"])
async def test_download_works_for_any_valid_project_name(
    tmp_path: Path, nats_server: EmbeddedNats, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    async with running_stack(make_settings(tmp_path, nats_server.url)) as stack:
        accepted = await stack.create_completed(project_name=name)
        gid = accepted["generation_id"]
        code, out, err = await kiln(
            capsys, stack.url, "download", gid, "-o", str(tmp_path / "v.zip")
        )
        assert code == 0, out + err
        assert zipfile.ZipFile(tmp_path / "v.zip").testzip() is None
        code, out, err = await kiln(
            capsys, stack.url, "download", gid, "--extract", str(tmp_path / "out")
        )
        assert code == 0 and "extracted" in out, out + err
        assert "README.md" in files_under(tmp_path / "out")
