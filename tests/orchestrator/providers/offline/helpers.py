"""Shared by the offline provider's tests: schemas, a fake reporter, a runner stand-in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from contracts.phases import PHASE_NAMES, PHASES, PhaseOutput
from contracts.schema import ProjectSchema
from services.orchestrator.guard import check_output, missing_parent_files
from services.orchestrator.providers.base import LlmCall, PhaseRequest
from services.orchestrator.providers.offline import OfflineProvider
from services.orchestrator.providers.offline.project import build_project
from services.orchestrator.providers.offline.spec import SPEC_PATH, load_spec, spec_from_schema
from services.orchestrator.verify import compile_errors

SHOP: dict[str, Any] = {
    "entities": [
        {
            "name": "Category",
            "fields": [
                {"name": "name", "type": "string"},
                {"name": "description", "type": "text", "required": False},
            ],
            "relations": [{"name": "products", "target": "Product", "kind": "one_to_many"}],
        },
        {
            "name": "Product",
            "fields": [
                {"name": "title", "type": "string"},
                {"name": "price", "type": "decimal"},
                {"name": "in_stock", "type": "boolean", "required": False},
                {"name": "status", "type": "enum", "values": ["draft", "active", "retired"]},
                {"name": "released", "type": "date", "required": False},
            ],
            "relations": [
                {"name": "category", "target": "Category", "required": True},
                {"name": "tags", "target": "Tag", "kind": "many_to_many"},
            ],
        },
        {
            "name": "Tag",
            "fields": [{"name": "label", "type": "string"}],
            "relations": [{"name": "parent", "target": "Tag"}],
        },
    ]
}


def schema(document: dict[str, Any]) -> ProjectSchema:
    """A schema from its JSON form."""
    return msgspec.convert(document, ProjectSchema)


def numbered(count: int) -> ProjectSchema:
    """`count` entities, each with a few fields and a relation to the one before."""
    entities = []
    for i in range(count):
        entities.append(
            {
                "name": f"Entity{i}",
                "fields": [
                    {"name": "name", "type": "string"},
                    {"name": "notes", "type": "text", "required": False},
                    {"name": "amount", "type": "integer", "required": False},
                    {"name": "kind", "type": "enum", "values": ["small", "large"]},
                ],
                "relations": [{"name": "parent", "target": f"Entity{i - 1}"}] if i else [],
            }
        )
    return schema({"entities": entities})


FIELD_KINDS = (
    ("title", "string", {}),
    ("body", "text", {}),
    ("count", "integer", {}),
    ("ratio", "float", {}),
    ("price", "decimal", {}),
    ("active", "boolean", {}),
    ("day", "date", {}),
    ("moment", "datetime", {}),
    ("token", "uuid", {}),
    ("status", "enum", {"values": ["draft", "active", "retired"]}),
)


def every_type(count: int) -> dict[str, Any]:
    """`count` entities with every field type, required and optional; each entity after the
    first has a required many_to_one relation to the first and an optional one to the one
    before it (so a factory creates at most one other row, and the suite stays quick)."""
    entities = []
    for i in range(count):
        fields = [
            {"name": name, "type": kind, "required": (i + n) % 2 == 0, **extra}
            for n, (name, kind, extra) in enumerate(FIELD_KINDS)
        ]
        relations = []
        if i:
            relations.append({"name": "first", "target": "Item0", "required": True})
            relations.append({"name": "previous", "target": f"Item{i - 1}"})
        entities.append({"name": f"Item{i}", "fields": fields, "relations": relations})
    return {"entities": entities}


def revision_1_files(document: dict[str, Any]) -> dict[str, str]:
    """The files the offline provider wrote for `document` before its templates revision 2
    (integers and ids not bounded to 64 bits; kiln.json without a revision)."""
    spec = msgspec.structs.replace(spec_from_schema("shop", schema(document)), revision=1)
    files = {path: content for path, (_, content) in build_project(spec).items()}
    files[SPEC_PATH] = files[SPEC_PATH].replace('  "revision": 1,\n', "")
    assert load_spec(files[SPEC_PATH]) == spec
    return files


class FakeReporter:
    """Records what the provider reports; `cancel` makes `cancelled()` true."""

    def __init__(self) -> None:
        self.cancel = False
        self.progress_bytes: list[int] = []
        self.llm_calls: list[LlmCall] = []
        self.retries: list[dict[str, Any]] = []

    async def progress(
        self, *, bytes_received: int = 0, tokens_received: int = 0, message: str = ""
    ) -> None:
        self.progress_bytes.append(bytes_received)

    async def llm_called(self, call: LlmCall) -> None:
        self.llm_calls.append(call)

    async def retrying(self, **report: Any) -> None:
        self.retries.append(report)

    def cancelled(self) -> bool:
        return self.cancel


def request(
    phase: str,
    *,
    kind: Literal["create", "iterate"] = "create",
    document: dict[str, Any] | None = None,
    prompt: str = "",
    files: dict[str, str] | None = None,
    parent: dict[str, str] | None = None,
    locked: list[str] | None = None,
    correction: str | None = None,
) -> PhaseRequest:
    """A phase request as the runner builds it."""
    return PhaseRequest(
        generation_id="g-1",
        project_name="shop",
        phase=phase,
        plan=list(PHASES),
        kind=kind,
        prompt=prompt,
        schema=schema(document) if document is not None else None,
        files=dict(files or {}),
        parent_files=dict(parent or {}),
        locked_paths=list(locked or []),
        correction=correction,
    )


@dataclass
class Generation:
    """What a whole generation produced: the outputs by phase and the resulting files."""

    outputs: dict[str, PhaseOutput] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)


async def generate(
    provider: OfflineProvider,
    *,
    kind: Literal["create", "iterate"] = "create",
    document: dict[str, Any] | None = None,
    prompt: str = "",
    parent: dict[str, str] | None = None,
    locked: list[str] | None = None,
) -> Generation:
    """Run every phase as the runner does, checking each output with the data-loss guard."""
    result = Generation(files=dict(parent or {}))
    for phase in PHASE_NAMES:
        phase_request = request(
            phase,
            kind=kind,
            document=document,
            prompt=prompt,
            files=result.files,
            parent=parent,
            locked=locked,
        )
        output = await provider.run_phase(phase_request, FakeReporter())
        checked, violations = check_output(
            output, current=result.files, locked=frozenset(locked or [])
        )
        assert not violations, [v.describe() for v in violations]
        assert checked == output, "the guard had nothing to normalise"
        result.outputs[phase] = output
        for file in output.files:
            result.files[file.path] = file.content
        for deletion in output.deletions:
            result.files.pop(deletion.path, None)
            result.deleted.add(deletion.path)
    assert compile_errors(result.files) == []
    assert missing_parent_files(parent or {}, result.files, result.deleted) == []
    return result
