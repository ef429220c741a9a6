"""The modification prompts the offline provider understands, and how they change a spec.

A prompt is one or more modifications joined by ";", "," or "and" (a part that starts
with a verb — add, remove, delete, drop — or is a bare feature such as "pagination" starts
a new modification; anything else continues the one before, such as the second field of
a field list). Matching ignores case, extra spaces and trailing punctuation; entity
names may be written in any case and are matched against the project's entities.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from contracts.schema import FIELD_TYPES, RELATION_KINDS, Entity, Field, Relation
from services.orchestrator.providers.offline.layout import pascal
from services.orchestrator.providers.offline.spec import FEATURE_TITLES, Feature, ProjectSpec

UNDERSTOOD_PROMPTS: tuple[str, ...] = (
    "add authentication  (also: add auth, add login)",
    "add entity Tag with fields name:string, color:string?  (optionally: and relation owner to User)",
    "add fields due_date:date, done:boolean to Task",
    "remove entity Tag",
    "add pagination",
    "add a Dockerfile  (also: add docker)",
    "add tests  (also: add more tests, test the edge cases): edge cases, 404s, validation "
    "and relation checks the project does not test yet",
)

FIELD_HELP = (
    f"Field types: {', '.join(FIELD_TYPES)}; end a field with '?' to make it optional "
    "(price:decimal?); an enum lists its values: status:enum(draft|active|done). A relation "
    "is 'relation <name> to <Entity>', optionally followed by 'as <kind>' "
    f"({', '.join(RELATION_KINDS)}; many_to_one when omitted)."
)

TYPE_ALIASES: dict[str, str] = {
    "str": "string",
    "int": "integer",
    "bool": "boolean",
    "number": "float",
    "double": "float",
    "money": "decimal",
    "timestamp": "datetime",
}


T = TypeVar("T")


class ModificationError(ValueError):
    """A prompt that cannot be applied; the message says why, for the user."""


@dataclass(frozen=True)
class AddFeature:
    """Turn on a feature: auth, pagination, docker or the edge-case tests."""

    feature: str

    def describe(self) -> str:
        """What the modification does, in a few words."""
        return f"add {FEATURE_TITLES[self.feature]}"


@dataclass(frozen=True)
class AddEntity:
    """A new entity with its fields and relations."""

    entity: Entity

    def describe(self) -> str:
        """What the modification does, in a few words."""
        return f"add entity {self.entity.name}"


@dataclass(frozen=True)
class AddFields:
    """New fields on an existing entity."""

    entity: str
    fields: tuple[Field, ...]

    def describe(self) -> str:
        """What the modification does, in a few words."""
        names = ", ".join(f.name for f in self.fields)
        return f"add {'fields' if len(self.fields) > 1 else 'field'} {names} to {self.entity}"


@dataclass(frozen=True)
class RemoveEntity:
    """Remove an entity and every relation that points to it."""

    entity: str

    def describe(self) -> str:
        """What the modification does, in a few words."""
        return f"remove entity {self.entity}"


Modification = AddFeature | AddEntity | AddFields | RemoveEntity

_VERB = re.compile(r"^(?:please\s+|also\s+|then\s+)*(add|remove|delete|drop)\b", re.IGNORECASE)
_FEATURES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"^(?:(?:user|users|basic|token|password)\s+)?"
            r"(?:authentication|auth|login|sign[- ]?in)(?:\s+support)?$",
            re.IGNORECASE,
        ),
        "auth",
    ),
    (
        re.compile(
            r"^(?:limit/offset\s+|offset\s+)?pagination(?:\s+to\s+(?:the\s+)?list(?:\s+endpoints|\s+routes)?)?$",
            re.IGNORECASE,
        ),
        "pagination",
    ),
    (
        re.compile(
            r"^(?:a\s+|an\s+)?(?:dockerfile|docker(?:\s+(?:support|image|file|container))?)$",
            re.IGNORECASE,
        ),
        "docker",
    ),
    (
        re.compile(
            r"^(?:(?:write|generate|create|cover)\s+)?"
            r"(?:(?:some|more|extra|additional|missing|new|the|a\s+few|few)\s+)*"
            r"(?:(?:edge[- ]?cases?|unit|api|validation|error)\s+)?tests?"
            r"(?:\s+(?:for|of|on|covering)\s+[\w\s,/'-]+)?$"
            r"|^(?:test|cover)\s+(?:(?:the|all|every|more)\s+)*(?:edge[- ]?cases?|errors?|validation)"
            r"(?:\s+(?:for|of|on)\s+[\w\s,/'-]+)?$"
            r"|^(?:(?:more|some|the)\s+)?edge[- ]?cases?(?:\s+tests?)?$",
            re.IGNORECASE,
        ),
        "edge_cases",
    ),
)
_ADD_ENTITY = re.compile(
    r"^add\s+(?:(?:a|an|the|new)\s+)*(?:entity|model|table)\s+(?P<name>[A-Za-z][\w]*)"
    r"(?:\s*(?:with|having|:)\s*(?P<rest>.*))?$",
    re.IGNORECASE | re.DOTALL,
)
_ADD_FIELDS = re.compile(
    r"^add\s+(?:(?:a|an|the|new)\s+)*(?:fields?|columns?)\s+(?P<items>.+?)\s+"
    r"(?:to|on)\s+(?:(?:the|entity|model)\s+)*(?P<entity>[A-Za-z]\w*)$",
    re.IGNORECASE | re.DOTALL,
)
_REMOVE_ENTITY = re.compile(
    r"^(?:remove|delete|drop)\s+(?:the\s+)?(?:entity|model|table)\s+(?P<name>[A-Za-z]\w*)$",
    re.IGNORECASE,
)
_FIELD = re.compile(
    r"^(?P<name>[A-Za-z_]\w*)\s*:\s*(?P<type>\w+)\s*"
    r"(?:\((?P<values>[^)]*)\))?\s*(?P<optional>\?|\s+optional)?$",
    re.IGNORECASE,
)
_RELATION = re.compile(
    r"^(?:a\s+)?relations?\s+(?P<name>[A-Za-z_]\w*)\s+(?:to|->)\s+(?P<target>[A-Za-z]\w*)"
    r"(?:\s+(?:as\s+)?\(?(?P<kind>[a-z_ ]+?)\)?)?$",
    re.IGNORECASE,
)
_REQUIRED = re.compile(r"\s*[(,]?\s*(?P<word>required|optional)\s*\)?$", re.IGNORECASE)
_PARENS = re.compile(r"\(([^)]*)\)")
_SEPARATORS = re.compile(r"\s*(?:;|\n|,|\band\b)\s*", re.IGNORECASE)
_TRIM = " \t\r\n.!\"'`"


def unknown_prompt_message(prompt: str) -> str:
    """The message for a prompt none of the understood forms match."""
    shown = " ".join(prompt.split())
    if len(shown) > 120:
        shown = shown[:117] + "..."
    forms = "\n".join(f"- {form}" for form in UNDERSTOOD_PROMPTS)
    return (
        f"The offline provider does not understand the prompt {shown!r}. It understands:\n"
        f"{forms}\n"
        "Several may be combined with ';' or 'and'. "
        f"{FIELD_HELP} These are the only forms the offline provider understands; "
        "for free-text changes use the gemini provider."
    )


def parse_prompt(prompt: str) -> list[Modification]:
    """The modifications a prompt asks for, or ModificationError."""
    parts = _split(prompt)
    if not parts:
        raise ModificationError(unknown_prompt_message(prompt))
    return [_parse_one(part, prompt) for part in parts]


def _split(prompt: str) -> list[str]:
    """The prompt cut into one text per modification."""
    # Commas inside parentheses belong to enum values, not to the list of modifications.
    text = _PARENS.sub(lambda m: "(" + m.group(1).replace(",", "|") + ")", prompt.strip(_TRIM))
    pieces: list[str] = []
    position = 0
    for match in _SEPARATORS.finditer(text):
        pieces.append(text[position : match.start()])
        pieces.append(match.group(0))
        position = match.end()
    pieces.append(text[position:])
    parts: list[str] = []
    for index in range(0, len(pieces), 2):
        piece = pieces[index].strip(_TRIM)
        if not piece:
            continue
        starts_new = bool(_VERB.match(piece)) or _feature(piece) is not None
        if starts_new or not parts:
            parts.append(piece)
        else:
            parts[-1] = f"{parts[-1]}{pieces[index - 1]}{piece}"
    return [_VERB.sub(lambda m: m.group(1), part, count=1) for part in parts]


def _feature(text: str) -> str | None:
    text = " ".join(text.split())
    for pattern, feature in _FEATURES:
        if pattern.match(text):
            return feature
    return None


def _parse_one(part: str, prompt: str) -> Modification:
    text = " ".join(part.split())
    verb = text.split(" ", 1)[0].lower()
    rest = text.split(" ", 1)[1] if " " in text else ""
    if verb == "add" and _feature(rest):
        return AddFeature(_feature(rest) or "")
    if _feature(text):
        return AddFeature(_feature(text) or "")
    match = _ADD_FIELDS.match(text)
    if match:
        items = [i for i in _SEPARATORS.split(match.group("items")) if i.strip(_TRIM)]
        fields = tuple(_parse_field(item.strip(_TRIM)) for item in items)
        return AddFields(entity=match.group("entity"), fields=fields)
    match = _ADD_ENTITY.match(text)
    if match:
        return AddEntity(_parse_entity(match.group("name"), match.group("rest") or ""))
    match = _REMOVE_ENTITY.match(text)
    if match:
        return RemoveEntity(match.group("name"))
    raise ModificationError(unknown_prompt_message(prompt))


def _parse_entity(name: str, rest: str) -> Entity:
    fields: list[Field] = []
    relations: list[Relation] = []
    for raw in _SEPARATORS.split(rest):
        item = re.sub(r"^(?:fields?|columns?)\s*:?\s+", "", raw.strip(_TRIM), flags=re.I)
        if not item:
            continue
        if re.match(r"^(?:a\s+)?relations?\b", item, re.IGNORECASE):
            relations.append(_parse_relation(item))
        else:
            fields.append(_parse_field(item))
    return _convert(
        {"name": _entity_name(name), "fields": fields, "relations": relations}, Entity, name
    )


def _parse_field(item: str) -> Field:
    match = _FIELD.match(item)
    if not match:
        raise ModificationError(
            f"{item!r} is not a field; write name:type, like 'due_date:date'. {FIELD_HELP}"
        )
    kind = match.group("type").lower()
    kind = TYPE_ALIASES.get(kind, kind)
    if kind not in FIELD_TYPES:
        raise ModificationError(
            f"unknown field type {match.group('type')!r} in {item!r}. {FIELD_HELP}"
        )
    values: list[str] | None = None
    if match.group("values") is not None:
        if kind != "enum":
            raise ModificationError(f"only enum fields list values: {item!r}. {FIELD_HELP}")
        values = [v.strip() for v in re.split(r"[|/,]", match.group("values")) if v.strip()]
    elif kind == "enum":
        raise ModificationError(
            f"the enum field {item!r} needs its values, like status:enum(draft|active)"
        )
    return _convert(
        {
            "name": match.group("name"),
            "type": kind,
            "required": not match.group("optional"),
            "values": values,
        },
        Field,
        item,
    )


def _convert(value: dict[str, object], kind: type[T], item: str) -> T:
    """`value` as a schema struct, or ModificationError naming the part of the prompt."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise ModificationError(f"{item!r} is not valid: {exc}") from None


