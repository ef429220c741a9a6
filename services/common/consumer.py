"""The consumer loop, written once: fetch, handle, then ack, retry or dead-letter.

A handler returns an explicit outcome for each message instead of acking as a side effect:

- `Ack()` — done;
- `Retry(reason)` — redeliver later, with a backoff that grows with each delivery, until
  `max_deliveries`, after which the message is dead-lettered;
- `DeadLetter(reason)` — the message can never be handled (undecodable, invalid): it is
  copied to `kiln.dlq.<service>` with the reason and terminated, so it never blocks the
  consumer.

A handler that raises is treated as `Retry`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError

from contracts import subjects
from services.common.broker import NOT_NOW
from services.common.logs import get_logger
from services.common.natsclient import KilnClient
from services.common.pull import pull_batch

log = get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ack:
    """The message is handled."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Handle the message again later."""

    reason: str
    delay_s: float | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The message can never be handled: park it with the reason."""

    reason: str


Outcome = Ack | Retry | DeadLetter


def retry_delay(deliveries: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Backoff before the next delivery: 0.5 s, 1 s, 2 s … up to 30 s."""
    return min(base_s * 2 ** max(deliveries - 1, 0), cap_s)


def deliveries_of(msg: Msg) -> int:
    """How many times this message has been delivered (1 on the first)."""
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


