"""A repair round's answer passes the one path validator and the data-loss guard, like a
phase's: an unsafe path, an emptied, drastically shrunk or elided file or a changed
locked file is rejected with the rule named, gets one corrective retry, then the round is
`rejected` with the rule in its repair.completed, and nothing of it reaches the log's files.

Against a real nats-server: the log of a version whose round-0 verification failed is
written, then the real repair loop runs with a scripted provider (no verifier is asked: a
rejected round ends the loop).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.js import JetStreamContext

from contracts.codec import content_sha256
from contracts.events import (
    Event,
    FailedTest,
    FileDeleted,
    FileWritten,
    LlmRetrying,
    RepairCompleted,
    RepairStarted,
    VerifyCompleted,
    VerifyStarted,
)
from contracts.phases import Deletion, GeneratedFile, PhaseOutput
from contracts.state import fold
from services.common.eventlog import read_generation
from services.orchestrator.folding import FoldingWriter
from services.orchestrator.producer import PhaseProducer
from services.orchestrator.providers.base import PhaseRequest, RepairBrief, Reporter
from services.orchestrator.repair_loop import RepairLoop
from tests.orchestrator.helpers import requested_generation

STATUS = (
    '"""HTTP statuses."""\n\n\ndef created() -> int:\n    return HTTPStatus.CREATED\n\n\n'
    "def ok() -> int:\n    return 200\n"
)
FIXED = STATUS.replace('"""\n\n\n', '"""\n\nfrom http import HTTPStatus\n\n\n', 1)
TESTS = (
    '"""The statuses."""\n\nfrom app.status import created, ok\n\n\n'
    "def test_created() -> None:\n    assert created() == 201\n\n\n"
    "def test_ok() -> None:\n    assert ok() == 200\n"
)
SETTINGS = "# Settings of the service.\n" + "".join(f"OPTION_{i} = {i}\n" for i in range(20))
FILES = {"app/status.py": STATUS, "tests/test_status.py": TESTS, "app/settings.py": SETTINGS}
LOCKED = "app/settings.py"


class Repairing:
    """A provider whose every repair answer is `answer`; it records each request."""

    name = "gemini"
    repairs = True

    def __init__(self, answer: PhaseOutput) -> None:
        self.answer = answer
        self.requests: list[PhaseRequest] = []

    async def run_phase(self, request: PhaseRequest, reporter: Reporter) -> PhaseOutput:
        assert request.phase == "repair"
        self.requests.append(request)
        return self.answer


async def failed_version(js: JetStreamContext) -> str:
    """The log of a version whose own tests failed in round 0; its generation id."""
    writer = await requested_generation(js, provider="gemini", locked_paths=[LOCKED])
    for path, content in FILES.items():
        await writer.emit(
            FileWritten,
            path=path,
            sha256=content_sha256(content),
            size=len(content.encode()),
            phase="api",
            content=content,
        )
    await writer.emit(VerifyStarted, round=0)
    await writer.emit(
        VerifyCompleted,
        round=0,
        verdict="failed",
        passed=1,
        failed=1,
        failures=[
            FailedTest(
                test_id="tests/test_status.py::test_created",
                message="NameError: name 'HTTPStatus' is not defined",
            )
        ],
    )
    return writer.generation_id


async def repair(js: JetStreamContext, answer: PhaseOutput) -> tuple[Repairing, list[Event]]:
    """Run the repair loop on a failed version whose model answers `answer`; the provider
    and the log's events."""
    generation_id = await failed_version(js)
    history = await read_generation(js, generation_id)
    state = fold(e.event for e in history)
    assert state is not None
    writer = FoldingWriter.after(js, history, source="test", state=state)
    cancelled = asyncio.Event()
    producer = PhaseProducer(writer, state, cancelled, {})
    no_verifier: Any = None  # a rejected round ends the loop: no verifier is asked
    loop = RepairLoop(
        js, no_verifier, writer, state, cancelled, producer, rounds=2, parent_passed=False
    )
    provider = Repairing(answer)
    await loop.run(provider)
    return provider, [e.event for e in await read_generation(js, generation_id)]


def change(path: str, content: str, **kwargs: str) -> PhaseOutput:
    """An answer writing `path`, with the true fix of app/status.py alongside: a rejected
    answer is refused whole, its good part included."""
    files = [GeneratedFile(path=path, content=content, **kwargs)]
    if path != "app/status.py":
        files.append(GeneratedFile(path="app/status.py", content=FIXED))
    return PhaseOutput(files=files, summary="repaired")