def _parse_relation(item: str) -> Relation:
    required = False
    word = _REQUIRED.search(item)
    if word:
        required = word.group("word").lower() == "required"
        item = item[: word.start()]
    match = _RELATION.match(item)
    if not match:
        raise ModificationError(
            f"{item!r} is not a relation; write 'relation owner to User' "
            "(optionally 'as many_to_many', and 'required')"
        )
    kind = (match.group("kind") or "many_to_one").strip().lower().replace(" ", "_")
    if kind not in RELATION_KINDS:
        raise ModificationError(
            f"unknown relation kind {kind!r} in {item!r}; use one of {', '.join(RELATION_KINDS)}"
        )
    return _convert(
        {
            "name": match.group("name"),
            "target": match.group("target"),
            "kind": kind,
            "required": required,
        },
        Relation,
        item,
    )


def _entity_name(name: str) -> str:
    """A new entity's name in PascalCase (`order_item` → `OrderItem`, `tag` → `Tag`)."""
    return pascal(name) if "_" in name or name[:1].islower() else name


def apply(spec: ProjectSpec, modifications: list[Modification]) -> ProjectSpec:
    """The spec after the modifications, in order, or ModificationError.

    Names of existing entities are matched case-insensitively. The result is not yet
    validated: check it with `spec_problems`.
    """
    for modification in modifications:
        spec = _apply_one(spec, modification)
    return spec


