"""Subject names: one place that knows how Kiln's subjects are spelled.

A generation's events live on `kiln.events.<project_id>.<generation_id>`; ids are UUIDs,
so they never contain the `.`, `*` or `>` that would break a subject.
"""

from __future__ import annotations

import hashlib
import re

EVENTS_PREFIX = "kiln.events"
ALL_EVENTS = f"{EVENTS_PREFIX}.>"
GENERATE_COMMANDS = "kiln.cmds.generate"
ALL_COMMANDS = "kiln.cmds.>"
CANCEL_PREFIX = "kiln.control.cancel"
ALL_CONTROL = "kiln.control.>"
ALL_CANCELS = f"{CANCEL_PREFIX}.*"
DLQ_PREFIX = "kiln.dlq"
ALL_DLQ = f"{DLQ_PREFIX}.>"
VERIFY_REQUESTS = "kiln.verify.requests"
VERIFY_RESULTS_PREFIX = "kiln.verify.results"
ALL_VERIFY_RESULTS = f"{VERIFY_RESULTS_PREFIX}.>"
BLOBS_PREFIX = "kiln.blobs"
ALL_BLOBS = f"{BLOBS_PREFIX}.*"

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # fullmatch: `$` accepts a trailing newline


def _token(value: str, what: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{what} {value!r} cannot be used in a subject")
    return value


def generation_events(project_id: str, generation_id: str) -> str:
    """The subject of one generation's events."""
    return f"{EVENTS_PREFIX}.{_token(project_id, 'project id')}.{_token(generation_id, 'generation id')}"


def generation_events_any_project(generation_id: str) -> str:
    """A filter for one generation's events when its project is not known."""
    return f"{EVENTS_PREFIX}.*.{_token(generation_id, 'generation id')}"


def project_events(project_id: str) -> str:
    """A filter for every generation of one project."""
    return f"{EVENTS_PREFIX}.{_token(project_id, 'project id')}.*"


_SHA256 = re.compile(r"[0-9a-f]{64}")


def blob_subject(sha256: str) -> str:
    """The subject of the file content whose sha256 (lowercase hex) is `sha256`."""
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"{sha256!r} is not a sha256 in lowercase hex")
    return f"{BLOBS_PREFIX}.{sha256}"


def cancel_subject(generation_id: str) -> str:
    """Where a cancel request for one generation is published."""
    return f"{CANCEL_PREFIX}.{_token(generation_id, 'generation id')}"


def verify_result_subject(generation_id: str, round: int) -> str:
    """Where the verifier publishes the result of one round of one generation."""
    if round < 0:
        raise ValueError(f"verify round {round} cannot be negative")
    return f"{VERIFY_RESULTS_PREFIX}.{_token(generation_id, 'generation id')}.{round}"


def verify_results_of(generation_id: str) -> str:
    """A filter for every verify result of one generation."""
    return f"{VERIFY_RESULTS_PREFIX}.{_token(generation_id, 'generation id')}.*"


def dlq_subject(service: str) -> str:
    """The dead-letter subject of one service."""
    return f"{DLQ_PREFIX}.{_token(service, 'service')}"


def parse_event_subject(subject: str) -> tuple[str, str] | None:
    """(project_id, generation_id) of an events subject, or None if it is not one."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "kiln" or parts[1] != "events":
        return None
    return parts[2], parts[3]


def partition_of(project_id: str, partitions: int) -> int:
    """The storage partition (0 ≤ p < partitions) that projects a project's events.

    A project, not a generation: versions, their numbers and their parents are per-project
    rows, so one projector must see all of a project's generations. The hash is stable
    across processes and Python versions (not `hash()`, which is salted per process).
    """
    if partitions <= 1:
        return 0
    digest = hashlib.blake2b(project_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def event_partition(subject: str, partitions: int) -> int:
    """The partition of an events subject; one that is not an events subject goes to 0,
    whose projector dead-letters it."""
    ids = parse_event_subject(subject)
    return 0 if ids is None else partition_of(ids[0], partitions)
