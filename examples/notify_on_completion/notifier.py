"""Watch Kiln's events and post a JSON message to a webhook when a generation ends.

The service folds each generation's events as they arrive (which phases finished, how
many events it saw) and, on `generation.completed`, `generation.failed` or
`generation.cancelled`, posts a `Notification`. Its `text` reads well in a chat webhook;
the other members are for machines.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import httpx
import msgspec
from nats.aio.client import Client as NATS

from contracts.events import (
    GenerationCancelled,
    GenerationCompleted,
    GenerationFailed,
    PhaseCompleted,
)
from services.common.logs import get_logger
from services.sdk import Received, subscribe

log = get_logger(__name__)

Outcome = Literal["completed", "failed", "cancelled"]


class PhaseTime(msgspec.Struct, frozen=True):
    """One finished phase and how long it took."""

    phase: str
    duration_ms: int


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """What is posted to the webhook when a generation ends."""

    text: str
    generation_id: str
    project_id: str
    status: Outcome
    stream_seq: int
    events_seen: int
    first_seq: int
    last_seq: int
    phases: list[PhaseTime]
    file_count: int | None = None
    duration_ms: int | None = None
    message: str | None = None


@dataclass
class _Seen:
    first_seq: int
    events: int = 0
    phases: list[PhaseTime] = field(default_factory=list)


class Notifier:
    """Folds each generation's events; returns a Notification when one ends."""

    def __init__(self) -> None:
        self._generations: dict[str, _Seen] = {}

    def observe(self, received: Received) -> Notification | None:
        """Take one event; the notification to send if it ended its generation."""
        event = received.event
        seen = self._generations.setdefault(event.generation_id, _Seen(first_seq=event.seq))
        seen.events += 1
        if isinstance(event, PhaseCompleted):
            seen.phases.append(PhaseTime(event.phase, event.duration_ms))
        status: Outcome
        match event:
            case GenerationCompleted(file_count=files, duration_ms=ms):
                status, text = "completed", f"completed: {files} files in {ms / 1000:.1f} s"
            case GenerationFailed(message=message, phase=phase):
                status, text = "failed", f"failed in phase {phase or '-'}: {message}"
            case GenerationCancelled(by=by):
                status, text = "cancelled", f"cancelled by {by}"
            case _:
                return None
        del self._generations[event.generation_id]
        return Notification(
            text=f"Kiln generation {event.generation_id} {text}",
            generation_id=event.generation_id,
            project_id=event.project_id,
            status=status,
            stream_seq=received.stream_seq,
            events_seen=seen.events,
            first_seq=seen.first_seq,
            last_seq=event.seq,
            phases=seen.phases,
            file_count=event.file_count if isinstance(event, GenerationCompleted) else None,
            duration_ms=event.duration_ms if isinstance(event, GenerationCompleted) else None,
            message=event.message if isinstance(event, GenerationFailed) else None,
        )


async def post(
    client: httpx.AsyncClient, url: str, note: Notification, *, attempts: int = 5
) -> bool:
    """POST the notification as JSON, retrying a few times; False if it never got through."""
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            response = await client.post(
                url,
                content=msgspec.json.encode(note),
                headers={"Content-Type": "application/json"},
            )
            if response.status_code < 500:
                response.raise_for_status()
                log.info(
                    "Notified {url} that generation {generation_id} {status}",
                    url=url,
                    generation_id=note.generation_id,
                    status=note.status,
                )
                return True
        except httpx.TransportError as exc:
            log.warning("Webhook {url} unreachable: {error}", url=url, error=repr(exc))
        except httpx.HTTPStatusError as exc:
            log.error("Webhook {url} refused the message: {error}", url=url, error=str(exc))
            return False
        if attempt < attempts:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    log.error(
        "Gave up notifying {url} about generation {generation_id}",
        url=url,
        generation_id=note.generation_id,
    )
    return False


async def run(
    nc: NATS,
    webhook_url: str,
    *,
    project_id: str | None = None,
    since: int | datetime | None = None,
    client: httpx.AsyncClient | None = None,
) -> None:
    """Follow Kiln's events (from `since`, or new ones) and notify until cancelled."""
    notifier = Notifier()
    http = client or httpx.AsyncClient(timeout=10.0)
    try:
        async for received in subscribe(nc, project_id=project_id, since=since):
            note = notifier.observe(received)
            if note is not None:
                await post(http, webhook_url, note)
    finally:
        if client is None:
            await http.aclose()
