"""The phased prompts, the shape of the answer, and the policy around each call (pure logic,
with a scripted model call; the real clients are in test_gemini.py and test_openai.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import msgspec
import pytest

from contracts.codec import content_sha256
from contracts.phases import GeneratedFile, PhaseOutput
from services.orchestrator.providers.base import ProviderError
from services.orchestrator.providers.prompts import (
    LARGE_FILE_CHARS,
    CallFailed,
    CallPolicy,
    CallResult,
    InvalidOutput,
    Progress,
    complete_files,
    context_files,
    converse,
    decode_output,
    gemini_response_schema,
    output_json_schema,
    phase_prompt,
    retry_after_seconds,
    scrub,
    system_instruction,
)
from tests.fakes import RecordingReporter, phase_request

BUDGET = 200_000


def test_the_system_instruction_states_every_rule() -> None:
    text = system_instruction()
    for rule in (
        "JSON object",
        "Every file is complete",
        "... existing code ...",
        "relative POSIX paths",
        '".."',
        "deletions",
        "rewrite_reason",
        "locked path",
        "524,288 bytes",
    ):
        assert rule in text, rule


def test_a_phase_prompt_has_the_phase_the_plan_the_schema_the_prompt_and_the_goal() -> None:
    prompt = phase_prompt(phase_request("schemas"), context_chars=BUDGET)

    assert prompt.startswith("## Phase: schemas\n")
    assert "Entities: Product, OrderLine" in prompt
    assert '"name": "Product"' in prompt and '"type": "integer"' in prompt
    assert '"values"' not in prompt, "empty members are left out of the schema"
    assert "### The user's prompt\na small shop" in prompt
    assert "1. plan — Planning the project (done)" in prompt
    assert "3. schemas — Writing the request and response schemas (this phase)" in prompt
    assert "4. api — Writing the API (later)" in prompt
    assert "## What this phase must produce\nWrite the request and response schemas" in prompt
    assert "None yet" in prompt
    assert "Locked paths" not in prompt and "rejected" not in prompt


def test_locked_paths_correction_and_note_are_in_the_prompt() -> None:
    request = phase_request(locked_paths=["app/keep.py"], correction="app/x.py — shrunk", attempt=2)
    prompt = phase_prompt(request, context_chars=BUDGET, note="Problem: not JSON.")

    assert "## Locked paths (never create, change or delete them)\n- app/keep.py" in prompt
    assert "## Your previous output was rejected\napp/x.py — shrunk" in prompt
    assert "## Your previous answer could not be read\nProblem: not JSON." in prompt


def test_a_continuation_lists_what_is_saved() -> None:
    prompt = phase_prompt(phase_request(), context_chars=BUDGET, done=["b.py", "a.py"])
    assert "Already saved from this phase (do not write them again): a.py, b.py\n" in prompt


def test_the_files_so_far_are_quoted_whole_within_the_budget() -> None:
    files = {"app/models/product.py": "class Product:\n    pass\n", "README.md": "# Shop\n"}
    prompt = phase_prompt(phase_request("api", files=files), context_chars=BUDGET)

    assert "## The files so far (2 files, " in prompt
    assert "=== FILE app/models/product.py (" in prompt
    assert "class Product:\n    pass\n" in prompt
    assert "Summarised" not in prompt


def test_a_large_file_is_summarised_and_the_prompt_says_so() -> None:
    lines = [f"line_{i} = {i}" for i in range(5_000)]
    big = "\n".join(lines) + "\n"
    assert len(big) > LARGE_FILE_CHARS
    request = phase_request("api", files={"app/big.py": big, "app/small.py": "X = 1\n"})

    prompt = phase_prompt(request, context_chars=BUDGET)

    assert "Summarised (shown only by their first and last lines" in prompt
    assert ": app/big.py." in prompt
    assert f"sha256 {content_sha256(big)}" in prompt
    assert f"{len(big.encode()):,} bytes, 5,000 lines" in prompt
    assert "line_0 = 0" in prompt and "line_4999 = 4999" in prompt
    assert "line_2500 = 2500" not in prompt
    assert "[... 4,980 lines not shown ...]" in prompt
    assert "=== FILE app/small.py" in prompt


def test_a_summary_of_a_few_long_lines_shows_each_line_once() -> None:
    big = "".join(f"n{i:02d} = '{'x' * 1500}'\n" for i in range(17))
    assert len(big) > LARGE_FILE_CHARS
    request = phase_request("api", files={"app/wide.py": big})

    [shown] = context_files(request, BUDGET)

    assert shown.mode == "summary"
    for i in range(17):
        assert shown.text.count(f"n{i:02d} = ") == 1
    assert "not shown" not in shown.text
    assert len(shown.text) < 17 * 400, "each line is cut"


def test_past_the_budget_relevant_files_are_quoted_and_the_rest_summarised_or_listed() -> None:
    files = {f"app/other_{i}.py": f"# other {i}\n" + "x = 1\n" * 300 for i in range(30)}
    files["app/models/product.py"] = "class Product:\n" + "    a = 1\n" * 100
    files["PLAN.md"] = "# Plan\n- models\n"
    request = phase_request("models", files=files)

    shown = {c.path: c.mode for c in context_files(request, 6_000)}

    assert shown["PLAN.md"] == "full"
    assert shown["app/models/product.py"] == "full"
    assert set(shown.values()) == {"full", "summary", "listed"}
    assert list(shown) == sorted(shown), "shown in path order"
    prompt = phase_prompt(request, context_chars=6_000)
    assert "Only listed (over the context budget, not shown at all)" in prompt
    listed = [p for p, m in shown.items() if m == "listed"]
    assert f"- {listed[0]} (" in prompt


def test_an_iteration_gets_the_modification_and_what_changed_since_the_parent() -> None:
    parent = {"app/models/product.py": "class Product:\n    pass\n", "app/old.py": "OLD = 1\n"}
    files = {"app/models/product.py": "class Product:\n    price = 0\n", "app/new.py": "N = 1\n"}
    request = phase_request(
        "api", kind="iterate", prompt="add a price to products", files=files, parent_files=parent
    )

    prompt = phase_prompt(request, context_chars=BUDGET)

    assert "### The modification to make" in prompt
    assert "started as the parent version's files" in prompt
    assert "add a price to products" in prompt
    assert "Changed or added in this iteration so far: app/models/product.py, app/new.py" in prompt
    assert "Deleted in this iteration so far: app/old.py" in prompt
    assert "### The user's prompt" not in prompt


def test_decoding_a_good_answer_and_a_fenced_one() -> None:
    body = {"files": [{"path": "a.py", "content": "A = 1\n"}], "deletions": [], "summary": "s"}
    assert decode_output(json.dumps(body)).files == [GeneratedFile("a.py", "A = 1\n")]
    fenced = "```json\n" + json.dumps(body) + "\n```"
    assert decode_output(fenced).summary == "s"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the answer was empty"),
        ('{"files": [', "not valid JSON"),
        ('{"files": "x"}', "does not have the phase-output shape"),
        ('[{"path": "a"}]', "does not have the phase-output shape"),
        ("Sure! Here are the files:", "not valid JSON"),
    ],
)
def test_decoding_an_unreadable_answer_says_why(text: str, problem: str) -> None:
    with pytest.raises(InvalidOutput) as caught:
        decode_output(text)
    assert problem in caught.value.problem


def test_from_a_cut_answer_only_completed_files_are_kept() -> None:
    first = {"path": "a.py", "content": 'S = "{\\"files\\": [" \n'}
    second = {"path": "b.py", "content": "B = 2\n", "rewrite_reason": None}
    text = '{"files": [' + json.dumps(first) + ", " + json.dumps(second) + ', {"path": "c.py", "con'

    files = complete_files(text)

    assert [f.path for f in files] == ["a.py", "b.py"]
    assert files[0].content == first["content"]
    assert complete_files('{"files": [{"path": "a.py", "content": "unterminated') == []
    assert complete_files('{"summary": "no files yet"') == []
    assert complete_files('{"files": [{"path": "a.py"}, {"path": "b.py", "content": ""}]}') == []


def test_the_response_schemas_are_the_phase_output_shape() -> None:
    fields = list(msgspec.structs.fields(PhaseOutput))
    names = [f.name for f in fields]
    gemini = gemini_response_schema()
    assert list(gemini["properties"]) == names == gemini["property_ordering"]
    file_schema = gemini["properties"]["files"]["items"]
    assert file_schema["property_ordering"][:2] == ["path", "content"]
    assert file_schema["properties"]["rewrite_reason"]["nullable"] is True
    assert "$ref" not in json.dumps(gemini)

    strict = output_json_schema()
    assert list(strict["properties"]) == names == strict["required"]
    item = strict["properties"]["files"]["items"]
    assert item["required"] == ["path", "content", "rewrite_reason"]
    assert item["properties"]["rewrite_reason"]["type"] == ["string", "null"]
    assert item["additionalProperties"] is False
    assert "$ref" not in json.dumps(strict)


def test_retry_after_takes_seconds_or_a_date() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("1.5") == 1.5
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_seconds(later) or 0) <= 31
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_scrub_removes_secrets() -> None:
    assert scrub("key sk-123456 rejected", "sk-123456", None) == "key *** rejected"


# ---------------------------------------------------------------------------------------
# The policy, with a scripted model call
# ---------------------------------------------------------------------------------------

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
