"""`Idempotency-Key` on creates and iterations: a request sent again makes one generation.

A client that got no answer, or a 503 from a broker that stored the request after all (a
leader election between the append and its acknowledgement), cannot know whether its
generation exists. With a key, it sends the same request again: the generation's id is
derived from the owner and the key, so the second attempt finds the first one's
`generation.requested` and answers with it (`Idempotent-Replayed: true`), making sure its
generate command was published, instead of making a second version. The same key with
another request is refused (422), as the IETF draft on the header says.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec

from contracts.events import GenerationRequested
from services.gateway.errors import BadRequest, Unprocessable

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# Fixed for ever: a key must give the same ids whichever gateway and release answer it.
_NAMESPACE = uuid.UUID("6f7d3a52-29c1-4d0e-9a5b-6c1f0e8b7d21")
# What a retried request must repeat to be the same request (the version is the
# gateway's to choose, so an iteration retried is the same whichever version it got).
_COMPARED = (
    "owner",
    "kind",
    "project_name",
    "prompt",
    "provider",
    "model",
    "parent_generation_id",
    "locked_paths",
    "schema",
)


def checked_key(value: str | None) -> str | None:
    """The header's key, or None when absent; BadRequest if it is not one."""
    if value is None:
        return None
    if not _KEY.fullmatch(value):
        raise BadRequest(
            f"The {HEADER} header must be 1 to 128 letters, digits or '_.:-' (a UUID is a "
            "good one).",
            problems=[{"location": f"header {HEADER}", "message": "not a valid key"}],
        )
    return value


def generation_id_for(owner: str, key: str) -> str:
    """The id of the generation a keyed request makes."""
    return str(uuid.uuid5(_NAMESPACE, f"generation\n{owner}\n{key}"))


def project_id_for(owner: str, key: str) -> str:
    """The id of the project a keyed create makes."""
    return str(uuid.uuid5(_NAMESPACE, f"project\n{owner}\n{key}"))


def check_same_request(stored: GenerationRequested, fields: dict[str, Any]) -> None:
    """Unprocessable unless `fields` ask for what `stored` holds."""
    differ = sorted(
        name
        for name in _COMPARED
        if name in fields and _plain(fields[name]) != _plain(getattr(stored, name))
    )
    if differ:
        raise Unprocessable(
            f"This {HEADER} was already used for another request (it differs in "
            f"{', '.join(differ)}); use a new key for a new request.",
            differs=differ,
        )


def _plain(value: Any) -> Any:
    """A value as JSON would compare it (a schema Struct as its fields)."""
    return msgspec.to_builtins(value)
