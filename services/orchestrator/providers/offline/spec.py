"""The project spec: what the offline provider knows about a project it generated.

Every project the offline provider writes carries its spec as `kiln.json` (the name, the
entities exactly as in the schema, the optional features), so a later iteration rebuilds
the project from the spec plus the requested modification instead of parsing code. The
file is canonical JSON — sorted keys, two-space indent, one trailing newline — so the same
spec is always the same bytes.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from contracts import limits
from contracts.schema import Entity, ProjectSchema, schema_problems
from services.orchestrator.providers.offline.text import clean_line, clean_text

SPEC_PATH = "kiln.json"
SPEC_FORMAT = 1
TEMPLATES_REVISION = 3
"""The revision of the templates a new project is built with. 1: before integers and ids
were bounded to 64 bits (a larger one answered 500). 2: before the session dependency was
named so that no field can clash with it (an invalid value of a field `session` answered
500), and before datetimes kept their UTC offset (`+02:00` came back without it). A project keeps its revision through
its iterations, so that the files an iteration does not touch stay consistent with the
ones it writes (the edge-case tests of a revision-1 project test no such bound)."""

Feature = Literal["auth", "docker", "edge_cases", "pagination"]
FEATURES: tuple[str, ...] = Feature.__args__  # type: ignore[attr-defined]
FEATURE_TITLES: dict[str, str] = {
    "auth": "authentication",
    "docker": "a Dockerfile",
    "edge_cases": "edge-case tests",
    "pagination": "pagination",
}

# Model classes the authentication feature defines next to the entities.
AUTH_CLASS_NAMES = frozenset({"AuthUser", "AuthToken"})


class SpecError(ValueError):
    """A kiln.json that cannot be read; the message says what is wrong with it."""


class ProjectSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A generated project: its name, its entities and the features it has."""

    format: int = SPEC_FORMAT
    name: str
    description: str = ""
    entities: list[Entity]
    features: list[Feature] = []
    revision: int = 1
    """The templates' revision (`TEMPLATES_REVISION`); 1 in a kiln.json written before it."""

    def has(self, feature: str) -> bool:
        """True when the project has `feature`."""
        return feature in self.features

    def entity(self, name: str) -> Entity | None:
        """The entity called `name` (case-insensitive), or None."""
        lowered = name.lower()
        return next((e for e in self.entities if e.name.lower() == lowered), None)


def spec_from_schema(name: str, schema: ProjectSchema, description: str = "") -> ProjectSpec:
    """The spec of a new project built from a submitted schema (no features yet).

    The free text (name, description, the schema's descriptions) is cleaned of control
    and bidi characters (`text.clean_text`), so no generated file holds them.
    """
    spec = ProjectSpec(
        name=name,
        description=description,
        entities=list(schema.entities),
        revision=TEMPLATES_REVISION,
    )
    return clean_spec(spec)


def clean_spec(spec: ProjectSpec) -> ProjectSpec:
    """`spec` with its free text cleaned: the name on one line, descriptions without control
    or bidi characters (line breaks kept in the project's description only)."""
    entities = [
        msgspec.structs.replace(
            entity,
            description=clean_line(entity.description),
            fields=[
                msgspec.structs.replace(f, description=clean_line(f.description))
                for f in entity.fields
            ],
        )
        for entity in spec.entities
    ]
    return msgspec.structs.replace(
        spec,
        name=clean_line(spec.name),
        description=clean_text(spec.description, multiline=True),
        entities=entities,
    )


def dump_spec(spec: ProjectSpec) -> str:
    """The canonical kiln.json text of `spec`: sorted keys, indent 2, trailing newline.

    Its free text is cleaned (`clean_spec`). A spec whose indented form would exceed the per-file limit is written compact (still
    sorted, still with the trailing newline).
    """
    normalised = msgspec.structs.replace(clean_spec(spec), features=sorted(set(spec.features)))
    raw = msgspec.json.encode(normalised, order="sorted")
    pretty = msgspec.json.format(raw, indent=2)
    chosen = pretty if len(pretty) < limits.MAX_FILE_BYTES else raw
    return chosen.decode() + "\n"


def load_spec(text: str) -> ProjectSpec:
    """The spec in a kiln.json text, or SpecError naming what is wrong."""
    try:
        spec = msgspec.json.decode(text.encode(), type=ProjectSpec)
    except msgspec.DecodeError as exc:
        raise SpecError(f"{SPEC_PATH} is not a valid project spec: {exc}") from None
    if spec.format != SPEC_FORMAT:
        raise SpecError(
            f"{SPEC_PATH} has format {spec.format}; this Kiln reads format {SPEC_FORMAT}"
        )
    if not 1 <= spec.revision <= TEMPLATES_REVISION:
        raise SpecError(
            f"{SPEC_PATH} has templates revision {spec.revision}; this Kiln builds revisions "
            f"1 to {TEMPLATES_REVISION}"
        )
    return spec


_ENTITY_INDEX = re.compile(r"^entities\[(\d+)\]")


def spec_problems(spec: ProjectSpec) -> list[str]:
    """Every rule the spec breaks, one readable sentence each (empty when it is valid).

    The rules of the schema (`contracts.schema.schema_problems`), with the place named by
    entity rather than by index, plus the names the optional features reserve.
    """
    problems: list[str] = []
    for problem in schema_problems(ProjectSchema(entities=list(spec.entities))):
        location = problem.location
        match = _ENTITY_INDEX.match(location)
        if match and int(match.group(1)) < len(spec.entities):
            location = spec.entities[int(match.group(1))].name + location[match.end() :]
        problems.append(f"{location}: {problem.message}")
    if spec.has("auth"):
        for entity in spec.entities:
            if entity.name in AUTH_CLASS_NAMES:
                problems.append(
                    f"{entity.name}: the entity name {entity.name!r} is used by the "
                    "authentication feature; choose another"
                )
    problems.extend(_member_clashes(spec))
    return problems


def _member_clashes(spec: ProjectSpec) -> list[str]:
    """Relations whose API name clashes with another member of the same entity.

    A many_to_one or one_to_one relation `owner` is the column `owner_id`; a many_to_many
    relation `tags` is the list `tags`. The schema rules catch most clashes; these are the
    ones they cannot see, such as a many_to_many `owner_id` next to a many_to_one `owner`.
    """
    problems: list[str] = []
    for entity in spec.entities:
        seen = {field.name for field in entity.fields}
        for relation in entity.relations:
            if relation.kind == "one_to_many":
                continue
            member = relation.name if relation.kind == "many_to_many" else f"{relation.name}_id"
            if member in seen:
                problems.append(
                    f"{entity.name}.{relation.name}: the relation's member {member!r} clashes "
                    f"with another member of {entity.name!r}; rename one of them"
                )
            seen.add(member)
    return problems