@dataclass(eq=False)
class PullWorker:
    """A durable pull consumer of one service, and the loops that drive it."""

    js: JetStreamContext
    service: str = field(kw_only=True)
    stream: str = field(kw_only=True)
    config: ConsumerConfig = field(kw_only=True)
    max_deliveries: int = field(default=10, kw_only=True)
    headers: bool = field(default=True, kw_only=True)
    """False: the handler never reads a message's headers, so they are not even parsed
    (`KilnClient.skip_headers`; statuses, which end pull requests, still are)."""
    _sub: JetStreamContext.PullSubscription | None = field(default=None, init=False)
    _waiting: str | None = field(default=None, init=False)
    """Why the broker does not answer fetches right now (None while it does)."""

    async def _subscription(self) -> JetStreamContext.PullSubscription:
        if self._sub is None:
            assert self.config.durable_name
            self._sub = await self.js.pull_subscribe(
                self.config.filter_subject or "",
                durable=self.config.durable_name,
                stream=self.stream,
                config=self.config,
            )
            if not self.headers and isinstance(self.js._nc, KilnClient):
                self.js._nc.skip_headers(self._sub._sub._id)
        return self._sub

    async def fetch(self, batch: int, timeout_s: float) -> list[Msg]:
        """Up to `batch` messages, waiting at most about `timeout_s`; [] when none or when
        offline.

        A batch is one pull request (`pull.pull_batch`: one wait per burst of messages, not
        one per message); a single message (`run_each` with one free slot) is nats-py's
        own `fetch`, as before.
        """
        try:
            sub = await self._subscription()
            if batch > 1:
                msgs = await pull_batch(sub, batch, timeout_s)
            else:
                msgs = await sub.fetch(1, timeout=timeout_s)
        except (TimeoutError, nats.errors.TimeoutError):
            # nats-py raises the plain asyncio one when the deadline passes between its
            # two requests of a batch fetch.
            return []
        except NotFoundError:
            log.warning(
                "Consumer {consumer} is gone; recreating it", consumer=self.config.durable_name
            )
            self._sub = None
            await asyncio.sleep(0.2)
            return []
        except NOT_NOW as exc:
            # The broker is restarting, reconnecting or electing a leader: wait, said once.
            if self._waiting is None:
                log.info(
                    "Waiting for the broker: {consumer} cannot fetch yet ({error})",
                    consumer=self.config.durable_name,
                    error=repr(exc),
                )
            self._waiting = repr(exc)
            await asyncio.sleep(0.25)
            return []
        except nats.js.errors.APIError as exc:
            log.warning(
                "Fetch from {consumer} failed: {error}",
                consumer=self.config.durable_name,
                error=repr(exc),
            )
            await asyncio.sleep(0.25)
            return []
        if self._waiting is not None:
            log.info(
                "The broker answers again: {consumer} fetches", consumer=self.config.durable_name
            )
            self._waiting = None
        return msgs

    async def settle(self, msg: Msg, outcome: Outcome) -> None:
        """Apply one outcome to one message."""
        try:
            if isinstance(outcome, Ack):
                await msg.ack()
            elif isinstance(outcome, Retry):
                deliveries = deliveries_of(msg)
                if deliveries >= self.max_deliveries:
                    await self.dead_letter(
                        msg, f"gave up after {deliveries} deliveries: {outcome.reason}"
                    )
                    return
                await msg.nak(
                    delay=outcome.delay_s
                    if outcome.delay_s is not None
                    else retry_delay(deliveries)
                )
            else:
                await self.dead_letter(msg, outcome.reason)
        except (nats.errors.Error, nats.errors.MsgAlreadyAckdError) as exc:
            # The broker redelivers whatever was not settled; nothing is lost.
            log.warning(
                "Could not settle a message: {error}", service=self.service, error=repr(exc)
            )

    async def dead_letter(self, msg: Msg, reason: str) -> None:
        """Copy the message to `kiln.dlq.<service>` with the reason, then terminate it."""
        meta = None
        with contextlib.suppress(Exception):
            meta = msg.metadata
        headers = {
            "Kiln-Dlq-Reason": reason[:1000],
            "Kiln-Dlq-Service": self.service,
            "Kiln-Dlq-Subject": msg.subject,
            "Kiln-Dlq-Stream-Seq": str(meta.sequence.stream if meta else ""),
            "Kiln-Dlq-Deliveries": str(meta.num_delivered if meta else ""),
        }
        await self.js.publish(subjects.dlq_subject(self.service), msg.data, headers=headers)
        await msg.term()
        log.warning(
            "Dead-lettered a message on {subject}: {reason}",
            subject=msg.subject,
            reason=reason[:300],
            service=self.service,
        )

    async def run_batches(
        self,
        handle: Callable[[list[Msg], T], Awaitable[list[Outcome]]],
        stop: asyncio.Event,
        *,
        prepare: Callable[[list[Msg]], Awaitable[T]],
        batch: int = 256,
        fetch_timeout_s: float = 0.5,
    ) -> None:
        """Fetch batches and hand each whole batch to `handle` until `stop` is set.

        A pipeline of three stages, which every batch passes in order:

        1. a fetcher task fetches batches and passes each through `prepare` (pure work, such
           as decoding), keeping one prepared batch waiting, so that fetching and preparing
           go on while `handle` waits for its database (two waiting did not help the
           projector: its event loop was then busier during its transactions);
        2. `handle` takes the batches one at a time, in the order fetched;
        3. a batch's outcomes are settled (ack, nak, dead-letter) in a task of its own while
           `handle` goes on with the next batch. A message is settled only once `handle`
           returned for its batch (the projector: once its transaction committed), and a
           batch's settling starts only after the one before it ended.

        On stop, batches fetched ahead are handed back (nak), so another consumer gets them
        at once, and the last batch's settling is awaited.
        """
        queue: asyncio.Queue[tuple[list[Msg], T] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(1)

        async def fetcher() -> None:
            try:
                while not stop.is_set():
                    await slots.acquire()
                    msgs = [] if stop.is_set() else await self.fetch(batch, fetch_timeout_s)
                    if not msgs:
                        slots.release()
                        continue
                    try:
                        prepared = await prepare(msgs)
                    except Exception as exc:
                        log.exception("Preparing a batch of {service} failed", service=self.service)
                        await self._settle_batch(
                            msgs, [Retry(f"prepare failed: {exc!r}")] * len(msgs)
                        )
                        slots.release()
                        continue
                    queue.put_nowait((msgs, prepared))
            finally:
                queue.put_nowait(None)

        fetching = asyncio.create_task(fetcher())
        settling: asyncio.Task[None] | None = None
        try:
            while (item := await queue.get()) is not None:
                slots.release()
                msgs, prepared = item
                if stop.is_set():
                    await self._hand_back(msgs)
                    continue
                try:
                    outcomes = await handle(msgs, prepared)
                except Exception as exc:
                    log.exception("Handler of {service} failed on a batch", service=self.service)
                    outcomes = [Retry(f"handler failed: {exc!r}")] * len(msgs)
                if settling is not None:
                    await settling
                settling = asyncio.create_task(self._settle_batch(msgs, outcomes))
            await fetching  # it ended on stop, or failed: then so does this loop
        finally:
            fetching.cancel()
            await asyncio.gather(fetching, return_exceptions=True)
            while not queue.empty():
                item = queue.get_nowait()
                if item is not None:
                    await self._hand_back(item[0])
            if settling is not None:
                await settling

    async def _settle_batch(self, msgs: list[Msg], outcomes: list[Outcome]) -> None:
        """Settle a batch in order; with a `KilnClient`, each run of acks is one write."""
        nc = self.js._nc  # nats-py keeps a JetStream context's connection here
        acks: list[Msg] = []
        for msg, outcome in zip(msgs, outcomes, strict=True):
            kiln_ack = isinstance(nc, KilnClient) and isinstance(outcome, Ack)
            if kiln_ack and msg.reply and not msg._ackd:
                acks.append(msg)
                continue
            await self._ack_each(nc, acks)
            await self.settle(msg, outcome)
        await self._ack_each(nc, acks)

    async def _ack_each(self, nc: object, acks: list[Msg]) -> None:
        """`KilnClient.ack_each` of `acks` (emptied), failures logged as `settle` does."""
        if not acks:
            return
        assert isinstance(nc, KilnClient), "runs of acks are gathered for a KilnClient only"
        try:
            await nc.ack_each(acks)
        except (nats.errors.Error, nats.errors.MsgAlreadyAckdError) as exc:
            # The broker redelivers whatever was not settled; nothing is lost.
            log.warning(
                "Could not settle {count} messages: {error}",
                count=len(acks),
                service=self.service,
                error=repr(exc),
            )
        acks.clear()

    async def _hand_back(self, msgs: list[Msg]) -> None:
        """Nak messages fetched ahead, so that another consumer gets them at once."""
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.nak()
        if msgs:
            log.info(
                "Handed {count} messages fetched ahead back to {consumer}",
                count=len(msgs),
                consumer=self.config.durable_name,
            )

    async def run_each(
        self,
        handle: Callable[[Msg], Awaitable[Outcome]],
        stop: asyncio.Event,
        *,
        concurrency: int,
        heartbeat_s: float,
        fetch_timeout_s: float = 0.5,
        grace_s: float | None = None,
    ) -> None:
        """Handle up to `concurrency` messages at once, each in its own task.

        Messages are fetched as slots free up, as many in one request as there are free
        slots (a burst of 50 generate commands was 50 requests, one at a time, each
        waiting for the server's answer).

        While a message is being handled, its delivery is kept alive (`in_progress`) every
        `heartbeat_s`, so a long job is not handed to another worker. On stop, no message is
        fetched any more and in-flight handlers get `grace_s` (None: as long as they need) to
        finish; those still running then are cancelled and their messages handed back (nak),
        so another worker takes them at once.
        """
        running: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(concurrency)

        async def one(msg: Msg) -> None:
            keepalive = asyncio.create_task(self._keep_alive(msg, heartbeat_s))
            try:
                try:
                    outcome = await handle(msg)
                except asyncio.CancelledError:
                    keepalive.cancel()
                    with contextlib.suppress(Exception):
                        await msg.nak()
                    raise
                except Exception as exc:
                    log.exception("Handler of {service} failed", service=self.service)
                    outcome = Retry(f"handler failed: {exc!r}")
            finally:
                keepalive.cancel()
                slots.release()
            await self.settle(msg, outcome)

        try:
            while not stop.is_set():
                await slots.acquire()
                if stop.is_set():
                    slots.release()
                    break
                # One request for as many messages as there are free slots.
                free = 1
                while not slots.locked():
                    await slots.acquire()
                    free += 1
                msgs = await self.fetch(free, fetch_timeout_s)
                for _ in range(free - len(msgs)):
                    slots.release()
                for msg in msgs:
                    task = asyncio.create_task(one(msg))
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            if running:
                _, unfinished = await asyncio.wait(set(running), timeout=grace_s)
                if unfinished:
                    log.info(
                        "Handing {count} unfinished messages back to {consumer}",
                        count=len(unfinished),
                        consumer=self.config.durable_name,
                        service=self.service,
                    )
                    for task in unfinished:
                        task.cancel()
                    await asyncio.gather(*unfinished, return_exceptions=True)

    @staticmethod
    async def _keep_alive(msg: Msg, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(Exception):
                await msg.in_progress()
