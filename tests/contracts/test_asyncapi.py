"""The AsyncAPI document: generated from the contracts, consistent, and committed unchanged."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts import subjects
from contracts.asyncapi import document, render
from contracts.codec import encode
from contracts.commands import CancelRequested, GenerateRequested
from contracts.events import EVENT_TYPES, event_tag
from tests.contracts.test_events import BASE, REQUIRED

COMMITTED = Path(__file__).parents[2] / "docs" / "asyncapi.json"


def test_the_committed_document_matches_the_contracts() -> None:
    assert COMMITTED.read_bytes() == render(), (
        "docs/asyncapi.json is out of date with contracts/: regenerate it with "
        "`.venv/bin/kiln asyncapi -o docs/asyncapi.json` and commit the result"
    )


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_every_reference_resolves() -> None:
    doc = document()
    refs = _refs(doc)
    assert refs
    for ref in refs:
        _resolve(doc, ref)


def test_every_event_is_a_message_with_its_tag_and_cloudevents_headers() -> None:
    doc = document()
    events = doc["channels"]["generationEvents"]
    address = events["address"].format(project_id="p1", generation_id="g1")
    assert address == subjects.generation_events("p1", "g1")
    for event_type in EVENT_TYPES:
        tag = event_tag(event_type)
        message = _resolve(doc, events["messages"][tag]["$ref"])
        assert message["name"] == tag
        payload = _resolve(doc, message["payload"]["$ref"])
        assert payload["properties"]["type"] == {"enum": [tag]}
        headers = message["headers"]["allOf"]
        assert _resolve(doc, headers[0]["$ref"])["properties"]["ce-specversion"]["const"] == "1.0"
        assert headers[1]["properties"]["ce-type"]["const"] == f"kiln.{tag}"


def test_channels_and_operations_are_consistent() -> None:
    doc = document()
    assert doc["asyncapi"] == "3.0.0"
    sha = "ab" * 32
    ids = {"project_id": "p1", "generation_id": "g1", "service": "storage", "sha256": sha}
    addresses = {c["address"].format(**ids) for c in doc["channels"].values()}
    assert addresses == {
        subjects.generation_events("p1", "g1"),
        subjects.GENERATE_COMMANDS,
        subjects.cancel_subject("g1"),
        subjects.dlq_subject("storage"),
        subjects.blob_subject(sha),
    }
    for name, channel in doc["channels"].items():
        placeholders = set(re.findall(r"{(\w+)}", channel["address"]))
        assert placeholders == set(channel.get("parameters", {})), name
    for name, operation in doc["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), name
    commands = {
        c["$ref"].rsplit("/", 1)[1]
        for channel in ("generateCommands", "cancelRequests")
        for c in doc["channels"][channel]["messages"].values()
    }
    assert commands == {"generate.requested", "cancel.requested"}


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=event_tag)
def test_a_real_event_validates_against_its_payload_schema(event_type: type) -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    doc = document()
    tag = event_tag(event_type)
    schema = {
        "$ref": doc["components"]["messages"][tag]["payload"]["$ref"],
        "components": doc["components"],
    }
    validator = jsonschema_rs.Draft202012Validator(schema)
    event = msgspec.json.decode(encode(event_type(**BASE, **REQUIRED[tag])))
    assert validator.is_valid(event)
    assert not validator.is_valid({**event, "seq": 0})


def test_commands_validate_against_their_payload_schemas() -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    doc = document()
    at = BASE["at"]
    for command in (
        GenerateRequested(generation_id="g1", project_id="p1", at=at),
        CancelRequested(generation_id="g1", project_id="p1", at=at, by="alice"),
    ):
        tag = type(command).__struct_config__.tag
        schema = {
            "$ref": doc["components"]["messages"][tag]["payload"]["$ref"],
            "components": doc["components"],
        }
        assert jsonschema_rs.Draft202012Validator(schema).is_valid(
            msgspec.json.decode(encode(command))
        )
