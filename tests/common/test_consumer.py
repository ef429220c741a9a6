"""The batch loop: every message handled once, in order, the next batch prepared while this
one is handled, a batch settled only once handled (in order, while the next is handled),
and a batch fetched ahead handed back on stop."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from services.common.consumer import Ack, Outcome, PullWorker
from tests.common.conftest import PLAIN_STREAM, PLAIN_SUBJECT, numbers_of, publish_numbers
from tests.support.waiting import eventually

ACK_WAIT_S = 30.0


def _worker(plain_nc: Client) -> PullWorker:
    config = ConsumerConfig(
        durable_name="batches",
        filter_subject=PLAIN_SUBJECT,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
    )
    return PullWorker(plain_nc.jetstream(), service="test", stream=PLAIN_STREAM, config=config)


async def _prepare_numbers(msgs: list[Msg]) -> list[int]:
    return numbers_of(msgs)


async def test_every_message_is_handled_once_in_order_with_its_batchs_preparation(
    plain_nc: Client,
) -> None:
    await publish_numbers(plain_nc, range(50))
    handled: list[int] = []
    stop = asyncio.Event()

    async def handle(msgs: list[Msg], prepared: list[int]) -> list[Outcome]:
        assert prepared == numbers_of(msgs)
        handled.extend(prepared)
        if len(handled) >= 50:
            stop.set()
        return [Ack()] * len(msgs)

    await asyncio.wait_for(
        _worker(plain_nc).run_batches(handle, stop, prepare=_prepare_numbers, batch=7), 20
    )
    assert handled == list(range(50))


async def test_the_next_batch_is_prepared_while_this_one_is_handled(plain_nc: Client) -> None:
    await publish_numbers(plain_nc, range(20))
    next_prepared = asyncio.Event()
    prepared_batches: list[list[int]] = []
    stop = asyncio.Event()

    async def prepare(msgs: list[Msg]) -> list[int]:
        prepared_batches.append(numbers_of(msgs))
        if len(prepared_batches) == 2:
            next_prepared.set()
        return numbers_of(msgs)

    async def handle(msgs: list[Msg], prepared: list[int]) -> list[Outcome]:
        if prepared[0] == 0:
            # The first batch is handled only once the second is prepared: they overlap.
            await asyncio.wait_for(next_prepared.wait(), 5)
        if prepared[-1] == 19:
            stop.set()
        return [Ack()] * len(msgs)

    await asyncio.wait_for(
        _worker(plain_nc).run_batches(handle, stop, prepare=prepare, batch=10), 20
    )
    assert prepared_batches[:2] == [list(range(10)), list(range(10, 20))]


async def test_on_stop_a_batch_fetched_ahead_is_handed_back_at_once(plain_nc: Client) -> None:
    await publish_numbers(plain_nc, range(20))
    stop = asyncio.Event()
    handled: list[int] = []

    async def handle(msgs: list[Msg], prepared: list[int]) -> list[Outcome]:
        handled.extend(prepared)
        await asyncio.sleep(0.3)  # the next batch is fetched meanwhile
        stop.set()
        return [Ack()] * len(msgs)

    await asyncio.wait_for(
        _worker(plain_nc).run_batches(handle, stop, prepare=_prepare_numbers, batch=10), 20
    )
    assert handled == list(range(10))

    # The next process gets the rest now, not after the ack wait of the first.
    rest: list[int] = []
    again = asyncio.Event()

    async def handle_rest(msgs: list[Msg], prepared: list[int]) -> list[Outcome]:
        rest.extend(prepared)
        if len(rest) >= 10:
            again.set()
        return [Ack()] * len(msgs)

    await asyncio.wait_for(
        _worker(plain_nc).run_batches(handle_rest, again, prepare=_prepare_numbers, batch=10), 5
    )
    assert rest == list(range(10, 20))


async def test_a_batch_is_settled_after_its_handler_returned_in_order(plain_nc: Client) -> None:
    await publish_numbers(plain_nc, range(30))
    timeline: list[tuple[str, int]] = []
    stop = asyncio.Event()
    worker = _worker(plain_nc)
    settle = worker.settle

    async def recording_settle(msg: Msg, outcome: Outcome) -> None:
        timeline.append(("settled", int(msg.data)))
        await settle(msg, outcome)

    worker.settle = recording_settle  # type: ignore[method-assign]

    async def handle(msgs: list[Msg], prepared: list[int]) -> list[Outcome]:
        timeline.append(("handling", prepared[0]))
        await asyncio.sleep(0.05)  # a transaction
        timeline.append(("handled", prepared[-1]))
        if prepared[-1] == 29:
            stop.set()
        return [Ack()] * len(msgs)

    await asyncio.wait_for(worker.run_batches(handle, stop, prepare=_prepare_numbers, batch=10), 20)
    settled = [n for kind, n in timeline if kind == "settled"]
    assert settled == list(range(30))
    for n in settled:
        # Settled only after the handler returned for its batch (last number n // 10 * 10 + 9).
        assert timeline.index(("handled", n // 10 * 10 + 9)) < timeline.index(("settled", n))

    async def all_acked() -> bool:
        info = await plain_nc.jetstream().consumer_info(PLAIN_STREAM, "batches")
        return info.num_ack_pending == 0 and info.num_pending == 0

    await eventually(all_acked, 10, what="every message acked")


async def test_one_at_a_time_handling_takes_as_many_messages_as_it_has_free_slots_at_once(
    plain_nc: Client,
) -> None:
    # A burst of commands costs one pull request per free slot count, not one per command
    # (nats-py's one-message fetch was a tenth of an orchestrator's CPU in B6's rounds).
    await publish_numbers(plain_nc, range(10))
    worker = _worker(plain_nc)
    asked: list[int] = []
    fetch = worker.fetch

    async def counted(batch: int, timeout_s: float) -> list[Msg]:
        asked.append(batch)
        return await fetch(batch, timeout_s)

    worker.fetch = counted  # type: ignore[method-assign]
    running: set[int] = set()
    most = 0
    handled: list[int] = []
    release = asyncio.Event()
    stop = asyncio.Event()

    async def handle(msg: Msg) -> Outcome:
        nonlocal most
        number = numbers_of([msg])[0]
        running.add(number)
        most = max(most, len(running))
        await release.wait()
        running.discard(number)
        handled.append(number)
        if len(handled) == 10:
            stop.set()
        return Ack()

    task = asyncio.create_task(worker.run_each(handle, stop, concurrency=4, heartbeat_s=5))
    await eventually(lambda: len(running) == 4, 10)
    assert asked == [4]  # every slot was free: one request for four
    await asyncio.sleep(0.2)
    assert asked == [4] and len(running) == 4  # no slot free: nothing more is asked for
    release.set()
    await asyncio.wait_for(task, 20)
    assert sorted(handled) == list(range(10))
    assert most == 4
    assert sum(asked) >= 10 and len(asked) < 10
