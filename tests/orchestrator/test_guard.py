"""The data-loss guard and the output checks, as rules a reader can check one by one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.phases import Deletion, GeneratedFile, PhaseOutput
from services.orchestrator import guard
from services.orchestrator.guard import check_output, find_elision, missing_parent_files

PARENT = {
    "app/main.py": "import x\n" + "def handler():\n    return 1\n" * 20,
    "README.md": "# Shop\n\nA shop.\n" * 5,
    "app/locked.py": "SECRET_SAUCE = 1\n",
}


def check(*files: GeneratedFile, deletions: list[Deletion] | None = None) -> list[str]:
    _, violations = check_output(
        PhaseOutput(files=list(files), deletions=deletions or []),
        current=PARENT,
        locked=frozenset({"app/locked.py"}),
    )
    return [v.rule for v in violations]


def test_a_complete_change_passes() -> None:
    grown = PARENT["app/main.py"] + "def more():\n    return 2\n"
    assert check(GeneratedFile("app/main.py", grown), GeneratedFile("app/new.py", "x = 1\n")) == []


def test_an_emptied_file_is_a_drop() -> None:
    assert check(GeneratedFile("README.md", "   \n")) == ["dropped"]


def test_a_file_halved_without_a_reason_is_rejected() -> None:
    assert check(GeneratedFile("app/main.py", "import x\n")) == ["shrunk"]


def test_an_explicit_rewrite_may_shrink() -> None:
    assert (
        check(GeneratedFile("app/main.py", "import x\n", rewrite_reason="collapsed the handlers"))
        == []
    )


@pytest.mark.parametrize(
    "placeholder",
    [
        "# rest of the code remains the same",
        "// ... existing code ...",
        "# unchanged",
        "    # ...",
        "# previous implementation here",
        "(code omitted for brevity)",
        "<!-- no changes -->",
        "REST OF THE FILE IS UNCHANGED",
        "# Remaining methods unchanged",
        "/* keep existing */",
    ],
)
def test_elision_placeholders_are_rejected(placeholder: str) -> None:
    content = PARENT["app/main.py"] + placeholder + "\n"
    assert check(GeneratedFile("app/main.py", content)) == ["placeholder"]


@pytest.mark.parametrize("index", range(len(guard.ELISION_PATTERNS)))
def test_a_pattern_is_only_skipped_when_its_text_cannot_match(index: int) -> None:
    # The checks before each pattern are necessary conditions of a match, so skipping a
    # pattern never misses a placeholder.
    pattern, may_match = guard._ELISION_RULES[index]
    examples = [
        "rest of the code remains the same", "... existing handlers ...", "# unchanged",
        "remaining methods unchanged", "content omitted", "omitted for brevity", "  # ...",
        "/* keep existing */", "# Existing Code Here", "previous  code here",
    ]  # fmt: skip
    for example in examples:
        lowered = example.lower()
        present = [word for word in guard._LEAD_WORDS if word in lowered]
        if pattern.search(example):
            assert may_match(lowered, present), example


def every_pattern(content: str, before: str | None) -> str | None:
    """`find_elision` without its shortcuts: every pattern searched in every text."""
    for pattern in guard.ELISION_PATTERNS:
        match = pattern.search(content)
        if match and not (before and pattern.search(before)):
            return match.group(0).strip()
    return None


FRAGMENTS = [
    "rest of", "the", "code", "file", "remains", "the same", "unchanged", "...", "existing",
    "previous", "original", "remaining", "implementation", "content", "methods", "method",
    "here", "goes here", "omitted", "for brevity", "as before", "no changes", "keep",
    "same as before", "#", "//", "/*", "<!--", "--", "other", "is", "x = 1", "EXISTING",
    "Rest Of", "OMITTED",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from([" ", "  ", "\n", "", " \n "])),
        max_size=12,
    ),
    st.one_of(st.none(), st.sampled_from(["", "# unchanged\n", "x ... existing y ...\n"])),
)
def test_the_shortcuts_find_what_every_pattern_finds(
    parts: list[tuple[str, str]], before: str | None
) -> None:
    content = "".join(word + gap for word, gap in parts)
    assert find_elision(content, before) == every_pattern(content, before)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([*guard._LEAD_WORDS, "e", "s", ".", " ", "x", "\n"]), max_size=16))
def test_the_one_pass_search_finds_every_lead_word_ten_searches_find(parts: list[str]) -> None:
    # Glued without gaps, words overlap ("same as beforexisting", "....."): each is found.
    text = "".join(parts)
    assert guard.lead_words_in(text) == {w for w in guard._LEAD_WORDS if w in text}


def test_overlapping_lead_words_are_all_found() -> None:
    assert guard.lead_words_in("no changesame as beforexisting") == {
        "no changes",
        "same as before",
        "existing",
    }
    assert guard.lead_words_in("previousame as before") == {"previous", "same as before"}


def test_only_words_that_may_overlap_another_search_the_text_again() -> None:
    # The search without overlaps is exact after any other word: none of them can share
    # characters with a word found after it.
    assert {"no changes", "previous", "same as before"} == guard._MAY_HIDE


def test_a_placeholder_already_in_the_parent_is_not_new() -> None:
    assert find_elision("# unchanged\nx = 1\n", "# unchanged\n") is None


def test_python_ellipsis_bodies_are_not_placeholders() -> None:
    assert find_elision("class P(Protocol):\n    def f(self) -> int: ...\n", None) is None


def test_locked_files_may_not_change_or_go() -> None:
    assert check(GeneratedFile("app/locked.py", "SECRET_SAUCE = 2\n")) == ["locked"]
    assert check(deletions=[Deletion("app/locked.py", "cleanup")]) == ["locked"]


def test_a_deletion_needs_a_reason() -> None:
    assert check(deletions=[Deletion("README.md", " ")]) == ["deletion_reason"]


def test_unsafe_paths_are_rejected() -> None:
    assert check(GeneratedFile("../../etc/passwd", "x")) == ["unsafe_path"]
    assert check(deletions=[Deletion("/etc/x", "why not")]) == ["unsafe_path"]


def test_a_file_over_the_size_limit_is_rejected() -> None:
    assert check(GeneratedFile("big.txt", "x" * (10 * 1024 * 1024))) == ["too_large"]


def test_writing_and_deleting_one_path_is_a_contradiction() -> None:
    assert check(
        GeneratedFile("README.md", PARENT["README.md"]), deletions=[Deletion("README.md", "x")]
    ) == ["duplicate"]


def test_paths_come_back_normalised() -> None:
    checked, violations = check_output(
        PhaseOutput(files=[GeneratedFile("cafe\u0301.py", "x = 1\n")]),
        current={},
        locked=frozenset(),
    )
    assert violations == [] and checked.files[0].path == "caf\u00e9.py"


def test_missing_parent_files_are_named() -> None:
    assert missing_parent_files(PARENT, {"README.md": "x"}, {"app/locked.py"}) == ["app/main.py"]
