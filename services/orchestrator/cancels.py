"""Cancel requests, as every orchestrator sees them.

A cancel is published on `kiln.control.cancel.<generation>` (stream KILN_CONTROL, kept a
day). Each orchestrator follows that subject live and also looks up the last cancel of a
generation when it takes one, so a cancel that came before the orchestrator is not missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from contracts import streams, subjects
from contracts.codec import DecodeError, decode_command
from contracts.commands import CancelRequested
from services.common.eventlog import follow_new
from services.common.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class Cancelled(Exception):
    """The generation was cancelled while a step ran."""


async def run_unless_cancelled(
    work: Coroutine[Any, Any, T], cancelled: asyncio.Event
) -> asyncio.Future[T]:
    """`work` run to its end, as its finished task (the caller takes its result or its
    exception); Cancelled as soon as `cancelled` is set first, once the abandoned work has
    been cancelled and has stopped."""
    task = asyncio.ensure_future(work)
    cancel = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait({task, cancel}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancel.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise Cancelled
    return task


class CancelWatcher:
    """Maps generation ids to an asyncio.Event that is set when the generation is cancelled."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._events: dict[str, asyncio.Event] = {}
        self._requests: dict[str, CancelRequested] = {}
        self._sub: JetStreamContext.PushSubscription | None = None

    async def start(self) -> None:
        """Follow new cancel requests."""
        self._sub = await follow_new(
            self.js, subjects.ALL_CANCELS, streams.CONTROL_STREAM, self._on_message
        )

    async def stop(self) -> None:
        """Stop following."""
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:
                log.warning("Could not unsubscribe from cancel requests", error=repr(exc))
            self._sub = None

    async def _on_message(self, msg: object) -> None:
        data = getattr(msg, "data", b"")
        try:
            command = decode_command(data)
        except DecodeError as exc:
            log.warning("Ignored an invalid cancel request: {reason}", reason=exc.reason)
            return
        if isinstance(command, CancelRequested):
            self._mark(command)

    def _mark(self, command: CancelRequested) -> None:
        self._requests[command.generation_id] = command
        self.event(command.generation_id).set()
        log.info(
            "Cancel requested for generation {generation_id}",
            generation_id=command.generation_id,
            by=command.by,
        )

    def event(self, generation_id: str) -> asyncio.Event:
        """The event that is set when this generation is cancelled."""
        return self._events.setdefault(generation_id, asyncio.Event())

    def request(self, generation_id: str) -> CancelRequested | None:
        """The cancel request of a generation, if one was seen."""
        return self._requests.get(generation_id)

    async def check(self, generation_id: str) -> asyncio.Event:
        """The generation's cancel event, set already if a cancel was published earlier."""
        event = self.event(generation_id)
        if not event.is_set():
            try:
                msg = await self.js.get_last_msg(
                    streams.CONTROL_STREAM, subjects.cancel_subject(generation_id)
                )
                command = decode_command(msg.data or b"")
                if isinstance(command, CancelRequested):
                    self._mark(command)
            except (NotFoundError, DecodeError):
                pass
        return event

    def forget(self, generation_id: str) -> None:
        """Drop what is known of a finished generation."""
        self._events.pop(generation_id, None)
        self._requests.pop(generation_id, None)