CASES = {
    "dotdot": (change("../x.py", "X = 1\n"), "unsafe_path", "../x.py"),
    "nested-dotdot": (change("app/../../x.py", "X = 1\n"), "unsafe_path", "app/../../x.py"),
    "absolute": (change("/etc/x.py", "X = 1\n"), "unsafe_path", "/etc/x.py"),
    "git-config": (change(".git/config", "[core]\n"), "unsafe_path", ".git/config"),
    "emptied": (change("app/status.py", "\n"), "dropped", "app/status.py"),
    "shrunk": (
        change("app/status.py", '"""HTTP statuses."""\n\nfrom http import HTTPStatus\n'),
        "shrunk",
        "app/status.py",
    ),
    "placeholder": (
        change("app/status.py", FIXED + "\n# ... existing code ...\n"),
        "placeholder",
        "app/status.py",
    ),
    "locked": (change(LOCKED, SETTINGS + "OPTION_X = 1\n"), "locked", LOCKED),
    "locked-deleted": (
        PhaseOutput(
            files=[GeneratedFile(path="app/status.py", content=FIXED)],
            deletions=[Deletion(path=LOCKED, reason="unused")],
        ),
        "locked",
        LOCKED,
    ),
    "unsafe-deletion": (
        PhaseOutput(
            files=[GeneratedFile(path="app/status.py", content=FIXED)],
            deletions=[Deletion(path="../outside.py", reason="stale")],
        ),
        "unsafe_path",
        "../outside.py",
    ),
}


@pytest.mark.parametrize(("answer", "rule", "path"), CASES.values(), ids=CASES.keys())
async def test_a_repair_breaking_a_guard_rule_is_retried_once_then_rejected_with_the_rule(
    js: JetStreamContext, answer: PhaseOutput, rule: str, path: str
) -> None:
    provider, events = await repair(js, answer)

    # One corrective retry, which names the path and what was wrong with it.
    assert [r.attempt for r in provider.requests] == [1, 2]
    assert provider.requests[0].correction is None
    correction = provider.requests[1].correction
    assert correction is not None and path in correction and "repair" in correction
    [retry] = [e for e in events if isinstance(e, LlmRetrying)]
    assert retry.phase == "repair" and retry.reason == "guard_rejected" and path in retry.message
    # The round fails with the rule named in its event …
    [completed] = [e for e in events if isinstance(e, RepairCompleted)]
    assert completed.round == 1 and completed.outcome == "rejected"
    assert completed.rules == [rule]
    assert f"rules: {rule}" in completed.reason and path in completed.reason
    assert completed.files_changed == [] and completed.deleted == []
    # … after which nothing was written or deleted: not the bad file, not the good fix.
    started = next(i for i, e in enumerate(events) if isinstance(e, RepairStarted))
    assert not [e for e in events[started:] if isinstance(e, FileWritten | FileDeleted)]
    state = fold(events)
    assert state is not None
    assert state.file_contents() == FILES
    assert state.deleted == {}
    v = state.summary.verification
    assert v is not None and [r.status for r in v.repairs] == ["rejected"]
    assert v.repairs[0].rules == [rule]
    assert v.headline.endswith(f"(round 1 rejected: {rule})"), v.headline


@pytest.mark.parametrize(
    "answer",
    [
        PhaseOutput(files=[GeneratedFile(path="app/status.py", content=FIXED)]),
        change("app/constants.py", "X = 1\n"),
        PhaseOutput(
            files=[
                GeneratedFile(
                    path="app/status.py",
                    content='"""HTTP statuses."""\n\nfrom http import HTTPStatus\n',
                    rewrite_reason="the module shrinks to the import the tests need",
                )
            ]
        ),
    ],
    ids=["fix", "new-file", "explicit-rewrite"],
)
async def test_a_clean_repair_passes_the_guard_at_once(
    js: JetStreamContext, answer: PhaseOutput
) -> None:
    # The control: the same producer takes a clean answer without a retry, so the
    # rejections above are the guard's, not the harness's.
    generation_id = await failed_version(js)
    history = await read_generation(js, generation_id)
    state = fold(e.event for e in history)
    assert state is not None
    writer = FoldingWriter.after(js, history, source="test", state=state)
    producer = PhaseProducer(writer, state, asyncio.Event(), {})
    provider = Repairing(answer)

    checked, rules, reason = await producer.produce_repair(provider, RepairBrief(round=1, rounds=2))

    assert checked is not None and rules == [] and reason == ""
    assert {f.path for f in checked.files} == {f.path for f in answer.files}
    assert [r.attempt for r in provider.requests] == [1]
