"""What a chat model is asked for one phase: the rules, the phase, the files within a budget."""

from __future__ import annotations

from contracts.codec import content_sha256
from contracts.events import FailedTest
from services.orchestrator.providers.base import REPAIR_OUTPUT_CHARS, RepairBrief
from services.orchestrator.providers.prompts import (
    LARGE_FILE_CHARS,
    REPAIR_MESSAGE_CHARS,
    context_files,
    phase_prompt,
    system_instruction,
)
from tests.fakes import phase_request

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


def test_a_repair_prompt_has_the_failures_the_capped_output_the_plan_and_the_files() -> None:
    # The captured output ends with pytest's summary; its start is past the cap.
    output = "".join(f"noise line {i:04d}\n" for i in range(1_000))
    output += "FAILED tests/test_status.py::test_created - NameError: name 'HTTPStatus'\n"
    output += "1 failed, 1 passed in 0.05s\n"
    assert len(output) > 2 * REPAIR_OUTPUT_CHARS
    long_message = "E   " + "y" * (REPAIR_MESSAGE_CHARS + 500)
    brief = RepairBrief(
        round=1,
        rounds=2,
        failed=2,
        errors=1,
        failures=[
            FailedTest(
                test_id="tests/test_status.py::test_created",
                message="NameError: name 'HTTPStatus' is not defined",
            ),
            FailedTest(test_id="tests/test_status.py::test_ok", message=long_message),
        ],
        output=output,
        files=["tests/test_status.py", "app/status.py"],
    )
    files = {
        "PLAN.md": "# Plan\n- app/status.py: the statuses\n",
        "app/status.py": "def created() -> int:\n    return HTTPStatus.CREATED\n",
        "tests/test_status.py": "from app.status import created\n",
    }
    request = phase_request("repair", files=files, repair=brief)

    prompt = phase_prompt(request, context_chars=BUDGET)

    assert prompt.startswith("## Phase: repair\nRepair round 1 of at most 2.")
    assert "3 failed or errored" in prompt
    # The plan: the phases, all done, and PLAN.md quoted among the files.
    assert "## The plan\n1. plan — Planning the project (done)" in prompt
    assert "=== FILE PLAN.md (" in prompt and "- app/status.py: the statuses" in prompt
    # The failing tests: ids and messages, each message capped.
    assert "### tests/test_status.py::test_created (failure)" in prompt
    assert "NameError: name 'HTTPStatus' is not defined" in prompt
    assert "### tests/test_status.py::test_ok (failure)" in prompt
    assert long_message[:REPAIR_MESSAGE_CHARS] + "\n[... cut ...]" in prompt
    assert long_message not in prompt
    assert "(and 1 more not listed)" in prompt
    # The captured output: its end, within the cap, and said to be cut.
    section = prompt.split("## The end of the test run's output\n```\n", 1)[1]
    shown = section.split("\n```", 1)[0]
    assert shown.startswith("[... cut ...]\n")
    assert len(shown) <= REPAIR_OUTPUT_CHARS + len("[... cut ...]\n")
    assert shown.endswith("1 failed, 1 passed in 0.05s")
    assert "FAILED tests/test_status.py::test_created - NameError" in shown
    assert "noise line 0000" not in prompt and "noise line 0999" in shown
    # The files the failures point at, quoted whole.
    assert "## Files the failures point at (quoted first below)\n- tests/test_status.py\n" in prompt
    assert "=== FILE app/status.py (" in prompt
    assert "never add skip or xfail markers" in prompt


def test_a_repair_prompt_without_captured_output_has_no_output_section() -> None:
    brief = RepairBrief(
        round=2, rounds=2, failed=1, failures=[FailedTest(test_id="t.py::x", message="boom")]
    )
    prompt = phase_prompt(phase_request("repair", repair=brief), context_chars=BUDGET)

    assert "### t.py::x (failure)\n```\nboom\n```" in prompt
    assert "test run's output" not in prompt
    assert "[... cut ...]" not in prompt
