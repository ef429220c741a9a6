"""The tamper-evident audit log end to end: `GET /generations/{id}/events?verify=true` and
`kiln audit GEN_ID --verify` recompute the chain from the read model and name the event
that was changed in the database."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import nats
import pytest

from contracts.streams import BLOBS_STREAM
from contracts.subjects import blob_subject
from services.cli.main import main
from services.common.settings import Settings
from tests.conftest import ALICE_KEY
from tests.support.stack import Stack, running_stack


def database(settings: Settings) -> Path:
    return Path(settings.effective_database_url.split(":///", 1)[1])


def tamper(settings: Settings, generation_id: str, seq: int, **changes: Any) -> None:
    """Change one stored event's body in the SQLite read model, as an intruder would."""
    with sqlite3.connect(database(settings)) as db:
        (body,) = db.execute(
            "SELECT body FROM events WHERE generation_id = ? AND seq = ?", (generation_id, seq)
        ).fetchone()
        db.execute(
            "UPDATE events SET body = ? WHERE generation_id = ? AND seq = ?",
            (json.dumps({**json.loads(body), **changes}), generation_id, seq),
        )


async def audit(
    stack: Stack, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Run `kiln audit …` against the stack (in a thread: the gateway runs in this loop)."""
    argv = ["audit", *args, "--url", stack.url, "--api-key", ALICE_KEY]

    def call() -> int:
        try:
            main(argv)
        except SystemExit as exit:
            return int(exit.code or 0)
        return 0

    code = await asyncio.to_thread(call)
    out, err = capsys.readouterr()
    return code, out, err


async def verification(stack: Stack, generation_id: str) -> dict[str, Any]:
    response = await stack.alice.get(f"/generations/{generation_id}/events?verify=true")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["events"])
    return dict(body["verification"])


async def test_an_intact_log_verifies_and_a_changed_event_is_named(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_stack(settings) as stack:
        accepted = await stack.create_completed()
        gid = accepted["generation_id"]
        log = (await stack.alice.get(f"/generations/{gid}/events")).json()
        assert log.get("verification") is None  # only when asked

        intact = await verification(stack, gid)
        assert intact["ok"] and intact["broken"] is None
        assert intact["verified"] == log["count"] == log["events"][-1]["seq"]
        assert intact["head_hash"] == log["events"][-1]["hash"]
        code, out, err = await audit(stack, capsys, gid, "--verify")
        assert code == 0, err
        assert "Chain intact" in out and f"{log['count']} events" in out

        target = next(e for e in log["events"] if e["type"] == "phase.completed")
        tamper(settings, gid, target["seq"], summary="nothing to see here")

        broken = (await verification(stack, gid))["broken"]
        assert broken["seq"] == target["seq"]
        assert broken["stream_seq"] == target["stream_seq"]
        assert broken["event_id"] == target["event"]["event_id"]
        assert (broken["type"], broken["check"]) == ("phase.completed", "hash")

        code, out, err = await audit(stack, capsys, gid, "--verify")
        assert code == 1
        assert f"seq {target['seq']} (phase.completed)" in err
        assert target["event"]["event_id"] in err
        assert "<- broken" in out

        # The stream itself, the source of truth, still holds.
        code, out, err = await audit(stack, capsys, gid, "--from-nats", settings.nats_servers[0])
        assert code == 0, err
        assert "Chain intact" in out and "the stream" in out


async def test_a_changed_file_content_is_caught_too(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_stack(settings) as stack:
        accepted = await stack.create_completed()
        gid = accepted["generation_id"]
        log = (await stack.alice.get(f"/generations/{gid}/events")).json()
        written = next(e for e in log["events"] if e["type"] == "file.written")
        with sqlite3.connect(database(settings)) as db:
            db.execute(
                "UPDATE blobs SET content = ? WHERE sha256 = ?",
                (b"# a backdoor\n", written["event"]["sha256"]),
            )

        broken = (await verification(stack, gid))["broken"]
        assert (broken["seq"], broken["check"]) == (written["seq"], "blob")
        assert "hashes otherwise" in broken["message"]

        code, out, _ = await audit(stack, capsys, gid)  # without --verify: the chain only
        assert code == 0
        assert len(out.strip().splitlines()) == log["count"] + 1


async def test_a_changed_or_lost_inherited_content_is_caught(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_stack(settings) as stack:
        first = await stack.create_completed()
        second = await stack.iterate(first["generation_id"], "add pagination")
        gid = second["generation_id"]
        await stack.wait_status(gid, "completed")
        log = (await stack.alice.get(f"/generations/{gid}/events")).json()
        [based_on] = [e for e in log["events"] if e["type"] == "version.based_on"]
        assert (await verification(stack, gid))["ok"]
        inherited = based_on["event"]["files"][0]["sha256"]

        # In the read model: the chain names the content, and the content no longer fits.
        with sqlite3.connect(database(settings)) as db:
            db.execute(
                "UPDATE blobs SET content = ? WHERE sha256 = ?", (b"# a backdoor\n", inherited)
            )
        broken = (await verification(stack, gid))["broken"]
        assert (broken["seq"], broken["type"], broken["check"]) == (
            based_on["seq"],
            "version.based_on",
            "blob",
        )

        # In the broker: a content the manifest names is gone.
        nats_url = settings.nats_servers[0]
        code, _, err = await audit(stack, capsys, gid, "--from-nats", nats_url)
        assert code == 0, err
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().purge_stream(BLOBS_STREAM, subject=blob_subject(inherited))
        finally:
            await nc.close()
        code, _, err = await audit(stack, capsys, gid, "--from-nats", nats_url)
        assert code == 1
        assert "blob check failed" in err and inherited[:16] in err
