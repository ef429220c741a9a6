"""What a stranger sends, shared by the in-process tests (Litestar's test client) and the
over-the-wire ones (a real gateway process, raw sockets): hostile bodies, names with a
trailing newline or a hidden character, ids ending in a newline."""

from __future__ import annotations

from tests.support.environment import ALICE_KEY

BODIES = {
    "invalid UTF-8 in a string": b'{"project_name": "sh\xff\xfeop", "schema": {"entities": []}}',
    "lone surrogate escape": b'{"project_name": "sh\\ud800op", "schema": {"entities": []}}',
    "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "objects nested 100,000 deep": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
}
KEYS = {"no key": None, "a wrong key": "wrong-key-0123456789", "alice's key": ALICE_KEY}
MALFORMED = "The request body is malformed JSON ("
"""How the `detail` of the 400 for a hostile body begins."""


def schema(**entity: object) -> dict[str, object]:
    """One entity, Product(title), with `entity`'s keys replaced."""
    base: dict[str, object] = {
        "name": "Product",
        "fields": [{"name": "title", "type": "string"}],
    }
    return {"entities": [{**base, **entity}]}


HIDDEN_IN_SCHEMA: list[tuple[dict[str, object], str]] = [
    (schema(name="Product\n"), "schema.entities[0].name"),
    (
        schema(fields=[{"name": "title\n", "type": "string"}]),
        "schema.entities[0].fields[0].name",
    ),
    (
        schema(fields=[{"name": "kind", "type": "enum", "values": ["a\n"]}]),
        "schema.entities[0].fields[0].values[0]",
    ),
    (
        schema(relations=[{"name": "parent\n", "target": "Product"}]),
        "schema.entities[0].relations[0].name",
    ),
    (schema(description="Pay \u202eusd"), "schema.entities[0].description"),
    (
        schema(fields=[{"name": "title", "type": "string", "description": "a\x00b"}]),
        "schema.entities[0].fields[0].description",
    ),
]
"""A schema with a name that ends in a newline or a text with a hidden character, and
where the 400 says it is."""

HIDDEN_IN_NAMES = ["shop\u202e", "sh\x00op", "shop\n", "\u200bshop", "a\u2066b", "shop\u2028"]
"""Project names with a control, bidi or invisible character: each a 400 naming it."""


def hidden_character(name: str) -> str:
    """How the 400 names the refused character of `name` (`U+202E`)."""
    return f"U+{ord(next(ch for ch in name if not ch.isalpha())):04X}"


def id_routes(generation_id: str, project_id: str) -> list[tuple[str, str]]:
    """Every route with an id in its path, for a generation and a project whose ids end in
    an encoded newline (`%0A`)."""
    bad = f"{generation_id}%0A"
    return [
        ("GET", f"/generations/{bad}"),
        ("GET", f"/generations/{bad}/files"),
        ("GET", f"/generations/{bad}/files/README.md"),
        ("GET", f"/generations/{bad}/archive"),
        ("GET", f"/generations/{bad}/diff"),
        ("GET", f"/generations/{bad}/events"),
        ("POST", f"/generations/{bad}/stream-token"),
        ("POST", f"/generations/{bad}/cancel"),
        ("GET", f"/generations/{bad}/stream"),
        ("GET", f"/projects/{project_id}%0A"),
    ]
