"""One shared, growing copy of each watched generation's events, fed by one replay and one
live subscription, read by every watcher at its own pace.

The seam between replay and live is where such systems lose or double events, so it is
designed here, once:

1. The hub follows `kiln.events.>` with one ordered consumer (new messages only) for the
   whole gateway.
2. When the first watcher of a generation arrives, its `GenerationLog` is registered
   (from now on live events of that generation are buffered), then the last stream
   sequence T of the generation's subject is read, then the subject is replayed with a
   short-lived ordered consumer up to T. Every event is either ≤ T (the replay has it) or
   was published after registration (the live subscription has it); duplicates are
   dropped by sequence. The buffered live events > T are appended once the replay ends.
3. Watchers that join later share the same log: one replay per subject, however many
   clients join at once.

A watcher never owns a consumer or a queue: it keeps an index into the shared log, so a
slow client costs only itself, and a disconnect leaves nothing behind. Logs nobody
watches are dropped after a short while.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts import streams, subjects
from contracts.events import TERMINAL_TAGS
from services.common.eventlog import follow_new, last_stream_seq, stream_seq, subscribe_ordered
from services.common.heap import LongLivedHeap
from services.common.logs import get_logger

log = get_logger(__name__)

IDLE_LOG_TTL_S = 30.0
REPLAY_IDLE_TIMEOUT_S = 10.0


class _Head(msgspec.Struct):
    type: str


_head_decoder = msgspec.json.Decoder(_Head)


def sse_chunk(stream_seq: int, data: bytes) -> tuple[str, bytes] | None:
    """(type, `id:/event:/data:` block) for one raw event; None if it is not an event."""
    try:
        event_type = _head_decoder.decode(data).type
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if not event_type.replace(".", "").replace("_", "").isalnum():
        return None
    if b"\n" in data or b"\r" in data:
        data = msgspec.json.encode(msgspec.json.decode(data))
    return event_type, b"id: %d\nevent: %s\ndata: %s\n\n" % (stream_seq, event_type.encode(), data)


class GenerationLog:
    """The events of one generation seen so far, as ready-to-send SSE blocks."""

    def __init__(self, generation_id: str) -> None:
        self.generation_id = generation_id
        self.seqs: list[int] = []
        self.types: list[str] = []
        self.chunks: list[bytes] = []
        self.replayed = False
        self.failed: BaseException | None = None
        self.complete = False
        self.watchers = 0
        self.ticks = 0
        self.idle_since = time.monotonic()
        self._target = 0
        self._pending: list[tuple[int, str, bytes]] = []
        self._loop = asyncio.get_running_loop()
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def last_seq(self) -> int:
        """The stream sequence of the last event in the log (0 when empty)."""
        return self.seqs[-1] if self.seqs else 0

    def position_after(self, stream_seq: int) -> int:
        """The index of the first event whose stream sequence is above `stream_seq`."""
        return bisect.bisect_right(self.seqs, stream_seq)

    def next_change(self) -> asyncio.Future[None]:
        """A future of the calling watcher alone, resolved when the log grows, finishes
        replaying, fails, at a keepalive tick, or when the gateway stops.

        One future per watcher and wait, resolved in one pass: cheaper than
        `asyncio.wait` on a shared future, and a watcher cancelling its own touches nobody
        else's.
        """
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        return waiter

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _append(self, seq: int, event_type: str, chunk: bytes) -> None:
        if seq <= self.last_seq:
            return
        self.seqs.append(seq)
        self.types.append(event_type)
        self.chunks.append(chunk)
        if event_type in TERMINAL_TAGS:
            self.complete = True

    def offer_live(self, seq: int, event_type: str, chunk: bytes) -> None:
        """A live event: buffered until the replay ends, appended after it."""
        if not self.replayed:
            if seq > self._target:
                self._pending.append((seq, event_type, chunk))
            return
        if seq > self.last_seq:
            self._append(seq, event_type, chunk)
            self._notify()

    def offer_replayed(self, seq: int, event_type: str, chunk: bytes) -> None:
        """An event read by the replay."""
        self._append(seq, event_type, chunk)

    def replay_done(self) -> None:
        """The replay reached its target: append the buffered live events after it."""
        for seq, event_type, chunk in sorted(self._pending):
            self._append(seq, event_type, chunk)
        self._pending.clear()
        self.replayed = True
        self._notify()

    def replay_failed(self, exc: BaseException) -> None:
        """The replay could not finish: watchers end their streams (clients reconnect)."""
        self.failed = exc
        self._notify()


class Hub:
    """The gateway's live subscription and its shared generation logs."""

    def __init__(self, nc: Client, js: JetStreamContext, *, keepalive_s: float = 15.0) -> None:
        self.nc = nc
        self.js = js
        self.keepalive_s = keepalive_s
        self.logs: dict[str, GenerationLog] = {}
        self._live: JetStreamContext.PushSubscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self.replays_started = 0
        self.on_replay: Callable[[float], None] | None = None
        self.heap = LongLivedHeap()

    async def start(self) -> None:
        """Follow every new event, and start the shared keepalive and sweeper tasks."""
        self._live = await follow_new(
            self.js, subjects.ALL_EVENTS, streams.EVENTS_STREAM, self._on_live
        )
        self._background = [
            asyncio.create_task(self._keepalive_loop()),
            asyncio.create_task(self._sweep_loop()),
        ]

    async def stop(self) -> None:
        """Stop the live subscription, replays and background tasks."""
        for task in [*self._background, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._background, *self._tasks, return_exceptions=True)
        if self._live is not None:
            with contextlib.suppress(Exception):
                await self._live.unsubscribe()
        for generation_log in self.logs.values():
            generation_log.replay_failed(RuntimeError("gateway stopping"))

    async def _on_live(self, msg: Msg) -> None:
        parsed = subjects.parse_event_subject(msg.subject)
        if parsed is None:
            return
        generation_log = self.logs.get(parsed[1])
        if generation_log is None:
            return
        seq = stream_seq(msg)
        block = sse_chunk(seq, msg.data)
        if block is not None:
            generation_log.offer_live(seq, block[0], block[1])

    def attach(self, generation_id: str) -> GenerationLog:
        """The shared log of a generation, replaying it if nobody watches it yet."""
        self.heap.settle()
        generation_log = self.logs.get(generation_id)
        if generation_log is None or generation_log.failed is not None:
            generation_log = GenerationLog(generation_id)
            self.logs[generation_id] = generation_log
            task = asyncio.create_task(self._replay(generation_log))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        generation_log.watchers += 1
        return generation_log

    def detach(self, generation_log: GenerationLog) -> None:
        """A watcher left."""
        generation_log.watchers -= 1
        if generation_log.watchers <= 0:
            generation_log.idle_since = time.monotonic()

    async def _replay(self, generation_log: GenerationLog) -> None:
        started = time.monotonic()
        self.replays_started += 1
        try:
            target = await last_stream_seq(self.js, generation_log.generation_id)
            generation_log._target = target
            if target:
                await self._read_until(generation_log, target)
            generation_log.replay_done()
        except Exception as exc:
            log.warning(
                "Replay of generation {generation_id} failed: {error}",
                generation_id=generation_log.generation_id,
                error=repr(exc),
            )
            generation_log.replay_failed(exc)
            if self.logs.get(generation_log.generation_id) is generation_log:
                del self.logs[generation_log.generation_id]
            return
        if self.on_replay:
            self.on_replay(time.monotonic() - started)

    async def _read_until(self, generation_log: GenerationLog, target: int) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        last_message_at = loop.time()
        unnotified = 0

        async def on_message(msg: Msg) -> None:
            nonlocal last_message_at, unnotified
            last_message_at = loop.time()
            seq = stream_seq(msg)
            block = sse_chunk(seq, msg.data)
            if block is not None:
                generation_log.offer_replayed(seq, block[0], block[1])
            unnotified += 1
            if unnotified >= 64:
                unnotified = 0
                generation_log._notify()
            if seq >= target and not done.done():
                done.set_result(None)

        sub = await subscribe_ordered(
            self.js,
            subjects.generation_events_any_project(generation_log.generation_id),
            cb=on_message,
            idle_heartbeat_s=2.0,
        )
        try:
            while not done.done():
                await asyncio.wait({done}, timeout=1.0)
                if not done.done() and loop.time() - last_message_at > REPLAY_IDLE_TIMEOUT_S:
                    raise TimeoutError(f"replay stalled below stream sequence {target}")
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def wake_all(self) -> None:
        """Wake every watcher (to notice that the gateway is stopping)."""
        for generation_log in self.logs.values():
            generation_log._notify()

    async def _keepalive_loop(self) -> None:
        # The tick reaches watchers through their log's `next_change` futures: a future
        # shared by all 1,000 watchers would cost each wake-up an O(watchers) callback
        # removal.
        while True:
            await asyncio.sleep(self.keepalive_s)
            self.heap.collect_frozen()
            self.heap.settle()
            for generation_log in self.logs.values():
                generation_log.ticks += 1
                generation_log._notify()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(IDLE_LOG_TTL_S / 3)
            now = time.monotonic()
            for generation_id, generation_log in list(self.logs.items()):
                if (
                    generation_log.watchers <= 0
                    and now - generation_log.idle_since > IDLE_LOG_TTL_S
                ):
                    del self.logs[generation_id]
