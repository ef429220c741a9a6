"""The shape of a chat model's answer for one phase, and how it is read.

The phase output (`files`, `deletions`, `summary`) as a JSON schema derived from
`contracts.phases.PhaseOutput`, decoded with msgspec; from an answer cut off at the output
limit, the files that were completed before the cut.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from contracts.phases import GeneratedFile, PhaseOutput


def _inlined_schema() -> dict[str, Any]:
    """PhaseOutput's JSON schema with every $ref resolved."""
    schema = msgspec.json.schema(PhaseOutput)
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items() if k not in ("title", "default")}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return dict(resolve(schema))


def output_json_schema() -> dict[str, Any]:
    """The phase output as a strict JSON schema (OpenAI `response_format`).

    Strict mode wants every property required and no others allowed, so optional
    properties are required-but-nullable.
    """

    def strict(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: strict(v) for k, v in node.items()}
            if node.get("type") == "object":
                node["required"] = list(node.get("properties", {}))
                node["additionalProperties"] = False
            if "anyOf" in node and {"type": "null"} in node["anyOf"]:
                others = [o for o in node.pop("anyOf") if o != {"type": "null"}]
                node["type"] = [others[0]["type"], "null"]
            return node
        if isinstance(node, list):
            return [strict(v) for v in node]
        return node

    return dict(strict(_inlined_schema()))


def gemini_response_schema() -> dict[str, Any]:
    """The phase output as a Gemini `response_schema` (the OpenAPI subset Gemini takes).

    Properties are ordered so that `files` comes first and each file's `path` precedes its
    `content`: an answer cut off at the output limit still has its completed files.
    """

    def convert(node: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "anyOf" in node:
            others = [o for o in node["anyOf"] if o != {"type": "null"}]
            out = convert(others[0])
            out["nullable"] = True
        else:
            out["type"] = str(node["type"]).upper()
        if "description" in node:
            out["description"] = node["description"]
        if node.get("type") == "array":
            out["items"] = convert(node["items"])
        if node.get("type") == "object":
            props = node.get("properties", {})
            out["properties"] = {k: convert(v) for k, v in props.items()}
            out["property_ordering"] = list(props)
            out["required"] = [
                k for k, v in props.items() if "anyOf" not in v or k in node.get("required", [])
            ]
        return out

    return convert(_inlined_schema())


class InvalidOutput(ValueError):
    """An answer that is not a phase output; `problem` says why, briefly."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


_output_decoder = msgspec.json.Decoder(PhaseOutput)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?|\n?```\s*$")


def _strip_fences(text: str) -> str:
    """The answer without the Markdown fence some models wrap JSON in."""
    text = text.strip()
    if text.startswith("```"):
        text = _FENCE.sub("", text).strip()
    return text


def decode_output(text: str) -> PhaseOutput:
    """The phase output in `text`, or InvalidOutput saying what is wrong with it."""
    body = _strip_fences(text)
    if not body:
        raise InvalidOutput("the answer was empty")
    try:
        return _output_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidOutput(f"the JSON does not have the phase-output shape: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidOutput(f"the answer is not valid JSON: {exc}") from None


_FILES_KEY = re.compile(r'"files"\s*:\s*\[')


def complete_files(text: str) -> list[GeneratedFile]:
    """The files an answer cut off at the output limit completed before the cut.

    A file object counts only when it closed (its content string ended and its `}` came),
    so the file being written when the answer was cut is never among them.
    """
    body = _strip_fences(text)
    match = _FILES_KEY.search(body)
    if match is None:
        return []
    decoder = json.JSONDecoder()
    position = match.end()
    files: list[GeneratedFile] = []
    while True:
        while position < len(body) and body[position] in " \t\r\n,":
            position += 1
        if position >= len(body) or body[position] != "{":
            break
        try:
            value, position = decoder.raw_decode(body, position)
            files.append(msgspec.convert(value, GeneratedFile))
        except (ValueError, msgspec.ValidationError):
            break
    return files
