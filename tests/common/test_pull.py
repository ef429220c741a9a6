"""One pull request per batch on a real nats-server: a full batch, what is pending now
without waiting out the deadline, messages that come later, nothing, leftovers of an
earlier request, and nats-py's private parts this relies on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from services.common.pull import pull_batch
from tests.common.conftest import PLAIN_STREAM, PLAIN_SUBJECT, numbers_of, publish_numbers


async def _subscription(plain_nc: Client) -> JetStreamContext.PullSubscription:
    return await plain_nc.jetstream().pull_subscribe(
        PLAIN_SUBJECT,
        durable="pull",
        stream=PLAIN_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0),
    )


def test_the_private_parts_of_nats_py_it_uses_are_there() -> None:
    # pull_batch reads these (as nats-py's own fetch does); a nats-py upgrade that renames
    # them must fail here, not silently in production.
    init = JetStreamContext.PullSubscription.__init__.__code__.co_names
    assert {"_nc", "_sub", "_nms", "_deliver"} <= set(init)
    fetch_n = JetStreamContext.PullSubscription._fetch_n.__code__.co_names
    assert {"_pending_queue", "_pending_size"} <= set(fetch_n)


async def test_a_full_batch_then_the_rest_then_nothing(plain_nc: Client) -> None:
    await publish_numbers(plain_nc, range(25))
    sub = await _subscription(plain_nc)
    first = await pull_batch(sub, 10, 2.0)
    second = await pull_batch(sub, 10, 2.0)
    started = time.monotonic()
    third = await pull_batch(sub, 10, 2.0)  # 5 pending: returned at once, not after 2 s
    assert time.monotonic() - started < 1.0
    assert numbers_of(first + second + third) == list(range(25))
    for msg in first + second + third:
        await msg.ack()

    started = time.monotonic()
    assert await pull_batch(sub, 10, 0.3) == []
    assert 0.25 < time.monotonic() - started < 1.5
    assert sub._sub._pending_size == 0


async def test_messages_published_while_it_waits_are_returned_at_once(plain_nc: Client) -> None:
    sub = await _subscription(plain_nc)

    async def later() -> None:
        await asyncio.sleep(0.2)
        await publish_numbers(plain_nc, range(3))

    publishing = asyncio.create_task(later())
    started = time.monotonic()
    msgs = await pull_batch(sub, 100, 5.0)
    await publishing
    assert time.monotonic() - started < 2.0
    # The first ones end the request; any others come with the next.
    msgs += await pull_batch(sub, 100, 0.5) if len(msgs) < 3 else []
    assert numbers_of(msgs) == [0, 1, 2]


async def test_a_late_status_of_an_earlier_request_is_dropped(plain_nc: Client) -> None:
    sub = await _subscription(plain_nc)
    # An earlier request's end, delivered after its caller stopped waiting.
    await plain_nc.publish(sub._deliver, b"", headers={"Status": "408", "Description": "Timeout"})
    await plain_nc.flush()
    await asyncio.sleep(0.1)
    await publish_numbers(plain_nc, range(4))
    msgs = await pull_batch(sub, 10, 2.0)
    msgs += await pull_batch(sub, 10, 0.5) if len(msgs) < 4 else []
    assert numbers_of(msgs) == [0, 1, 2, 3]


async def test_one_request_for_a_batch(plain_nc: Client) -> None:
    await publish_numbers(plain_nc, range(50))
    sub = await _subscription(plain_nc)
    requests: list[bytes] = []
    spy = await plain_nc.subscribe(sub._nms, cb=_record(requests))
    msgs = await pull_batch(sub, 50, 2.0)
    await plain_nc.flush()
    await asyncio.sleep(0.05)
    await spy.unsubscribe()
    assert numbers_of(msgs) == list(range(50))
    assert len(requests) == 1


def _record(into: list[bytes]) -> Callable[[Msg], Awaitable[None]]:
    async def cb(msg: Msg) -> None:
        into.append(msg.data)

    return cb
