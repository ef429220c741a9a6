"""The AsyncAPI 3.0 document of Kiln's subjects and payloads, generated from `contracts/`.

`kiln asyncapi` prints it, the gateway serves it at `/asyncapi`, and `docs/asyncapi.json`
is a committed copy that a test keeps equal to what this module generates.
"""

from __future__ import annotations

from typing import Any

import msgspec

from contracts import __version__, streams, subjects
from contracts.commands import CancelRequested, Command, GenerateRequested
from contracts.events import EVENT_TYPES, event_tag

VERSION = __version__
_SCHEMAS = "#/components/schemas/{name}"
_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}

CLOUDEVENTS_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": (
        "CloudEvents 1.0 attributes in binary content mode (the payload is the event JSON), "
        "plus the JetStream headers Kiln's writer sets."
    ),
    "properties": {
        "ce-specversion": {"const": "1.0", "description": "CloudEvents spec version."},
        "ce-id": {**_ID, "description": "The event's `event_id`."},
        "ce-source": {
            "type": "string",
            "format": "uri",
            "description": (
                "The writer, an absolute URI: urn:kiln:gateway, urn:kiln:orchestrator:<worker> "
                "or urn:kiln:watchdog:<worker>."
            ),
        },
        "ce-type": {
            "type": "string",
            "pattern": r"^kiln\.[a-z_]+\.[a-z_]+$",
            "description": "`kiln.` followed by the event's dotted `type` tag.",
        },
        "ce-time": {
            "type": "string",
            "format": "date-time",
            "description": "The event's `at`, RFC 3339 in UTC.",
        },
        "ce-subject": {**_ID, "description": "The generation id."},
        "ce-datacontenttype": {"const": "application/json"},
        "content-type": {"const": "application/json"},
        "Nats-Msg-Id": {
            "type": "string",
            "description": "`<generation_id>:<seq>`: a retried publish is stored once.",
        },
        "Nats-Expected-Last-Subject-Sequence": {
            "type": "string",
            "description": "The stream sequence the writer saw last: a second writer is refused.",
        },
    },
    "required": [
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-time",
        "ce-subject",
        "ce-datacontenttype",
        "Nats-Msg-Id",
    ],
}

COMMAND_HEADERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "Nats-Msg-Id": {
            "type": "string",
            "description": "`generate:<generation_id>` or `cancel:<generation_id>`.",
        }
    },
    "required": ["Nats-Msg-Id"],
}

DEAD_LETTER_HEADERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "Kiln-Dlq-Reason": {"type": "string", "description": "Why the service gave up."},
        "Kiln-Dlq-Service": {"type": "string"},
        "Kiln-Dlq-Subject": {"type": "string", "description": "Where the message came from."},
        "Kiln-Dlq-Stream-Seq": {"type": "string"},
        "Kiln-Dlq-Deliveries": {"type": "string"},
    },
    "required": ["Kiln-Dlq-Reason", "Kiln-Dlq-Service", "Kiln-Dlq-Subject"],
}


def _tag(value: type[Command]) -> str:
    tag = value.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def _summary(value: type) -> str:
    return (value.__doc__ or "").strip().splitlines()[0]


def _message(tag: str, payload: type, headers: dict[str, Any]) -> dict[str, Any]:
    """The message of one JSON payload type, with its headers' schema."""
    return {
        "name": tag,
        "title": payload.__name__,
        "summary": _summary(payload),
        "contentType": "application/json",
        "headers": headers,
        "payload": {"$ref": _SCHEMAS.format(name=payload.__name__)},
    }


