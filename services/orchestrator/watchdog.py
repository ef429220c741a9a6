"""No generation stays "running" forever.

While an orchestrator runs a generation it refreshes a heartbeat in the KILN_RUNS bucket
(generation id → worker and time). The watchdog in every orchestrator fails, with a reason a
person can read, any generation that is not finished and whose heartbeat is older than
`stale_after_s`, and any whose command the work queue gave up on (the server's
max-deliveries advisory). Several watchdogs may race: each append is guarded by the
subject's last sequence, so exactly one `generation.failed` is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from contracts import streams
from contracts.codec import DecodeError, decode_command
from contracts.commands import GenerateRequested
from contracts.events import GenerationFailed
from contracts.state import fold
from services.common import metrics
from services.common.eventlog import read_generation
from services.common.eventwriter import GenerationWriter, LogUnavailable, WriterConflict, source_uri
from services.common.logs import get_logger

log = get_logger(__name__)

MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*"


class Heartbeat(msgspec.Struct, frozen=True):
    """The last sign of life of a running generation."""

    worker: str
    at: float


class Heartbeats:
    """Writes and clears the heartbeats of the generations this orchestrator runs."""

    def __init__(self, kv: KeyValue, worker: str) -> None:
        self.kv = kv
        self.worker = worker

    async def beat(self, generation_id: str) -> None:
        """Record that `generation_id` is being worked on now (errors are only logged)."""
        try:
            await self.kv.put(
                generation_id, msgspec.json.encode(Heartbeat(self.worker, time.time()))
            )
        except Exception as exc:  # a missed beat is harmless; the next one follows
            log.warning(
                "Heartbeat for generation {generation_id} not written: {error}",
                generation_id=generation_id,
                error=repr(exc),
            )

    async def clear(self, generation_id: str) -> None:
        """The generation ended: forget its heartbeat."""
        with contextlib.suppress(Exception):
            await self.kv.purge(generation_id)

    async def keep_beating(self, generation_id: str, every_s: float) -> None:
        """Beat every `every_s` seconds until cancelled."""
        while True:
            await self.beat(generation_id)
            await asyncio.sleep(every_s)


@dataclass(eq=False)
class Watchdog:
    """Fails abandoned generations; runs inside every orchestrator."""

    nc: Client
    js: JetStreamContext
    kv: KeyValue
    worker: str = field(kw_only=True)
    stale_after_s: float = field(kw_only=True)
    _subscription: Subscription | None = field(default=None, init=False)

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep the heartbeats every quarter of `stale_after_s` and follow the advisories."""
        self._subscription = await self.nc.subscribe(
            MAX_DELIVERIES_ADVISORY.format(stream=streams.COMMANDS_STREAM), cb=self._on_advisory
        )
        try:
            while not stop.is_set():
                try:
                    await self.sweep()
                except Exception:
                    # Logged, never fatal: a failing sweep must not switch the watchdog off.
                    log.exception("Watchdog sweep failed; trying again at the next interval")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(self.stale_after_s / 4, 0.2))
        finally:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()

    async def sweep(self) -> list[str]:
        """Fail every unfinished generation whose heartbeat is stale; the ids failed."""
        try:
            keys = await self.kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        failed: list[str] = []
        now = time.time()
        for generation_id in keys:
            try:
                entry = await self.kv.get(generation_id)
                beat = msgspec.json.decode(entry.value or b"", type=Heartbeat)
            except (nats.js.errors.KeyNotFoundError, msgspec.DecodeError):
                continue
            if now - beat.at < self.stale_after_s:
                continue
            since = datetime.fromtimestamp(beat.at, UTC).strftime("%H:%M:%S UTC")
            reason = (
                f"No orchestrator has worked on this generation since {since} (its worker "
                f"{beat.worker} stopped without finishing it)."
            )
            if await self.fail(generation_id, reason, expected_worker_beat=beat.at):
                failed.append(generation_id)
        return failed

    async def fail(
        self, generation_id: str, reason: str, *, expected_worker_beat: float | None = None
    ) -> bool:
        """Write `generation.failed` unless the generation ended; True when this one wrote it."""
        try:
            history = await read_generation(self.js, generation_id)
        except LogUnavailable:
            return False
        state = fold(e.event for e in history)
        if state is None or state.is_terminal:
            await self._forget(generation_id, expected_worker_beat)
            return False
        if expected_worker_beat is not None and not await self._still_stale(
            generation_id, expected_worker_beat
        ):
            return False
        writer = GenerationWriter.after(
            self.js, history, source=source_uri("watchdog", self.worker)
        )
        try:
            await writer.emit(
                GenerationFailed,
                phase=state.summary.phase,
                message=reason + " The files written so far are kept; iterate from the last "
                "completed version or start again.",
                retryable=True,
                error_kind="abandoned",
                files_kept=state.summary.file_count,
            )
        except WriterConflict:
            return False  # someone is writing it after all
        metrics.failures.labels("abandoned").inc()
        metrics.generations_finished.labels("failed").inc()
        log.warning(
            "Generation {generation_id} marked failed by the watchdog: {reason}",
            generation_id=generation_id,
            reason=reason,
        )
        await self._forget(generation_id, None)
        return True

    async def _still_stale(self, generation_id: str, beat_at: float) -> bool:
        try:
            entry = await self.kv.get(generation_id)
            beat = msgspec.json.decode(entry.value or b"", type=Heartbeat)
        except (nats.js.errors.KeyNotFoundError, msgspec.DecodeError):
            return True
        return beat.at <= beat_at

    async def _forget(self, generation_id: str, beat_at: float | None) -> None:
        if beat_at is not None and not await self._still_stale(generation_id, beat_at):
            return
        with contextlib.suppress(Exception):
            await self.kv.purge(generation_id)

    async def _on_advisory(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            stored = await self.js.get_msg(streams.COMMANDS_STREAM, int(advisory["stream_seq"]))
            command = decode_command(stored.data or b"")
            deliveries = int(advisory.get("deliveries", 0))
        except (ValueError, KeyError, TypeError, DecodeError, nats.errors.Error) as exc:
            log.warning("Max-deliveries advisory not understood: {error}", error=repr(exc))
            return
        if not isinstance(command, GenerateRequested):
            return
        await self.fail(
            command.generation_id,
            f"Kiln gave up on this generation after {deliveries} attempts: each one stopped "
            "before finishing (an orchestrator crashed or was stopped each time).",
        )
        # The work queue will never deliver it again; it would only take up room.
        try:
            await self.js.delete_msg(streams.COMMANDS_STREAM, stored.seq or 0)
        except nats.errors.Error as exc:
            log.warning(
                "Could not delete the given-up command of generation {generation_id}",
                generation_id=command.generation_id,
                error=repr(exc),
            )
