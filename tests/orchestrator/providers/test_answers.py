"""A model's answer is read as a phase output, or refused saying why; a cut answer keeps its complete files."""

from __future__ import annotations

import json

import msgspec
import pytest

from contracts.phases import GeneratedFile, PhaseOutput
from services.orchestrator.providers.answers import (
    InvalidOutput,
    complete_files,
    decode_output,
    gemini_response_schema,
    output_json_schema,
)

BUDGET = 200_000


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
