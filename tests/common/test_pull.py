"""One pull request per batch on a real nats-server: a full batch, what is pending now
without waiting out the deadline, messages that come later, nothing, leftovers of an
earlier request, atomic batches that come whole, and nats-py's private parts this relies on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from services.common import pull
from services.common.broker import connect
from services.common.embedded_nats import EmbeddedNats
from services.common.natsclient import KilnClient
from services.common.pull import ends_in_a_cut_batch, pull_batch
from services.common.settings import load_settings
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


ATOMIC_STREAM = "TESTATOMIC"
ATOMIC_SUBJECT = "test.atomic"


async def _publish_atomic(nc: Client, batch: int, numbers: range) -> None:
    """Publish `numbers` as one atomic batch (the last message commits it)."""
    for number in numbers:
        headers = {
            "Nats-Batch-Id": f"b{batch}",
            "Nats-Batch-Sequence": str(number - numbers[0] + 1),
        }
        if number == numbers[-1]:
            headers["Nats-Batch-Commit"] = "1"
            await nc.jetstream().publish(ATOMIC_SUBJECT, str(number).encode(), headers=headers)
        else:
            await nc.publish(ATOMIC_SUBJECT, str(number).encode(), headers=headers)


@pytest.mark.parametrize("headers", ["parsed", "skipped"])
async def test_atomic_batches_come_whole_while_the_server_stores_them(
    plain_nc: Client, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch, headers: str
) -> None:
    # nats-server stores a committed atomic batch message by message; a request it serves
    # meanwhile may end after the first ones. pull_batch then asks for the rest at once,
    # so each batch it returns ends with a batch's commit (B6's 38 events in one batch) —
    # also for storage's pull, whose header blocks are not parsed (`skip_headers`).
    await plain_nc.jetstream().add_stream(
        StreamConfig(name=ATOMIC_STREAM, subjects=[ATOMIC_SUBJECT], allow_atomic=True)
    )
    monkeypatch.setenv("NATS_URL", nats_server.url)
    reader = await connect(load_settings(), "test") if headers == "skipped" else plain_nc
    sub = await reader.jetstream().pull_subscribe(
        ATOMIC_SUBJECT,
        durable="atomic",
        stream=ATOMIC_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0),
    )
    if isinstance(reader, KilnClient):
        reader.skip_headers(sub._sub._id)
    size = 40
    for batch in range(20):
        numbers = range(batch * size, (batch + 1) * size)
        taking = asyncio.create_task(pull_batch(sub, 1000, 2.0))
        await asyncio.sleep(0.01)  # the request waits on the server when the batch lands
        await _publish_atomic(plain_nc, batch, numbers)
        msgs = await taking
        assert numbers_of(msgs) == list(numbers), f"batch {batch} came cut"
        if headers == "parsed":
            assert msgs[-1].headers and msgs[-1].headers.get("Nats-Batch-Commit") == "1"
        for msg in msgs:
            await msg.ack()
    if reader is not plain_nc:
        await reader.close()


async def test_a_cut_batch_whose_rest_never_comes_costs_one_short_wait(
    plain_nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A consumer that does not see a batch's commit (filtered out, or already acked) must
    # not wait its whole deadline for it: the request for the rest ends after
    # REST_OF_BATCH_S and what came is returned.
    monkeypatch.setattr(pull, "REST_OF_BATCH_S", 0.2)
    await plain_nc.jetstream().add_stream(
        StreamConfig(name=ATOMIC_STREAM, subjects=[f"{ATOMIC_SUBJECT}.*"], allow_atomic=True)
    )
    js = plain_nc.jetstream()
    for number, subject in enumerate(("a", "a", "b")):
        headers = {"Nats-Batch-Id": "only", "Nats-Batch-Sequence": str(number + 1)}
        if number == 2:
            headers["Nats-Batch-Commit"] = "1"
            await js.publish(f"{ATOMIC_SUBJECT}.{subject}", b"%d" % number, headers=headers)
        else:
            await plain_nc.publish(f"{ATOMIC_SUBJECT}.{subject}", b"%d" % number, headers=headers)
    sub = await js.pull_subscribe(
        f"{ATOMIC_SUBJECT}.a",
        durable="filtered",
        stream=ATOMIC_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0),
    )
    started = time.monotonic()
    msgs = await pull_batch(sub, 100, 5.0)
    assert numbers_of(msgs) == [0, 1]
    assert 0.15 < time.monotonic() - started < 1.5


def test_which_messages_end_a_cut_batch() -> None:
    def msg(headers: dict[str, str] | None, delivered: int = 1) -> Msg:
        reply = f"$JS.ACK.S.c.{delivered}.7.7.1700000000000000000.0"
        return Msg(None, subject="s", reply=reply, data=b"", headers=headers)  # type: ignore[arg-type]

    part = {"Nats-Batch-Id": "x", "Nats-Batch-Sequence": "1"}
    assert ends_in_a_cut_batch([msg(None), msg(part)])
    assert not ends_in_a_cut_batch([msg(part), msg(None)])
    assert not ends_in_a_cut_batch([msg({**part, "Nats-Batch-Commit": "1"})])
    assert not ends_in_a_cut_batch([msg(part, delivered=2)])  # a redelivery: no rest follows
    assert not ends_in_a_cut_batch([])
