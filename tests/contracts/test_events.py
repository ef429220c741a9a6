"""Events round-trip, decode defensively, and evolve without breaking old readers."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.codec import (
    DecodeError,
    audit_view,
    canonical,
    decode_command,
    decode_event,
    encode,
    encoded_event_hash,
    event_hash,
    event_object_and_hash,
)
from contracts.commands import CancelRequested, GenerateRequested
from contracts.events import (
    EVENT_TYPES,
    VERIFICATION_COUNTS,
    FailedTest,
    FileWritten,
    GenerationRequested,
    InheritedFile,
    PhaseCompleted,
    RestoredVerification,
    VerifyCompleted,
    event_tag,
    new_event_id,
    utc_now,
    verification_counts,
)
from contracts.phases import PHASES
from contracts.schema import ProjectSchema
from contracts.state import Verification
from contracts.verification import VerifyResult

BASE = {"event_id": "e1", "generation_id": "g1", "project_id": "p1", "seq": 1, "at": utc_now()}

REQUIRED = {
    "generation.requested": {"owner": "alice", "project_name": "shop", "version": 1},
    "generation.started": {"plan": list(PHASES), "worker": "w", "provider": "offline"},
    "generation.resumed": {"worker": "w", "attempt": 2, "from_phase": "api"},
    "phase.started": {"phase": "plan"},
    "phase.progress": {"phase": "plan", "bytes_received": 10},
    "phase.completed": {"phase": "plan", "files": ["a.py"]},
    "file.written": {
        "path": "a.py",
        "content": "x = 1\n",
        "sha256": "0" * 64,
        "size": 6,
        "phase": "plan",
    },
    "version.based_on": {
        "parent_generation_id": "g0",
        "files": [InheritedFile(path="a.py", sha256="ab" * 32, size=3)],
    },
    "file.deleted": {"path": "a.py", "reason": "gone", "phase": "api"},
    "llm.called": {"provider": "gemini", "model": "m", "phase": "plan"},
    "llm.retrying": {"phase": "plan", "reason": "rate_limited", "delay_s": 2.0, "attempt": 2},
    "verify.started": {"round": 0},
    "verify.completed": {
        "verdict": "failed",
        "passed": 19,
        "failed": 1,
        "failures": [FailedTest(test_id="tests/test_api.py::test_create", message="assert 500")],
    },
    "verify.unavailable": {"reason": "bubblewrap cannot run here"},
    "repair.started": {"round": 1, "failing": ["tests/test_api.py::test_create"]},
    "repair.completed": {"round": 1, "files_changed": ["app/api.py"]},
    "repair.reverted": {
        "round": 1,
        "files": ["app/api.py"],
        "restored": RestoredVerification(verdict="failed", failed=1),
    },
    "generation.completed": {"file_count": 1, "total_bytes": 6, "duration_ms": 10},
    "generation.failed": {"phase": "api", "message": "boom"},
    "generation.cancelled": {"by": "alice"},
}


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=event_tag)
def test_every_event_round_trips_with_its_dotted_tag(event_type: type) -> None:
    tag = event_tag(event_type)
    event = event_type(**BASE, **REQUIRED[tag])
    data = encode(event)
    assert msgspec.json.decode(data)["type"] == tag
    assert decode_event(data) == event


def test_every_event_type_has_a_case_here() -> None:
    assert {event_tag(t) for t in EVENT_TYPES} == set(REQUIRED)


def test_an_old_reader_decodes_a_newer_event_with_unknown_fields() -> None:
    newer = msgspec.json.decode(encode(PhaseCompleted(**BASE, phase="plan")))
    newer["a_field_from_the_future"] = {"nested": [1, 2]}
    decoded = decode_event(msgspec.json.encode(newer))
    assert isinstance(decoded, PhaseCompleted) and decoded.phase == "plan"


def test_the_hash_counts_fields_an_old_reader_does_not_know() -> None:
    data = encode(PhaseCompleted(**BASE, phase="plan"))
    newer = msgspec.json.decode(data)
    newer["extra"] = 1
    assert event_hash(data) != event_hash(msgspec.json.encode(newer))


def test_canonical_form_does_not_depend_on_key_order() -> None:
    assert canonical(b'{"b": 1, "a": [2, {"d": 1, "c": 2}]}') == canonical(
        b'{"a":[2,{"c":2,"d":1}],"b":1}'
    )


@pytest.mark.parametrize("tag", sorted(REQUIRED))
def test_the_object_and_hash_from_one_decode_match_event_hash(tag: str) -> None:
    data = msgspec.json.encode({**BASE, "type": tag, **REQUIRED[tag], "unknown": [3, 1]})
    value, digest = event_object_and_hash(data)
    assert digest == event_hash(data)
    assert value == msgspec.json.decode(data)


@pytest.mark.parametrize("tag", sorted(REQUIRED))
@pytest.mark.parametrize("unknown_field", [False, True])
def test_the_audit_view_is_the_events_json_and_hash_however_it_is_computed(
    tag: str, unknown_field: bool
) -> None:
    fields = {**BASE, "type": tag, **REQUIRED[tag]}
    data = encode(decode_event(msgspec.json.encode(fields)))
    if unknown_field:
        data = msgspec.json.encode({**msgspec.json.decode(data), "from_the_future": [1]})
    value, digest = audit_view(data, decode_event(data))
    assert digest == event_hash(data)
    assert msgspec.json.decode(msgspec.json.encode(value)) == msgspec.json.decode(data)
    if not unknown_field:
        assert encoded_event_hash(decode_event(data)) == event_hash(data)


@pytest.mark.parametrize("data", [b"", b"[1]", b"not json"])
def test_the_object_and_hash_refuse_what_is_not_a_json_object(data: bytes) -> None:
    with pytest.raises(DecodeError):
        event_object_and_hash(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"null",
        b"[]",
        b'{"type": "no.such.event"}',
        b'{"type": "phase.started"}',
        b'{"type": "phase.started", "event_id": "e", "generation_id": "g", "project_id": "p", "seq": 0, "at": "2026-01-01T00:00:00Z", "phase": "x"}',
        b'{"type": "phase.started", "event_id": "e", "generation_id": "g.x", "project_id": "p", "seq": 1, "at": "2026-01-01T00:00:00Z", "phase": "x"}',
        b'{"type": "phase.started", "event_id": "e", "generation_id": "g\\n", "project_id": "p", "seq": 1, "at": "2026-01-01T00:00:00Z", "phase": "x"}',
        b"\xff\xfe",
    ],
)
def test_invalid_events_raise_one_typed_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_event(data)


@given(st.binary(max_size=300))
def test_the_event_decoder_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    try:
        decode_event(data)
    except DecodeError:
        pass


@given(st.binary(max_size=300))
def test_the_command_decoder_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    try:
        decode_command(data)
    except DecodeError:
        pass


def test_commands_round_trip() -> None:
    for command in (
        GenerateRequested(generation_id="g", project_id="p", at=utc_now()),
        CancelRequested(generation_id="g", project_id="p", at=utc_now(), by="alice"),
    ):
        assert decode_command(encode(command)) == command


def test_the_request_carries_the_schema() -> None:
    schema = ProjectSchema(entities=[])
    event = GenerationRequested(**BASE, owner="a", project_name="p", version=1, schema=schema)
    decoded = decode_event(encode(event))
    assert isinstance(decoded, GenerationRequested) and decoded.schema == schema


def test_file_written_keeps_content_exactly() -> None:
    content = 'line\nwith "quotes" and \u00e9 and \x00 nothing else\n'
    event = FileWritten(
        **BASE, path="a.txt", content=content, sha256="0" * 64, size=1, phase="plan"
    )
    decoded = decode_event(encode(event))
    assert isinstance(decoded, FileWritten) and decoded.content == content


def test_the_counts_are_what_a_restored_verification_holds_besides_its_round_and_verdict() -> None:
    # A count added to the revert's record (the smallest of them) without a place in
    # VERIFICATION_COUNTS would never be copied.
    assert set(RestoredVerification.__struct_fields__) - {"round", "verdict"} == set(
        VERIFICATION_COUNTS
    )


@pytest.mark.parametrize("record", [VerifyResult, VerifyCompleted, Verification])
def test_every_record_of_a_verification_run_has_every_count(record: type) -> None:
    assert set(VERIFICATION_COUNTS) <= set(record.__struct_fields__)


def test_the_counts_are_copied_by_name_with_their_lists_copied_too() -> None:
    failure = FailedTest(test_id="tests/test_a.py::test_a", message="boom")
    counts = {
        "passed": 3,
        "failed": 1,
        "errors": 2,
        "skipped": 4,
        "duration_ms": 5,
        "lint_findings": 6,
        "format_findings": 7,
        "compile_errors": ["app/x.py:1: invalid syntax"],
        "failures": [failure],
    }
    run = VerifyCompleted(**BASE, verdict="failed", **counts)
    restored = RestoredVerification(round=1, verdict="failed", **verification_counts(run))
    assert restored == RestoredVerification(round=1, verdict="failed", **counts)
    assert restored.compile_errors is not run.compile_errors
    assert restored.failures is not run.failures


def test_an_event_id_is_a_random_uuid_in_its_usual_form() -> None:
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == event_id
    # Every variant digit (8, 9, a, b) and every hex digit elsewhere turns up.
    assert {i[19] for i in ids} == set("89ab")
    assert set("".join(i[:8] for i in ids)) == set("0123456789abcdef")
