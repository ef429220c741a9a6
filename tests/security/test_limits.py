"""Input limits: every rule a request breaks answers 400 problem+json that names the field
and says why; nothing is published."""

from __future__ import annotations

from typing import Any

import nats
import pytest

from contracts import limits
from contracts.schema import MAX_ENTITIES, MAX_FIELDS_PER_ENTITY
from contracts.streams import COMMANDS_STREAM, EVENTS_STREAM
from services.common.settings import Settings
from tests.support.stack import running_stack


def _entity(name: str = "Item", **field: Any) -> dict[str, Any]:
    return {"name": name, "fields": [{"name": "title", "type": "string", **field}]}


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "prompt too long",
        {"schema": {"entities": [_entity()]}, "prompt": "x" * (limits.MAX_PROMPT_CHARS + 1)},
        "prompt",
        "length",
    ),
    (
        "too many entities",
        {"schema": {"entities": [_entity(f"E{i}") for i in range(MAX_ENTITIES + 1)]}},
        "entities",
        f"at most {MAX_ENTITIES}",
    ),
    (
        "too many fields",
        {
            "schema": {
                "entities": [
                    {
                        "name": "Wide",
                        "fields": [
                            {"name": f"f{i}", "type": "string"}
                            for i in range(MAX_FIELDS_PER_ENTITY + 1)
                        ],
                    }
                ]
            }
        },
        "entities[0]",
        f"more than {MAX_FIELDS_PER_ENTITY} fields",
    ),
    (
        "entity name not an identifier",
        {"schema": {"entities": [_entity("my-entity")]}},
        "entities[0].name",
        "PascalCase",
    ),
    (
        "field name is a Python keyword",
        {"schema": {"entities": [{"name": "A", "fields": [{"name": "class", "type": "string"}]}]}},
        "entities[0].fields[0].name",
        "keyword",
    ),
    (
        "entity name reserved by the generated code",
        {"schema": {"entities": [_entity("Session")]}},
        "entities[0].name",
        "reserved",
    ),
    (
        "enum value not an identifier",
        {
            "schema": {
                "entities": [
                    {
                        "name": "A",
                        "fields": [{"name": "state", "type": "enum", "values": ["ok", "not ok"]}],
                    }
                ]
            }
        },
        "entities[0].fields[0].values[1]",
        "identifier",
    ),
    (
        "enum without values",
        {"schema": {"entities": [{"name": "A", "fields": [{"name": "s", "type": "enum"}]}]}},
        "entities[0].fields[0].values",
        "non-empty",
    ),
    (
        "duplicate field names",
        {
            "schema": {
                "entities": [
                    {
                        "name": "A",
                        "fields": [
                            {"name": "title", "type": "string"},
                            {"name": "title", "type": "text"},
                        ],
                    }
                ]
            }
        },
        "entities[0].fields[1].name",
        "duplicate",
    ),
]


@pytest.mark.parametrize(("case", "body", "location", "why"), CASES, ids=[c[0] for c in CASES])
async def test_each_broken_rule_is_named_with_its_field(
    settings: Settings, case: str, body: dict[str, Any], location: str, why: str
) -> None:
    async with running_stack(settings, orchestrator=False, storage=False) as stack:
        response = await stack.alice.post("/generations", json={"project_name": "p", **body})
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert location in problem["detail"], problem
        assert why.lower() in problem["detail"].lower(), problem
        nc = await nats.connect(settings.nats_servers)
        try:
            for stream in (EVENTS_STREAM, COMMANDS_STREAM):
                assert (await nc.jetstream().stream_info(stream)).state.messages == 0
        finally:
            await nc.close()
