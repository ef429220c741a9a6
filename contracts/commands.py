"""Commands: what the gateway asks the orchestrators to do, through the work queue."""

from __future__ import annotations

from datetime import datetime

import msgspec

from contracts.events import Id


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """What every command carries."""

    generation_id: Id
    project_id: Id
    at: datetime


class GenerateRequested(Command, frozen=True, kw_only=True, tag="generate.requested"):
    """Run (or resume) a generation whose `generation.requested` event is in its subject."""


class CancelRequested(Command, frozen=True, kw_only=True, tag="cancel.requested"):
    """Stop a generation at its next step; its files so far stay."""

    by: str
    reason: str = ""


AnyCommand = GenerateRequested | CancelRequested
