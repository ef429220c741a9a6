"""The CLI's reader types stay a subset of the gateway's answers.

`services/cli/client/responses.py` keeps its own small copies of the HTTP schemas (only the
fields the CLI uses, `str` where the gateway has a closed `Literal`), so that `kiln` never
imports the gateway and an older `kiln` reads a newer gateway. This keeps the copies honest:
every field the CLI reads is one the gateway writes, with a type that decodes it.
"""

from __future__ import annotations

import msgspec
import pytest
from msgspec import inspect

from services.cli.client import responses
from services.gateway import schemas

READER_TYPES = [
    value
    for value in vars(responses).values()
    if isinstance(value, type)
    and issubclass(value, msgspec.Struct)
    and value.__module__ == responses.__name__
]


def _problems(reader: inspect.Type, written: inspect.Type, where: str) -> list[str]:
    """Why a value of type `written` might not decode as `reader` (empty: it always does)."""
    if isinstance(reader, inspect.AnyType):
        return []
    if isinstance(written, inspect.UnionType):
        return [p for member in written.types for p in _problems(reader, member, where)]
    if isinstance(reader, inspect.UnionType):
        fits = [_problems(member, written, where) for member in reader.types]
        return [] if any(not f for f in fits) else [p for f in fits for p in f]
    if isinstance(reader, inspect.StrType) and isinstance(written, inspect.LiteralType):
        return [] if all(isinstance(v, str) for v in written.values) else [f"{where}: not str"]
    if isinstance(reader, inspect.StructType) and isinstance(written, inspect.StructType):
        fields = {f.name: f for f in written.fields}
        problems = []
        for field in reader.fields:
            if field.name not in fields:
                problems.append(f"{where}.{field.name}: the gateway does not send it")
            else:
                problems += _problems(field.type, fields[field.name].type, f"{where}.{field.name}")
        return problems
    if isinstance(reader, inspect.ListType) and isinstance(written, inspect.ListType):
        return _problems(reader.item_type, written.item_type, f"{where}[]")
    if isinstance(reader, inspect.DictType) and isinstance(written, inspect.DictType):
        return _problems(reader.key_type, written.key_type, f"{where} keys") + _problems(
            reader.value_type, written.value_type, f"{where}{{}}"
        )
    if type(reader) is not type(written):
        return [f"{where}: {type(written).__name__} read as {type(reader).__name__}"]
    return []


def test_every_reader_type_has_its_gateway_schema() -> None:
    assert READER_TYPES
    missing = [t.__name__ for t in READER_TYPES if not hasattr(schemas, t.__name__)]
    assert missing == []


@pytest.mark.parametrize("reader", READER_TYPES, ids=lambda t: t.__name__)
def test_the_cli_reads_only_what_the_gateway_writes(reader: type[msgspec.Struct]) -> None:
    written = getattr(schemas, reader.__name__)
    assert _problems(inspect.type_info(reader), inspect.type_info(written), reader.__name__) == []


def test_a_field_the_gateway_does_not_send_or_of_another_type_is_found() -> None:
    class StreamToken(msgspec.Struct):
        generation_id: int
        expires_in: int

    problems = _problems(
        inspect.type_info(StreamToken), inspect.type_info(schemas.StreamToken), "StreamToken"
    )
    assert problems == [
        "StreamToken.generation_id: StrType read as IntType",
        "StreamToken.expires_in: the gateway does not send it",
    ]
