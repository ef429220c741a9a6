"""The policy around each model call: retries, waits, continuations, progress, secrets scrubbed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from contracts.phases import PhaseOutput
from services.orchestrator.providers.base import ProviderError
from services.orchestrator.providers.conversation import (
    CallFailed,
    CallPolicy,
    CallResult,
    Progress,
    converse,
    retry_after_seconds,
    scrub,
)
from tests.fakes import RecordingReporter, phase_request

BUDGET = 200_000


def test_retry_after_takes_seconds_or_a_date() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("1.5") == 1.5
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_seconds(later) or 0) <= 31
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_scrub_removes_secrets() -> None:
    assert scrub("key sk-123456 rejected", "sk-123456", None) == "key *** rejected"


GOOD = json.dumps({"files": [{"path": "a.py", "content": "A = 1\n"}], "summary": "ok"})


class ScriptedCall:
    """Answers (or failures) in order; records the prompts."""

    def __init__(self, *answers: CallResult | CallFailed) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []

    async def __call__(self, *, system: str, prompt: str, progress: Progress) -> CallResult:
        self.prompts.append(prompt)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, CallFailed):
            raise answer
        await progress(len(answer.text), answer.tokens_out)
        return answer


POLICY = CallPolicy(max_retries=2, retry_delay_s=0.01, max_retry_delay_s=5.0, context_chars=BUDGET)


async def talk(
    call: ScriptedCall, policy: CallPolicy = POLICY
) -> tuple[PhaseOutput, RecordingReporter]:
    reporter = RecordingReporter()
    output = await converse(
        phase_request(), reporter, provider="p", label="P", model="m", call=call, policy=policy
    )
    return output, reporter


async def test_a_rate_limit_without_a_delay_backs_off() -> None:
    call = ScriptedCall(
        CallFailed("rate_limited", "rate limited by P"), CallResult(text=GOOD, finish="stop")
    )

    output, reporter = await talk(call)

    assert [f.path for f in output.files] == ["a.py"]
    [retry] = reporter.of("retrying")
    assert retry["reason"] == "rate_limited" and 0 < retry["delay_s"] < 0.05


async def test_a_wait_longer_than_allowed_fails_instead_of_hanging() -> None:
    call = ScriptedCall(CallFailed("rate_limited", "rate limited by P", retry_after_s=3600))

    with pytest.raises(ProviderError) as caught:
        await talk(call)

    assert caught.value.retryable
    assert "asks to wait 3600 s" in caught.value.message
    assert "KILN_LLM_MAX_RETRY_DELAY" in caught.value.message


@pytest.mark.parametrize(
    ("kind", "error_kind"),
    [
        ("quota", "quota"),
        ("auth", "auth"),
        ("too_large", "limits"),
        ("bad_request", "provider"),
        ("not_found", "provider"),
        ("blocked", "provider"),
    ],
)
async def test_final_failures_are_not_retried(kind: str, error_kind: str) -> None:
    call = ScriptedCall(CallFailed(kind, "said so"))  # type: ignore[arg-type]

    with pytest.raises(ProviderError) as caught:
        await talk(call)

    assert caught.value.kind == error_kind and not caught.value.retryable
    assert caught.value.message == "said so"
    assert len(call.prompts) == 1


async def test_an_early_stop_is_an_unreadable_answer() -> None:
    call = ScriptedCall(
        CallResult(text="", finish="other", finish_detail="finish reason SAFETY"),
        CallResult(text=GOOD, finish="stop"),
    )

    output, reporter = await talk(call)

    assert len(output.files) == 1
    [retry] = reporter.of("retrying")
    assert "finish reason SAFETY" in retry["message"]


async def test_files_saved_before_a_cut_are_merged_with_the_rest() -> None:
    cut = '{"files": [{"path": "a.py", "content": "A = 1\\n"}, {"path": "b.py", "content": "B'
    rest = json.dumps(
        {
            "files": [{"path": "b.py", "content": "B = 2\n"}],
            "deletions": [{"path": "old.py", "reason": "replaced"}],
            "summary": "done",
        }
    )
    call = ScriptedCall(
        CallResult(text=cut, finish="max_tokens"), CallResult(text=rest, finish="stop")
    )

    output, reporter = await talk(call)

    assert [(f.path, f.content) for f in output.files] == [("a.py", "A = 1\n"), ("b.py", "B = 2\n")]
    assert [d.path for d in output.deletions] == ["old.py"]
    assert output.summary == "done"
    assert "do not write them again): a.py\n" in call.prompts[1]
    assert [c["attempt"] for c in reporter.of("llm_called")] == [1, 2]


async def test_progress_counts_every_call_of_the_phase() -> None:
    call = ScriptedCall(
        CallResult(text="nope", finish="stop", tokens_out=3),
        CallResult(text=GOOD, finish="stop", tokens_out=10),
    )

    _, reporter = await talk(call)

    progress = reporter.of("progress")
    assert progress[-1]["bytes_received"] == len("nope") + len(GOOD)
    assert progress[-1]["tokens_received"] == 13
