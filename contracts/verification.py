"""The verifier's wire: the command that asks for a version to be verified, and its answer.

The orchestrator publishes `VerifyRequested` to the work queue (`kiln.verify.requests`);
one verifier takes it, reads the version's files from the generation's own log (every
event up to `upto_seq`), runs the version's tests, lint and compile check in a sandbox
and publishes one `VerifyResult` on `kiln.verify.results.<generation_id>.<round>` with
`Nats-Msg-Id: <generation_id>:<round>`, so a result published twice is stored once. The
verifier never writes a generation's subject: the orchestrator turns the result into
`verify.*` events.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from contracts.codec import decode_as
from contracts.events import MAX_OUTPUT_TAIL_CHARS as MAX_OUTPUT_TAIL_CHARS  # the result's cap too
from contracts.events import FailedTest, Id

VerifyOutcome = Literal["completed", "unavailable"]
Round = Annotated[int, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]

MAX_FAILURE_MESSAGE_CHARS = 2000
MAX_FAILURES = 20
MAX_LINT_DETAILS = 20


class VerifyRequested(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="verify.requested"
):
    """Verify the version a generation's log holds once its event `upto_seq` is applied."""

    generation_id: Id
    project_id: Id
    round: Round = 0
    upto_seq: Annotated[int, msgspec.Meta(ge=1)]
    at: datetime


class VerifyResult(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="verify.result"
):
    """What one verification run found.

    `completed`: the checks ran; the counts say what passed (the tests may still have
    failed). `unavailable`: nothing was judged, `reason` says why (no sandbox, a dependency
    outside the verify runtime — `unverified: needs <name>` —, the version could not be read).
    """

    generation_id: Id
    project_id: Id
    round: Round = 0
    outcome: VerifyOutcome
    reason: str = ""
    passed: Count = 0
    failed: Count = 0
    errors: Count = 0
    skipped: Count = 0
    duration_ms: Count = 0
    timed_out: bool = False
    exit_code: int | None = None
    lint_findings: Count = 0
    format_findings: Count = 0
    lint_details: list[str] = []
    compile_errors: list[str] = []
    failures: list[FailedTest] = []
    output_tail: str = ""
    verifier: str = ""
    at: datetime

    @property
    def tests_passed(self) -> bool:
        """True when the run completed with no failed or erroring test and no timeout."""
        return (
            self.outcome == "completed"
            and not self.failed
            and not self.errors
            and not self.timed_out
            and not self.compile_errors
        )


AnyVerifyMessage = VerifyRequested | VerifyResult

_request_decoder = msgspec.json.Decoder(VerifyRequested)
_result_decoder = msgspec.json.Decoder(VerifyResult)


class VerifyDecodeError(ValueError):
    """Bytes that are not a valid verify message; the message says what is wrong."""


def decode_verify_request(data: bytes) -> VerifyRequested:
    """A verify command from JSON bytes, or VerifyDecodeError."""
    return decode_as(_request_decoder, data, "verify command", VerifyDecodeError)


def decode_verify_result(data: bytes) -> VerifyResult:
    """A verify result from JSON bytes, or VerifyDecodeError."""
    return decode_as(_result_decoder, data, "verify result", VerifyDecodeError)


def result_msg_id(generation_id: str, round: int) -> str:
    """The `Nats-Msg-Id` of a result: one stored result per generation and round."""
    return f"{generation_id}:{round}"


def request_msg_id(generation_id: str, round: int) -> str:
    """The `Nats-Msg-Id` of a command: a command published twice is queued once."""
    return f"verify:{generation_id}:{round}"
