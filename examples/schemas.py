"""Example input schemas of any size, for trying Kiln and for measuring it.

The benchmarks (`bench/`) and the tests (`tests/`) both build their schemas here: neither
may import the other, and a schema a user could send belongs with the other examples.
"""

from __future__ import annotations

from typing import Any


def schema_with(entity_count: int) -> dict[str, Any]:
    """A valid schema of `entity_count` related entities."""
    entities = []
    for i in range(entity_count):
        fields = [
            {"name": "name", "type": "string", "required": True},
            {"name": "notes", "type": "text", "required": False},
            {"name": "amount", "type": "integer", "required": False},
        ]
        relations = (
            [{"name": "parent", "target": f"Entity{i - 1}", "kind": "many_to_one"}] if i else []
        )
        entities.append({"name": f"Entity{i}", "fields": fields, "relations": relations})
    return {"entities": entities}
