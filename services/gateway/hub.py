"""One shared, growing copy of each watched generation's events, fed by one ordered consumer
of its subject, read by every watcher at its own pace.

1. When the first watcher of a generation arrives, its `GenerationLog` is registered, the
   last stream sequence T of the generation's subject is read, and one ordered consumer of
   the subject is opened from its first message. Up to T it is the replay; after T it
   delivers the generation's new events as they are stored. One consumer reads both, in
   stream order, so there is no seam between replay and live where an event could be lost
   or doubled.
2. Watchers that join later share the same log: one consumer per watched generation,
   however many clients watch it.
3. Logs nobody watches are dropped 30 to 40 s after their last watcher left (`sweep`), and
   their consumer with them. A watched generation costs a server-side consumer sending a
   heartbeat every 2 s and nats-py's flow-control check every 0.25 s: 3 to 5 % of a core
   per 1,000 generations watched at once (streams end with their generation, so what is
   watched for long is what is running).

The gateway reads only the generations someone watches: events of the others (most of
them, while a generation runs with nobody looking) cost it nothing.

A watcher never owns a consumer or a queue: it keeps an index into the shared log, so a
slow client costs only itself, and a disconnect leaves nothing behind.
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

from contracts import subjects
from contracts.events import TERMINAL_TAGS
from services.common.eventlog import last_stream_seq, stream_seq, subscribe_ordered
from services.common.heap import LongLivedHeap
from services.common.logs import get_logger

log = get_logger(__name__)

IDLE_LOG_TTL_S = 30.0
REPLAY_IDLE_TIMEOUT_S = 10.0
FOLLOW_HEARTBEAT_S = 2.0
"""Two heartbeats missed and nats-py recreates a log's consumer where it left off (a broker
restart costs seconds)."""


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
        self.last_message_at = 0.0
        """When its consumer last delivered (the event loop's clock)."""
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
        """A new event, after the replay: watchers are woken at once."""
        if seq > self.last_seq:
            self._append(seq, event_type, chunk)
            self._notify()

    def offer_replayed(self, seq: int, event_type: str, chunk: bytes) -> None:
        """An event read by the replay (watchers are woken every few of them)."""
        self._append(seq, event_type, chunk)

    def replay_done(self) -> None:
        """The replay reached the generation's last event as of the first watcher."""
        self.replayed = True
        self._notify()

    def replay_failed(self, exc: BaseException) -> None:
        """The replay could not finish: watchers end their streams (clients reconnect)."""
        self.failed = exc
        self._notify()


class Hub:
    """The gateway's shared generation logs, each following its generation's subject."""

    def __init__(self, nc: Client, js: JetStreamContext, *, keepalive_s: float = 15.0) -> None:
        self.nc = nc
        self.js = js
        self.keepalive_s = keepalive_s
        self.logs: dict[str, GenerationLog] = {}
        self._follows: dict[GenerationLog, asyncio.Task[None]] = {}
        self._background: list[asyncio.Task[None]] = []
        self.replays_started = 0
        self.on_replay: Callable[[float], None] | None = None
        self.heap = LongLivedHeap()

    async def start(self) -> None:
        """Start the shared keepalive and sweeper tasks."""
        self._background = [
            asyncio.create_task(self._keepalive_loop()),
            asyncio.create_task(self._sweep_loop()),
        ]

    async def stop(self) -> None:
        """Stop every log's consumer and the background tasks."""
        follows = list(self._follows.values())
        for task in [*self._background, *follows]:
            task.cancel()
        await asyncio.gather(*self._background, *follows, return_exceptions=True)
        for generation_log in self.logs.values():
            generation_log.replay_failed(RuntimeError("gateway stopping"))

    def attach(self, generation_id: str) -> GenerationLog:
        """The shared log of a generation, following it if nobody watches it yet."""
        self.heap.settle()
        generation_log = self.logs.get(generation_id)
        if generation_log is None or generation_log.failed is not None:
            generation_log = GenerationLog(generation_id)
            self.logs[generation_id] = generation_log
            task = asyncio.create_task(self._follow(generation_log))
            self._follows[generation_log] = task
            task.add_done_callback(lambda _: self._follows.pop(generation_log, None))
        generation_log.watchers += 1
        return generation_log

    def detach(self, generation_log: GenerationLog) -> None:
        """A watcher left."""
        generation_log.watchers -= 1
        if generation_log.watchers <= 0:
            generation_log.idle_since = time.monotonic()

    def _drop(self, generation_id: str) -> None:
        generation_log = self.logs.pop(generation_id)
        task = self._follows.get(generation_log)
        if task is not None:
            task.cancel()

    async def _follow(self, generation_log: GenerationLog) -> None:
        """Replay the generation up to its last event, then follow it, until dropped."""
        started = time.monotonic()
        self.replays_started += 1
        replayed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            target = await last_stream_seq(self.js, generation_log.generation_id)
            sub = await self._subscribe(generation_log, target, replayed)
        except Exception as exc:
            self._replay_failed(generation_log, exc)
            return
        try:
            if not target:
                generation_log.replay_done()
            else:
                await self._until_replayed(generation_log, replayed, target)
            if self.on_replay:
                self.on_replay(time.monotonic() - started)
            await asyncio.Future()  # follow until dropped (cancelled)
        except Exception as exc:
            self._replay_failed(generation_log, exc)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _subscribe(
        self, generation_log: GenerationLog, target: int, replayed: asyncio.Future[None]
    ) -> JetStreamContext.PushSubscription:
        """The generation's ordered consumer: replayed events up to `target` (watchers woken
        every 64 of them), then live ones (woken at each)."""
        loop = asyncio.get_running_loop()
        unnotified = 0

        async def on_message(msg: Msg) -> None:
            nonlocal unnotified
            seq = stream_seq(msg)
            block = sse_chunk(seq, msg.data)
            if generation_log.replayed:
                if block is not None:
                    generation_log.offer_live(seq, block[0], block[1])
                return
            if block is not None:
                generation_log.offer_replayed(seq, block[0], block[1])
            unnotified += 1
            if seq >= target:
                generation_log.replay_done()
                replayed.set_result(None)
            elif unnotified >= 64:
                unnotified = 0
                generation_log._notify()
            generation_log.last_message_at = loop.time()

        return await subscribe_ordered(
            self.js,
            subjects.generation_events_any_project(generation_log.generation_id),
            cb=on_message,
            idle_heartbeat_s=FOLLOW_HEARTBEAT_S,
        )

    @staticmethod
    async def _until_replayed(
        generation_log: GenerationLog, replayed: asyncio.Future[None], target: int
    ) -> None:
        loop = asyncio.get_running_loop()
        generation_log.last_message_at = loop.time()
        while not replayed.done():
            await asyncio.wait({replayed}, timeout=1.0)
            idle = loop.time() - generation_log.last_message_at
            if not replayed.done() and idle > REPLAY_IDLE_TIMEOUT_S:
                raise TimeoutError(f"replay stalled below stream sequence {target}")

    def _replay_failed(self, generation_log: GenerationLog, exc: BaseException) -> None:
        log.warning(
            "Replay of generation {generation_id} failed: {error}",
            generation_id=generation_log.generation_id,
            error=repr(exc),
        )
        generation_log.replay_failed(exc)
        if self.logs.get(generation_log.generation_id) is generation_log:
            del self.logs[generation_log.generation_id]

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

    def sweep(self, now: float) -> None:
        """Drop the logs nobody has watched for `IDLE_LOG_TTL_S` by `now` (the monotonic
        clock), and their consumers."""
        for generation_id, generation_log in list(self.logs.items()):
            if generation_log.watchers <= 0 and now - generation_log.idle_since > IDLE_LOG_TTL_S:
                self._drop(generation_id)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(IDLE_LOG_TTL_S / 3)
            self.sweep(time.monotonic())
