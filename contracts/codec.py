"""Encoding and decoding of events and commands, and the canonical form the hash chain uses.

Every decoder treats its input as untrusted: whatever the bytes, it returns a typed value
or raises `DecodeError`, which the consumer loop turns into a dead-letter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from contracts.commands import AnyCommand
from contracts.events import AnyEvent, Event, event_tag


class DecodeError(ValueError):
    """Bytes that are not a valid event or command; `reason` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_event_decoder = msgspec.json.Decoder(AnyEvent)
_command_decoder = msgspec.json.Decoder(AnyCommand)
_generic_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()

T = TypeVar("T")


def encode(value: msgspec.Struct) -> bytes:
    """JSON bytes of an event or command."""
    return _encoder.encode(value)


def decode_as(
    decoder: msgspec.json.Decoder[T],
    data: bytes,
    what: str,
    error: Callable[[str], Exception] = DecodeError,
) -> T:
    """`data` decoded by `decoder`, or `error("not a valid <what>: <why>")` whatever is
    wrong with the bytes (not JSON, not UTF-8, not the type)."""
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise error(f"not a valid {what}: {exc}") from None


def decode_event(data: bytes) -> AnyEvent:
    """An event from JSON bytes, or DecodeError."""
    return decode_as(_event_decoder, data, "event")


def decode_command(data: bytes) -> AnyCommand:
    """A command from JSON bytes, or DecodeError."""
    return decode_as(_command_decoder, data, "command")


def canonical(data: bytes) -> bytes:
    """The canonical JSON form of an encoded event: keys sorted, no whitespace.

    Computed from the bytes as stored (not from a decoded Struct), so fields a reader does
    not know still count: an old service verifies a newer service's chain.
    """
    return msgspec.json.encode(_generic(data), order="sorted")


def event_hash(data: bytes) -> str:
    """sha256 (hex) of an encoded event's canonical form; the next event's `prev_hash`."""
    return _sorted_hash(_generic(data))


def event_object_and_hash(data: bytes) -> tuple[dict[str, Any], str]:
    """An encoded event as a generic JSON object, and its `event_hash`, from one decode."""
    value = _generic(data)
    if not isinstance(value, dict):
        raise DecodeError("not a JSON object")
    return value, _sorted_hash(value)


def encoded_event_hash(event: Event) -> str:
    """`event_hash(encode(event))`, from the event itself (no decoding of the bytes)."""
    return _sorted_hash(event)


def _generic(data: bytes) -> Any:
    try:
        return _generic_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None


def _sorted_hash(value: Any) -> str:
    return hashlib.sha256(msgspec.json.encode(value, order="sorted")).hexdigest()


def audit_view(data: bytes, event: AnyEvent) -> tuple[dict[str, Any], str]:
    """An event as a JSON object and its `event_hash`, given its bytes and their decoding.

    When the bytes are exactly what this version encodes for the event (no field it does
    not know, the same layout), both come from the decoded event, which is about twice as
    fast; otherwise from a generic decode of the bytes. Either way the object encodes to
    the same JSON and the hash is the same.
    """
    if _encoder.encode(event) == data:
        digest = encoded_event_hash(event)
        return {"type": event_tag(type(event)), **msgspec.structs.asdict(event)}, digest
    return event_object_and_hash(data)


def content_sha256(content: str) -> str:
    """sha256 (hex) of a file's UTF-8 content, as `file.written` carries it."""
    return hashlib.sha256(content.encode()).hexdigest()
