"""Names and relations of a generated project, worked out once from its spec.

The templates never invent a name: modules, tables, URL paths, foreign-key columns and
association tables all come from here, so every file of the project agrees with every
other and the same spec always gives the same names.

How relations become columns:

- `many_to_one` `owner` → Target: a column `owner_id` on the entity.
- `one_to_one` `profile` → Target: a unique column `profile_id` on the entity.
- `one_to_many` `items` → Target: a column on the *target* pointing back (named after the
  entity, e.g. `order_id`), and a read-only route `/orders/{id}/items`.
- `many_to_many` `tags` → Target: an association table `<entity>__tags`; the API takes and
  returns the list of target ids under the relation's name.

A required relation that is part of a cycle of required relations (A needs a B, B needs
an A) could never be created, so it is generated as optional and the docs say why.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from contracts.schema import Entity, FieldType
from services.orchestrator.providers.offline.spec import ProjectSpec

_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_DEVICE_NAMES = frozenset(
    {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10))}
    | {f"lpt{i}" for i in range(1, 10)}
)
# Longest module stem, so that `tests/test_<stem>.py` stays within a path segment's limit.
MAX_MODULE_STEM = 80


def snake(name: str) -> str:
    """`OrderItem` → `order_item`, `HTTPServer` → `http_server`."""
    return _WORD_BOUNDARY.sub("_", name).lower()


def pascal(name: str) -> str:
    """`unit_price` → `UnitPrice`."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def plural(word: str) -> str:
    """A simple English plural: `category` → `categories`, `box` → `boxes`."""
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    return word + "s"


def module_name(stem: str) -> str:
    """A module name for `stem` that is a safe file name on every system."""
    if len(stem) > MAX_MODULE_STEM:
        digest = hashlib.sha256(stem.encode()).hexdigest()[:8]
        return f"{stem[: MAX_MODULE_STEM - 9]}_{digest}"
    if stem in _DEVICE_NAMES:
        return f"{stem}_"
    return stem


@dataclass(frozen=True)
class Column:
    """A scalar field of an entity."""

    name: str
    type: FieldType
    required: bool
    values: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class Ref:
    """A foreign-key column of an entity: its own relation, or one pointing back to it."""

    column: str
    target: str
    required: bool
    unique: bool
    relation: str
    source: str
    """The entity that declared the relation (itself, or the parent of a one_to_many)."""
    cyclic: bool = False
    """Declared required but generated optional: it is part of a cycle of required refs."""


@dataclass(frozen=True)
class Many:
    """A many_to_many relation: the list of target ids under the relation's name."""

    name: str
    target: str
    table: str
    source_column: str
    target_column: str


@dataclass(frozen=True)
class Children:
    """A one_to_many relation: the target rows whose `column` points at this entity."""

    name: str
    target: str
    column: str


@dataclass(frozen=True)
class EntityLayout:
    """Every name the generated code uses for one entity."""

    name: str
    snake: str
    module: str
    table: str
    path: str
    description: str
    columns: tuple[Column, ...]
    refs: tuple[Ref, ...]
    many: tuple[Many, ...]
    children: tuple[Children, ...]

    @property
    def members(self) -> tuple[str, ...]:
        """The names of the entity's API members, in order."""
        return (
            *(c.name for c in self.columns),
            *(r.column for r in self.refs),
            *(m.name for m in self.many),
        )


@dataclass(frozen=True)
class ProjectLayout:
    """The spec with every derived name."""

    spec: ProjectSpec
    slug: str
    entities: tuple[EntityLayout, ...]

    @property
    def auth(self) -> bool:
        """The project has authentication."""
        return self.spec.has("auth")

    @property
    def pagination(self) -> bool:
        """The list routes take limit and offset."""
        return self.spec.has("pagination")

    @property
    def docker(self) -> bool:
        """The project has a Dockerfile."""
        return self.spec.has("docker")

    @property
    def bounded(self) -> bool:
        """Integers and ids are bounded to 64 bits (templates revision 2 on)."""
        return self.spec.revision >= 2

    @property
    def session(self) -> str:
        """The name of the database session dependency of the route handlers.

        `_session` from templates revision 3 on: no field or relation can have it (names
        start with a letter), while Litestar answers 500 instead of 400 for an invalid value
        of a body member named like a dependency (a field `session` did, before)."""
        return "_session" if self.spec.revision >= 3 else "session"

    @property
    def zoned(self) -> bool:
        """Datetimes keep the UTC offset they were sent with (templates revision 3 on);
        before, the database gave them back without it."""
        return self.spec.revision >= 3

    @property
    def edge_cases(self) -> bool:
        """The project has the edge-case tests ("add tests")."""
        return self.spec.has("edge_cases")

    def entity(self, name: str) -> EntityLayout:
        """The layout of the entity called `name`."""
        for entity in self.entities:
            if entity.name == name:
                return entity
        raise KeyError(name)


