"""What the gateway writes, and whether a request may be written: the first event of a
generation, its command, cancels. A create or iterate is checked first (its rules in
requests.py, its provider in providers.py, the 409s, the rate limit); nothing is
published for a request that is refused.

The gateway publishes `generation.requested` (seq 1, on an empty subject) and then the
generate command; from then on the orchestrator is the generation's only writer. Version
numbers come from a key-value bucket updated with compare-and-set, so two iterations of
one project never get the same version, whatever the read model has caught up with.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contracts import streams, subjects
from contracts.codec import encode
from contracts.commands import CancelRequested, GenerateRequested
from contracts.events import GenerationCancelled, GenerationRequested, utc_now
from contracts.state import GenerationState, GenerationSummary
from services.common.eventlog import first_event, last_event
from services.common.eventwriter import GenerationWriter, LogUnavailable, WriterConflict, source_uri
from services.common.logs import get_logger
from services.gateway.errors import Conflict, Unavailable, Unprocessable
from services.gateway.idempotency import (
    HEADER,
    check_same_request,
    generation_id_for,
    project_id_for,
)
from services.gateway.providers import ProviderCheck
from services.gateway.quotas import GenerationRateLimit
from services.gateway.requests import check_schema, checked_locked_paths, checked_project_name
from services.gateway.schemas import CreateGeneration, IterateGeneration

log = get_logger(__name__)

SOURCE = source_uri("gateway")
# After a request lost a race to another writer of its generation whose event could not be
# read back yet: seconds before asking again.
CONFLICT_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class Requested:
    """A generation's `generation.requested`, and whether an earlier request with the same
    `Idempotency-Key` made it (`replayed`)."""

    event: GenerationRequested
    replayed: bool = False


class Commands:
    """Decides whether a request may become a generation or a cancel, and publishes it."""

    def __init__(
        self, js: JetStreamContext, rate_limit: GenerationRateLimit, providers: ProviderCheck
    ) -> None:
        self.js = js
        self.rate_limit = rate_limit
        self.providers = providers
        self._versions: KeyValue | None = None

    async def create_generation(
        self, owner: str, data: CreateGeneration, key: str | None = None
    ) -> Requested:
        """A new project's first version, once the request keeps every rule (BadRequest
        otherwise) and the owner's rate limit allows it (TooManyRequests); with a `key`,
        the generation an earlier request with that key made, if there is one."""
        project_name = checked_project_name(data.project_name)
        check_schema(data.schema)
        provider = await self.providers.checked(data.provider)
        fields: dict[str, Any] = {
            "owner": owner,
            "kind": "create",
            "project_name": project_name,
            "schema": data.schema,
            "prompt": data.prompt,
            "provider": provider,
            "model": data.model,
        }
        if key is not None and (replay := await self._replay(owner, key, fields)):
            return replay
        self.rate_limit.take(owner)
        project_id = project_id_for(owner, key) if key is not None else str(uuid.uuid4())
        kv = await self._kv()
        try:
            await kv.create(project_id, b"1")
        except KeyWrongLastSequenceError:
            if key is None:
                raise
            # An earlier attempt with this key got this far: the project's version 1 is its.
        return await self._request(project_id, key, fields | {"version": 1})

    async def iterate_generation(
        self,
        owner: str,
        data: IterateGeneration,
        parent: GenerationState,
        latest_version: int,
        key: str | None = None,
    ) -> Requested:
        """A new version from a completed `parent` (Conflict otherwise); the provider and
        model are the parent's unless the request names others. With a `key`, the
        generation an earlier request with that key made, if there is one."""
        summary = parent.summary
        if summary.status != "completed":
            raise Conflict(
                f"The parent generation is {summary.status}; only a completed version can be "
                "iterated on." + (" Wait until it completes." if not summary.is_terminal else ""),
                parent_status=summary.status,
            )
        locked = checked_locked_paths(data.locked_paths, parent.files)
        provider = await self.providers.checked(data.provider or summary.provider)
        fields: dict[str, Any] = {
            "owner": owner,
            "kind": "iterate",
            "project_name": summary.project_name,
            "schema": None,
            "prompt": data.modification_prompt,
            "provider": provider,
            "model": data.model or (summary.model if provider == summary.provider else None),
            "parent_generation_id": summary.generation_id,
            "locked_paths": locked,
        }
        if key is not None and (replay := await self._replay(owner, key, fields)):
            return replay
        self.rate_limit.take(owner)
        version = await self.next_version(summary.project_id, max(summary.version, latest_version))
        return await self._request(summary.project_id, key, fields | {"version": version})

    async def _replay(self, owner: str, key: str, fields: dict[str, Any]) -> Requested | None:
        """The generation an earlier request with this key made (Unprocessable if that request
        asked for something else), its command published again if it is still pending."""
        stored = await first_event(self.js, generation_id_for(owner, key))
        if stored is None:
            return None
        if not isinstance(stored.event, GenerationRequested):
            raise Unprocessable(f"This {HEADER} was already used; use a new key.")
        check_same_request(stored.event, fields)
        await self._publish_if_pending(stored.event)
        log.info(
            "Generation {generation_id} requested again with its Idempotency-Key; "
            "answered with the first request's",
            generation_id=stored.event.generation_id,
            owner=owner,
        )
        return Requested(stored.event, replayed=True)

    async def _publish_if_pending(self, requested: GenerationRequested) -> None:
        """Publish the generate command of a generation no orchestrator has started (its
        first request may have been stored without its command)."""
        last = await last_event(self.js, requested.generation_id)
        if last is None or not isinstance(last.event, GenerationRequested):
            return
        command = GenerateRequested(
            generation_id=requested.generation_id, project_id=requested.project_id, at=utc_now()
        )
        try:
            await self._publish_command(
                subjects.GENERATE_COMMANDS,
                encode(command),
                f"generate:{requested.generation_id}",
            )
        except nats.errors.Error as exc:
            raise Unavailable(
                "the message broker did not accept the request; try again in a moment"
            ) from exc

    async def _kv(self) -> KeyValue:
        if self._versions is None:
            self._versions = await self.js.key_value(streams.VERSIONS_BUCKET)
        return self._versions

    async def next_version(self, project_id: str, floor: int) -> int:
        """The next version of a project (one above the highest ever handed out)."""
        kv = await self._kv()
        for _ in range(50):
            try:
                entry = await kv.get(project_id)
            except KeyNotFoundError:
                try:
                    await kv.create(project_id, str(floor + 1).encode())
                    return floor + 1
                except KeyWrongLastSequenceError:
                    continue
            current = int(entry.value or b"0")
            version = max(current, floor) + 1
            try:
                await kv.update(project_id, str(version).encode(), last=entry.revision)
                return version
            except KeyWrongLastSequenceError:
                await asyncio.sleep(0.005)
        raise Unavailable("too many concurrent iterations of this project; try again")

    async def _request(self, project_id: str, key: str | None, fields: dict[str, Any]) -> Requested:
        """Publish `generation.requested` (the generation's id derived from `key` if there
        is one) and its generate command."""
        owner = str(fields["owner"])
        generation_id = generation_id_for(owner, key) if key is not None else str(uuid.uuid4())
        writer = GenerationWriter(
            self.js, project_id, generation_id, source=SOURCE, retry_for_s=5.0
        )
        try:
            event = await writer.emit(GenerationRequested, progress=0, **fields)
            command = GenerateRequested(
                generation_id=generation_id, project_id=project_id, at=utc_now()
            )
            await self._publish_command(
                subjects.GENERATE_COMMANDS, encode(command), f"generate:{generation_id}"
            )
        except WriterConflict:
            # A request with the same key appended first (at the same time, or earlier while
            # the replica asked above had not caught up): answer with its generation.
            replay = await self._replay(owner, key, fields) if key is not None else None
            if replay is not None:
                return replay
            # The subject holds an event, but not one that can be read back as this
            # generation's first: not known yet, so never a 500 and never a second one.
            log.warning(
                "Generation {generation_id} was appended to by another writer and its first "
                "event could not be read back (answered 503)",
                generation_id=generation_id,
                owner=owner,
            )
            raise Unavailable(
                "Another request for this generation is being stored at the same time; "
                f"retry in a moment with the same {HEADER}.",
                retry_after_s=CONFLICT_RETRY_AFTER_S,
            ) from None
        except (LogUnavailable, nats.errors.Error) as exc:
            log.warning(
                "Could not publish generation {generation_id} (answered 503): {error}",
                generation_id=generation_id,
                error=repr(exc),
            )
            raise Unavailable(
                "the message broker did not accept the request; try again in a moment"
            ) from None
        log.info(
            "Generation {generation_id} requested",
            generation_id=generation_id,
            project_id=project_id,
            version=fields.get("version"),
            kind=fields.get("kind"),
            owner=fields.get("owner"),
        )
        return Requested(event)

    async def _publish_command(self, subject: str, data: bytes, msg_id: str) -> None:
        delay = 0.05
        for attempt in range(6):
            try:
                await self.js.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=2.0)
                return
            except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError):
                if attempt == 5:
                    raise
                await asyncio.sleep(delay)
                delay *= 2

    async def cancel(self, state: GenerationSummary, by: str, reason: str = "") -> None:
        """Ask the orchestrators to stop the generation; a pending one is cancelled at once.
        Conflict when it has already ended."""
        if state.is_terminal:
            raise Conflict(
                f"The generation is already {state.status}; there is nothing to cancel.",
                generation_status=state.status,
            )
        reason = reason or f"cancelled by {by}"
        command = CancelRequested(
            generation_id=state.generation_id,
            project_id=state.project_id,
            at=utc_now(),
            by=by,
            reason=reason,
        )
        await self._publish_command(
            subjects.cancel_subject(state.generation_id),
            encode(command),
            f"cancel:{state.generation_id}",
        )
        log.info(
            "Cancel requested for generation {generation_id}",
            generation_id=state.generation_id,
            by=by,
        )
        if state.status != "pending":
            return
        # Nobody has started it: end it here, unless an orchestrator gets there first (then
        # the stream refuses this append and the orchestrator sees the cancel request).
        last = await last_event(self.js, state.generation_id)
        if last is None or not isinstance(last.event, GenerationRequested):
            return
        writer = GenerationWriter.after(self.js, [last], source=SOURCE, retry_for_s=5.0)
        try:
            await writer.emit(
                GenerationCancelled,
                by=by,
                reason=reason,
                phase=None,
                files_kept=0,
            )
        except WriterConflict:
            pass
