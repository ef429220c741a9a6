"""The batch loop: every message handled once, in order, the next batch prepared while this
one is handled, and a batch fetched ahead handed back on stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from services.common.consumer import Ack, Outcome, PullWorker
from services.common.embedded_nats import EmbeddedNats

STREAM = "TESTBATCH"
SUBJECT = "test.batch"
ACK_WAIT_S = 30.0


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    await client.jetstream().add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT]))
    yield client
    await client.close()


def _worker(nc: Client) -> PullWorker:
    config = ConsumerConfig(
        durable_name="batches",
        filter_subject=SUBJECT,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
    )
    return PullWorker(nc.jetstream(), service="test", stream=STREAM, config=config)


async def _publish(nc: Client, count: int) -> None:
    js = nc.jetstream()
    for i in range(count):
        await js.publish(SUBJECT, str(i).encode())


def _numbers(msgs: list[Msg]) -> list[int]:
    return [int(msg.data) for msg in msgs]


async def test_every_message_is_handled_once_in_order_with_its_batchs_preparation(
    nc: Client,
) -> None:
    await _publish(nc, 50)
    handled: list[int] = []
    stop = asyncio.Event()

    async def handle(msgs: list[Msg], prepared: list[int]) -> list[Outcome]:
        assert prepared == _numbers(msgs)
        handled.extend(prepared)
        if len(handled) >= 50:
            stop.set()
        return [Ack()] * len(msgs)

    await asyncio.wait_for(_worker(nc).run_batches(handle, stop, prepare=_numbers, batch=7), 20)
    assert handled == list(range(50))


async def test_the_next_batch_is_prepared_while_this_one_is_handled(nc: Client) -> None:
    await _publish(nc, 20)
    next_prepared = asyncio.Event()
    prepared_batches: list[list[int]] = []
    stop = asyncio.Event()

    def prepare(msgs: list[Msg]) -> list[int]:
        prepared_batches.append(_numbers(msgs))
        if len(prepared_batches) == 2:
            next_prepared.set()
        return _numbers(msgs)

    async def handle(msgs: list[Msg], prepared: list[int]) -> list[Outcome]:
        if prepared[0] == 0:
            # The first batch is handled only once the second is prepared: they overlap.
            await asyncio.wait_for(next_prepared.wait(), 5)
        if prepared[-1] == 19:
            stop.set()
        return [Ack()] * len(msgs)

    await asyncio.wait_for(_worker(nc).run_batches(handle, stop, prepare=prepare, batch=10), 20)
    assert prepared_batches[:2] == [list(range(10)), list(range(10, 20))]


async def test_on_stop_a_batch_fetched_ahead_is_handed_back_at_once(nc: Client) -> None:
    await _publish(nc, 20)
    stop = asyncio.Event()
    handled: list[int] = []

    async def handle(msgs: list[Msg], prepared: list[int]) -> list[Outcome]:
        handled.extend(prepared)
        await asyncio.sleep(0.3)  # the next batch is fetched meanwhile
        stop.set()
        return [Ack()] * len(msgs)

    await asyncio.wait_for(_worker(nc).run_batches(handle, stop, prepare=_numbers, batch=10), 20)
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
        _worker(nc).run_batches(handle_rest, again, prepare=_numbers, batch=10), 5
    )
    assert rest == list(range(10, 20))