def project_slug(name: str) -> str:
    """The distribution name of the project: lower-case letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:60].strip("-") or "generated-project"


def layout(spec: ProjectSpec) -> ProjectLayout:
    """Every name of the project described by `spec` (the spec must be valid)."""
    snakes = {e.name: snake(e.name) for e in spec.entities}
    paths = _url_paths(snakes)
    cyclic = _cyclic_required(spec.entities)
    incoming, child_columns = _incoming_refs(spec.entities, snakes)
    entities: list[EntityLayout] = []
    for entity in spec.entities:
        own = snakes[entity.name]
        columns = tuple(
            Column(f.name, f.type, f.required, tuple(f.values or ()), f.description)
            for f in entity.fields
        )
        refs: list[Ref] = []
        many: list[Many] = []
        children: list[Children] = []
        for relation in entity.relations:
            if relation.kind in ("many_to_one", "one_to_one"):
                is_cyclic = relation.required and (entity.name, relation.name) in cyclic
                refs.append(
                    Ref(
                        column=f"{relation.name}_id",
                        target=relation.target,
                        required=relation.required and not is_cyclic,
                        unique=relation.kind == "one_to_one",
                        relation=relation.name,
                        source=entity.name,
                        cyclic=is_cyclic,
                    )
                )
            elif relation.kind == "many_to_many":
                target = snakes[relation.target]
                source_column, target_column = f"{own}_id", f"{target}_id"
                if source_column == target_column:
                    source_column, target_column = "source_id", "target_id"
                many.append(
                    Many(
                        name=relation.name,
                        target=relation.target,
                        table=f"{own}__{relation.name}",
                        source_column=source_column,
                        target_column=target_column,
                    )
                )
            else:
                column = child_columns[(entity.name, relation.name)]
                children.append(Children(relation.name, relation.target, column))
        refs.extend(incoming.get(entity.name, []))
        entities.append(
            EntityLayout(
                name=entity.name,
                snake=own,
                module=module_name(own),
                table=own,
                path=paths[entity.name],
                description=entity.description,
                columns=columns,
                refs=tuple(refs),
                many=tuple(many),
                children=tuple(children),
            )
        )
    return ProjectLayout(spec=spec, slug=project_slug(spec.name), entities=tuple(entities))


def _url_paths(snakes: dict[str, str]) -> dict[str, str]:
    """`/order-items` for OrderItem; the singular where two plurals would collide."""
    plurals = {name: plural(s) for name, s in snakes.items()}
    counts: dict[str, int] = {}
    for value in plurals.values():
        counts[value] = counts.get(value, 0) + 1
    return {
        name: "/"
        + (plurals[name] if counts[plurals[name]] == 1 else snakes[name]).replace("_", "-")
        for name in snakes
    }


def _incoming_refs(
    entities: list[Entity], snakes: dict[str, str]
) -> tuple[dict[str, list[Ref]], dict[tuple[str, str], str]]:
    """The columns one_to_many relations point back with.

    Returns the new columns by target entity, and the column of every one_to_many by
    (entity, relation). When the target already has exactly one many_to_one relation back
    to the entity (both sides of one link declared), that column is reused: `Category.
    products` lists the products whose `category_id` names the category.
    """
    by_name = {e.name: e for e in entities}
    taken: dict[str, set[str]] = {}
    for entity in entities:
        names = {f.name for f in entity.fields}
        for relation in entity.relations:
            names.add(relation.name)
            names.add(f"{relation.name}_id")
        taken[entity.name] = names
    incoming: dict[str, list[Ref]] = {}
    columns: dict[tuple[str, str], str] = {}
    reused: set[tuple[str, str]] = set()
    for entity in entities:
        for relation in entity.relations:
            if relation.kind != "one_to_many":
                continue
            inverse = [
                r
                for r in by_name[relation.target].relations
                if r.kind == "many_to_one" and r.target == entity.name
            ]
            if len(inverse) == 1 and (relation.target, inverse[0].name) not in reused:
                reused.add((relation.target, inverse[0].name))
                columns[(entity.name, relation.name)] = f"{inverse[0].name}_id"
                continue
            used = taken[relation.target]
            column = f"{snakes[entity.name]}_id"
            if column in used:
                column = f"{snakes[entity.name]}_{relation.name}_id"
            base, counter = column, 2
            while column in used:
                column = f"{base[:-3]}{counter}_id"
                counter += 1
            used.add(column)
            columns[(entity.name, relation.name)] = column
            incoming.setdefault(relation.target, []).append(
                Ref(
                    column=column,
                    target=entity.name,
                    required=False,
                    unique=False,
                    relation=relation.name,
                    source=entity.name,
                )
            )
    return incoming, columns


def _cyclic_required(entities: list[Entity]) -> set[tuple[str, str]]:
    """(entity, relation) of every required reference that lies on a cycle of them."""
    edges: dict[str, list[tuple[str, str]]] = {e.name: [] for e in entities}
    for entity in entities:
        for relation in entity.relations:
            if relation.required and relation.kind in ("many_to_one", "one_to_one"):
                edges[entity.name].append((relation.target, relation.name))
    component = _components(edges)
    return {
        (source, relation)
        for source, targets in edges.items()
        for target, relation in targets
        if component[source] == component[target]
    }


def _components(edges: dict[str, list[tuple[str, str]]]) -> dict[str, int]:
    """Strongly connected components (Kosaraju, iterative): node → component number.

    A node alone is its own component; an edge within one component lies on a cycle
    (a self-reference included).
    """
    order: list[str] = []
    visited: set[str] = set()
    for start in edges:
        if start in visited:
            continue
        visited.add(start)
        stack = [(start, iter(edges[start]))]
        while stack:
            node, children = stack[-1]
            for child, _ in children:
                if child not in visited:
                    visited.add(child)
                    stack.append((child, iter(edges[child])))
                    break
            else:
                stack.pop()
                order.append(node)
    reverse: dict[str, list[str]] = {node: [] for node in edges}
    for node, targets in edges.items():
        for target, _ in targets:
            reverse[target].append(node)
    component: dict[str, int] = {}
    for number, start in enumerate(reversed(order)):
        if start in component:
            continue
        component[start] = number
        pending = [start]
        while pending:
            node = pending.pop()
            for source in reverse[node]:
                if source not in component:
                    component[source] = number
                    pending.append(source)
    return component
