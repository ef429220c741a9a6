"""B9 (iterations' cost to the log): what it compares and which streams it counts, and one
toy run whose figures add up. No timing or byte goal is asserted (the figures come from
`python -m bench --only B9`); these hold before issue 20's change and after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scenarios import Context
from bench.scenarios.b9_iterations import (
    ENTITIES_ENV,
    FileEntry,
    compare,
    log_streams,
    measure_sizes,
    report,
    rows,
    sizes_wanted,
)


def _entry(path: str, sha: str, size: int) -> FileEntry:
    return FileEntry(path=path, size=size, sha256=sha * 64)


def test_an_iteration_changes_what_it_adds_or_rewrites_and_inherits_the_rest() -> None:
    parent = {
        p.path: p
        for p in (
            _entry("same.py", "a", 100),
            _entry("edited.py", "b", 50),
            _entry("gone.py", "c", 7),
        )
    }
    child = {
        p.path: p
        for p in (
            _entry("same.py", "a", 100),
            _entry("edited.py", "d", 60),
            _entry("new.py", "e", 30),
        )
    }

    change = compare(parent, child)

    assert (change.changed_bytes, change.changed_files) == (90, 2)
    assert (change.deleted, change.inherited, change.project_bytes) == (1, 1, 190)


def test_the_log_is_the_events_stream_and_any_blob_stream_or_object_store() -> None:
    names = ["KILN_EVENTS", "KILN_CMDS", "KILN_BLOBS", "OBJ_KILN_FILES", "KV_KILN_RUNS"]

    assert log_streams(names) == ["KILN_EVENTS", "KILN_BLOBS", "OBJ_KILN_FILES"]


def test_sizes_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    context = Context(root=Path("."))
    monkeypatch.delenv(ENTITIES_ENV, raising=False)
    assert sizes_wanted(context) == [20, 100]

    monkeypatch.setenv(ENTITIES_ENV, "5, 7")
    assert sizes_wanted(context) == [5, 7]


async def test_a_toy_run_measures_every_iteration_and_replays_the_last_version(
    tmp_path: Path,
) -> None:
    (result,) = await measure_sizes(Context(root=tmp_path, runs=1, toy=True))

    assert len(result.iterations) == 3
    for iteration in result.iterations:
        assert iteration.change.changed_files > 0 and iteration.change.inherited > 0
        assert iteration.state > 0 and iteration.disk > 0 and iteration.events > 0
        assert iteration.sql >= 0
    assert result.last_events > 0 and len(result.replay.kiln) == len(result.replay_v1) == 1
    assert len(report(result).splitlines()) == 4 + len(result.iterations) + 1
    # Bytes per iteration, the whole log, SQL, the replay: each with its goal.
    assert [row.met is not None for row in rows(result)] == [True, True, True, True]