def _parameter(description: str) -> dict[str, Any]:
    return {"description": description}


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document, as plain JSON values."""
    commands: tuple[type[Command], ...] = (GenerateRequested, CancelRequested)
    _, schemas = msgspec.json.schema_components([*EVENT_TYPES, *commands], ref_template=_SCHEMAS)
    schemas = dict(sorted(schemas.items()))
    schemas["CloudEventsHeaders"] = CLOUDEVENTS_HEADERS
    schemas["CommandHeaders"] = COMMAND_HEADERS
    schemas["DeadLetterHeaders"] = DEAD_LETTER_HEADERS

    messages: dict[str, Any] = {}
    for event_type in EVENT_TYPES:
        tag = event_tag(event_type)
        messages[tag] = _message(
            tag,
            event_type,
            {
                "allOf": [
                    {"$ref": _SCHEMAS.format(name="CloudEventsHeaders")},
                    {"properties": {"ce-type": {"const": f"kiln.{tag}"}}},
                ]
            },
        )
    for command in commands:
        tag = _tag(command)
        messages[tag] = _message(tag, command, {"$ref": _SCHEMAS.format(name="CommandHeaders")})
    messages["file_content"] = {
        "name": "file_content",
        "title": "FileContent",
        "summary": "One file's content, UTF-8, named by its sha256.",
        "payload": {"type": "string", "description": "The file's bytes (UTF-8 text)."},
    }
    messages["dead_letter"] = {
        "name": "dead_letter",
        "title": "DeadLetter",
        "summary": "A message a service could not take, copied unchanged with the reason.",
        "headers": {"$ref": _SCHEMAS.format(name="DeadLetterHeaders")},
        "payload": {"description": "The original message's bytes, unchanged."},
    }

    def refs(tags: list[str]) -> dict[str, Any]:
        return {tag: {"$ref": f"#/components/messages/{tag}"} for tag in tags}

    event_tags = [event_tag(t) for t in EVENT_TYPES]
    channels: dict[str, Any] = {
        "generationEvents": {
            "address": f"{subjects.EVENTS_PREFIX}.{{project_id}}.{{generation_id}}",
            "title": "A generation's events",
            "description": (
                f"Stream {streams.EVENTS_STREAM}. The whole log of one generation, in order: "
                "`seq` counts 1, 2, 3 … and each event's `prev_hash` is the sha256 of the "
                "previous event in canonical JSON (keys sorted, no whitespace), so the log "
                "is a hash chain. Subscribe to `kiln.events.>` (everything), "
                "`kiln.events.<project_id>.*` (one project) or `kiln.events.*.<generation_id>`."
            ),
            "parameters": {
                "project_id": _parameter("The project's id (a UUID)."),
                "generation_id": _parameter("The generation's id (a UUID)."),
            },
            "messages": refs(event_tags),
        },
        "generateCommands": {
            "address": subjects.GENERATE_COMMANDS,
            "title": "Generate commands",
            "description": (
                f"Stream {streams.COMMANDS_STREAM} (a work queue): each command is taken by "
                "one orchestrator, after its `generation.requested` event is in the log."
            ),
            "messages": refs([_tag(GenerateRequested)]),
        },
        "cancelRequests": {
            "address": f"{subjects.CANCEL_PREFIX}.{{generation_id}}",
            "title": "Cancel requests",
            "description": f"Stream {streams.CONTROL_STREAM}: the last request per generation, kept a day.",
            "parameters": {"generation_id": _parameter("The generation to cancel.")},
            "messages": refs([_tag(CancelRequested)]),
        },
        "fileContents": {
            "address": f"{subjects.BLOBS_PREFIX}.{{sha256}}",
            "title": "File contents, by sha256",
            "description": (
                f"Stream {streams.BLOBS_STREAM}: each distinct file content once, on the "
                "subject of its sha256 (the first message kept). A `version.based_on` event "
                "names its inherited files by sha256; their contents are stored here before "
                "that event. Read one with a direct get of the subject's last message; check "
                "that it hashes to its name."
            ),
            "parameters": {"sha256": _parameter("The content's sha256, in lowercase hex.")},
            "messages": refs(["file_content"]),
        },
        "deadLetters": {
            "address": f"{subjects.DLQ_PREFIX}.{{service}}",
            "title": "Dead letters",
            "description": f"Stream {streams.DLQ_STREAM}: messages a service gave up on, kept a week.",
            "parameters": {
                "service": _parameter("The service that gave up (storage, orchestrator).")
            },
            "messages": refs(["dead_letter"]),
        },
    }

    def operation(action: str, channel: str, summary: str) -> dict[str, Any]:
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": summary,
            "messages": [
                {"$ref": f"#/channels/{channel}/messages/{tag}"}
                for tag in channels[channel]["messages"]
            ],
        }

    return {
        "asyncapi": "3.0.0",
        "id": "urn:kiln:events",
        "info": {
            "title": "Kiln",
            "version": VERSION,
            "description": (
                "Kiln's subjects on NATS JetStream. Events are the source of truth: every "
                "generation is a log on its own subject, in JSON, tagged by a dotted `type`."
            ),
        },
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "The NATS server Kiln's services use (`NATS_URL`).",
            }
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": {
            "receiveGenerationEvents": operation(
                "receive", "generationEvents", "Follow generations (services/sdk `subscribe`)."
            ),
            "sendGenerationEvents": operation(
                "send", "generationEvents", "The gateway and orchestrators append events."
            ),
            "sendGenerateCommand": operation(
                "send", "generateCommands", "The gateway asks for a generation."
            ),
            "receiveGenerateCommand": operation(
                "receive", "generateCommands", "An orchestrator takes a generation."
            ),
            "sendCancelRequest": operation(
                "send", "cancelRequests", "The gateway asks to stop a generation."
            ),
            "receiveCancelRequest": operation(
                "receive", "cancelRequests", "Orchestrators watch for cancels."
            ),
            "sendFileContent": operation(
                "send", "fileContents", "Orchestrators store what a version inherits."
            ),
            "receiveFileContent": operation(
                "receive", "fileContents", "Readers resolve a version's inherited files."
            ),
            "sendDeadLetter": operation("send", "deadLetters", "A service gives up on a message."),
        },
        "components": {"schemas": schemas, "messages": messages},
    }


def render() -> bytes:
    """The document as indented JSON with a final newline (as `docs/asyncapi.json`)."""
    return msgspec.json.format(msgspec.json.encode(document()), indent=2) + b"\n"
