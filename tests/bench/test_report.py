"""bench/RESULTS.md: a run rewrites its table and keeps what people wrote below it."""

from __future__ import annotations

from pathlib import Path

from bench.report import KEPT_FROM, Row, write

ROW = Row("B1 late replay", "1.00 s", "0.90 s", "0.90x", "≥ 0.85x", True)
HAND_WRITTEN = "### B6 profiled by hand\n\nThe orchestrator's CPU per event, measured twice.\n"


def run_into(path: Path, row: Row = ROW) -> str:
    write(path, [row], command="python -m bench", runs=3, elapsed_s=60.0)
    return path.read_text()


def test_a_run_keeps_every_hand_written_section_after_the_marker(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    run_into(results)
    results.write_text(results.read_text() + "\n" + HAND_WRITTEN)

    text = run_into(results, Row("B1 late replay", "2.00 s", "0.90 s", "2.22x", "≥ 0.85x", False))
    text = run_into(results, Row("B1 late replay", "3.00 s", "0.90 s", "3.33x", "≥ 0.85x", False))

    assert text.count(HAND_WRITTEN.strip()) == 1
    assert text.count(KEPT_FROM) == 1
    assert "| B1 late replay | 3.00 s |" in text and "2.00 s" not in text
    assert text.index("## Results") < text.index(KEPT_FROM) < text.index(HAND_WRITTEN.strip())


def test_a_file_written_before_the_marker_keeps_its_sections_past_the_generated_ones(
    tmp_path: Path,
) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text(
        "# Kiln benchmark results\n\nold\n\n## Machine\n\n- old\n\n## Results\n\n| old |\n\n"
        "## Notes from the run\n\n- old note\n\n## Where the time goes\n\n" + HAND_WRITTEN
    )
    text = run_into(results)
    assert "- old note" not in text and "| old |" not in text
    assert text.endswith("## Where the time goes\n\n" + HAND_WRITTEN)


def test_a_new_file_holds_the_table_and_the_marker(tmp_path: Path) -> None:
    text = run_into(tmp_path / "new.md")
    assert "| B1 late replay | 1.00 s | 0.90 s | 0.90x | ≥ 0.85x | yes |" in text
    assert text.rstrip().endswith(KEPT_FROM)
