"""The one mapping from a generation's summary to the API's status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from contracts.state import GenerationSummary
from services.gateway.schemas import ErrorInfo, GenerationStatus
from services.gateway.views import status_of

WORKED_OUT = {"duration_ms", "error", "stream_url"}
"""The fields `status_of` sets itself; every other one is the summary's of the same name."""


def test_every_status_field_is_the_summarys_or_worked_out_by_status_of() -> None:
    fields = set(GenerationStatus.__struct_fields__)
    assert fields - set(GenerationSummary.__struct_fields__) <= WORKED_OUT


def test_status_of_copies_the_summary_and_works_out_the_rest() -> None:
    started = datetime(2026, 1, 5, 9, tzinfo=UTC)
    summary = GenerationSummary(
        generation_id="g1",
        project_id="p1",
        project_name="shop",
        status="failed",
        progress=40,
        tokens_in=7,
        error="boom",
        error_phase="api",
        error_kind="guard",
        retryable=True,
        started_at=started,
        finished_at=started + timedelta(seconds=2),
    )
    status = status_of(summary)
    shared = set(GenerationStatus.__struct_fields__) - WORKED_OUT
    assert {f: getattr(status, f) for f in shared} == {
        f: msgspec.structs.asdict(summary)[f] for f in shared
    }
    assert status.duration_ms == 2000
    assert status.error == ErrorInfo(message="boom", phase="api", kind="guard", retryable=True)
    assert status.stream_url == "/generations/g1/stream"
    assert status_of(GenerationSummary(generation_id="g2", project_id="p1")).error is None
