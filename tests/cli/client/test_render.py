"""What a followed generation looks like: plain lines for CI logs, a live bar on a
terminal."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console

from contracts.events import (
    Event,
    FailedTest,
    FileWritten,
    GenerationFailed,
    LlmCalled,
    LlmRetrying,
    PhaseCompleted,
    PhaseProgress,
    PhaseStarted,
    VerifyCompleted,
    VerifyStarted,
    VerifyUnavailable,
    event_tag,
)
from services.cli.client.follow import Reconnecting, StreamEvent
from services.cli.client.render import BarRenderer, PlainRenderer, renderer_for


def _events() -> list[StreamEvent]:
    # The bar times the generation from its first event: 65 s ago, as of this call (not as
    # of collection, which may be minutes earlier in a full run).
    start = datetime.now(UTC) - timedelta(seconds=65)

    def common(seq: int, progress: int | None = None) -> dict[str, Any]:
        return {
            "event_id": f"e-{seq}",
            "generation_id": "g-1",
            "project_id": "p-1",
            "seq": seq,
            "at": start + timedelta(seconds=seq / 2),
            "progress": progress,
        }

    def file(seq: int, path: str) -> FileWritten:
        return FileWritten(
            **common(seq), path=path, content="x", sha256="0" * 64, size=1, phase="models"
        )

    events: list[Event] = [
        PhaseStarted(**common(1, 5), phase="models"),
        PhaseProgress(**common(2), phase="models", tokens_received=40),
        LlmRetrying(**common(3), phase="models", reason="rate_limited", delay_s=2.0, attempt=1),
        LlmCalled(**common(4), provider="offline", model="m", phase="models"),
        file(5, "app/models.py"),
        file(6, "app/db.py"),
        PhaseCompleted(**common(7, 20), phase="models", files=["app/models.py", "app/db.py"]),
        PhaseStarted(**common(8, 20), phase="schemas"),
        GenerationFailed(**common(9), phase="schemas", message="the model refused", files_kept=2),
    ]
    return [
        StreamEvent(seq, event_tag(type(e)), e)  # type: ignore[arg-type]
        for seq, e in enumerate(events, 1)
    ]


def test_plain_lines_one_per_phase_file_retry_and_end_timed_from_the_first_event() -> None:
    out = io.StringIO()
    renderer = PlainRenderer(out)
    for event in _events():
        renderer.event(event)
    renderer.reconnecting(Reconnecting(after_id=9, reason="connection lost", delay_s=0.25))
    renderer.close()
    assert out.getvalue().splitlines() == [
        "[   0.0s] phase models started",
        "[   1.0s]   retrying phase models in 2.0 s (rate_limited, attempt 1)",
        "[   2.0s]   wrote app/models.py (1 B)",
        "[   2.5s]   wrote app/db.py (1 B)",
        "[   3.0s] phase models completed in 0 ms, 2 files (20%)",
        "[   3.5s] phase schemas started",
        "[   4.0s] FAILED in phase schemas: the model refused (2 files kept)",
        "[ ----- ] connection lost; resuming after event 9 in 0.25 s",
    ]


def test_on_a_terminal_a_bar_shows_phase_percent_files_and_elapsed_time() -> None:
    screen = io.StringIO()
    renderer = BarRenderer(Console(file=screen, force_terminal=True, width=100))
    for event in _events()[:8]:
        renderer.event(event)
    renderer.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    last_bar = [line for line in text.splitlines() if "%" in line and "files" in line][-1]
    assert re.search(r"schemas\s+━+.*\s20%\s+2 files\s+0:01:\d\d", last_bar), last_bar
    assert "phase models completed" in text
    assert "retrying phase models" in text
    assert "wrote" not in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_plain_lines_elsewhere() -> None:
    assert isinstance(renderer_for(io.StringIO()), PlainRenderer)
    bar = renderer_for(_Terminal())
    assert isinstance(bar, BarRenderer)
    bar.close()


def _stream(*events: Event) -> list[StreamEvent]:
    return [
        StreamEvent(seq, event_tag(type(e)), e)  # type: ignore[arg-type]
        for seq, e in enumerate(events, 1)
    ]


def test_a_verification_shows_its_counts_lint_and_first_failures() -> None:
    at = datetime(2026, 12, 2, tzinfo=UTC)
    base = {"event_id": "e", "generation_id": "g-1", "project_id": "p-1", "at": at}
    failures = [
        FailedTest(test_id=f"tests/test_api.py::test_{i}", message=f"assert 500 == 201\nmore {i}")
        for i in range(7)
    ]
    out = io.StringIO()
    renderer = PlainRenderer(out)
    for event in _stream(
        VerifyStarted(**base, seq=1, round=0),
        VerifyCompleted(
            **base,
            seq=2,
            verdict="failed",
            passed=13,
            failed=6,
            errors=1,
            lint_findings=2,
            failures=failures,
        ),
        VerifyStarted(**base, seq=3, round=1),
        VerifyCompleted(**base, seq=4, round=1, verdict="passed", passed=20),
        VerifyUnavailable(**base, seq=5, round=2, reason="needs numpy"),
    ):
        renderer.event(event)
    lines = [line[10:] for line in out.getvalue().splitlines()]
    assert lines == [
        "verifying: the version's own tests, lint and compile check, sandboxed",
        "FAILED: tests: 13 passed, 6 failed, 1 errors · lint: 2 findings · format: clean",
        *[f"  failure: tests/test_api.py::test_{i}: assert 500 == 201" for i in range(5)],
        "  … and 2 more",
        "verifying after repair round 1: the version's own tests, lint and compile check, "
        "sandboxed",
        "PASSED: tests: 20 passed · lint: clean · format: clean",
        "UNVERIFIED: needs numpy",
    ]
