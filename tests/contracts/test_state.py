"""The fold against the shared table (fold_cases.json, which the page's model.js must also
pass: tests/browser/test_fold.py), and the invariants every prefix of every case keeps."""

from __future__ import annotations

import pytest

from contracts.events import FileWritten
from contracts.state import GenerationSummary, apply, fold, new_state
from tests.contracts.fold_table import CASES, FoldCase, mismatches, observed


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_fold_gives_what_the_table_says(case: FoldCase) -> None:
    state = fold(case.decoded())
    assert state is not None
    assert mismatches(case.expect, observed(state)) == {}


def test_the_table_only_names_what_a_state_has() -> None:
    names = set(GenerationSummary.__struct_fields__) | {"files", "deleted", "retrying"}
    for case in CASES:
        assert set(case.expect) <= names, case.name


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_count_and_bytes_follow_the_files_at_every_step(case: FoldCase) -> None:
    events = case.decoded()
    state = new_state(events[0])
    progress = 0
    for event in events:
        apply(state, event)
        summary = state.summary
        assert summary.file_count == len(state.files)
        assert summary.total_bytes == sum(f.size for f in state.files.values())
        assert not state.files.keys() & state.deleted.keys()
        assert summary.progress >= progress
        progress = summary.progress


def test_without_content_the_fold_is_the_same_but_for_the_contents() -> None:
    for case in CASES:
        with_content = fold(case.decoded())
        without = fold(case.decoded(), keep_content=False)
        assert with_content is not None and without is not None
        assert observed(without) == observed(with_content)
        assert without.file_contents() == {}
        written = {e.path: e.content for e in case.decoded() if isinstance(e, FileWritten)}
        assert all(written[p] == c for p, c in with_content.file_contents().items())