def _apply_one(spec: ProjectSpec, modification: Modification) -> ProjectSpec:
    if isinstance(modification, AddFeature):
        if modification.feature == "edge_cases" and spec.has("edge_cases"):
            # Asking again adds what is missing (files since deleted), and nothing twice.
            return spec
        if spec.has(modification.feature):
            raise ModificationError(
                f"the project already has {FEATURE_TITLES[modification.feature]}; nothing to change"
            )
        features = msgspec.convert(sorted({*spec.features, modification.feature}), list[Feature])
        return msgspec.structs.replace(spec, features=features)
    if isinstance(modification, AddEntity):
        entity = modification.entity
        relations = []
        for relation in entity.relations:
            known = _existing(spec, relation.target, entity)
            relations.append(
                relation if known is None else msgspec.structs.replace(relation, target=known.name)
            )
        entity = msgspec.structs.replace(entity, relations=relations)
        return msgspec.structs.replace(spec, entities=[*spec.entities, entity])
    if isinstance(modification, AddFields):
        target = _require(spec, modification.entity)
        changed = msgspec.structs.replace(target, fields=[*target.fields, *modification.fields])
        return msgspec.structs.replace(
            spec, entities=[changed if e is target else e for e in spec.entities]
        )
    target = _require(spec, modification.entity)
    remaining = []
    for entity in spec.entities:
        if entity is target:
            continue
        relations = [r for r in entity.relations if r.target != target.name]
        remaining.append(msgspec.structs.replace(entity, relations=relations))
    return msgspec.structs.replace(spec, entities=remaining)


def _existing(spec: ProjectSpec, name: str, new: Entity) -> Entity | None:
    """The entity a relation of a new entity names: an existing one, or the new one itself."""
    if name.lower() == new.name.lower():
        return new
    return spec.entity(name)


def _require(spec: ProjectSpec, name: str) -> Entity:
    entity = spec.entity(name)
    if entity is None:
        known = ", ".join(e.name for e in spec.entities)
        raise ModificationError(f"the project has no entity {name!r} (its entities: {known})")
    return entity


def describe(modifications: list[Modification]) -> str:
    """`add entity Tag and add pagination` for a list of modifications."""
    parts = [m.describe() for m in modifications]
    if len(parts) <= 2:
        return " and ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]
