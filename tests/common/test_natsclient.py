"""`parse_header_lines` returns what nats-py's own parser returns, for every header block:
events' headers, odd names and values, and random bytes; services connect with it; and a
subscription that skips headers still sees the statuses that end pull requests; a batch's
acks are the bytes nats-py would send one by one."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import MsgAlreadyAckdError
from nats.js.api import AckPolicy, ConsumerConfig

from services.common.broker import connect
from services.common.consumer import Ack, PullWorker, Retry
from services.common.embedded_nats import EmbeddedNats
from services.common.eventlog import stream_seq
from services.common.natsclient import _PLAIN_OUT, KilnClient, _plain_block, parse_header_lines
from services.common.settings import load_settings
from tests.support.waiting import eventually


@pytest.fixture
async def service_nc(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[KilnClient]:
    """A client of this test's nats-server connected as the services connect
    (`broker.connect`)."""
    monkeypatch.setenv("NATS_URL", nats_server.url)
    nc = await connect(load_settings(), "test")
    assert isinstance(nc, KilnClient)
    yield nc
    await nc.close()


EVENT_HEADERS = (
    b"ce-specversion: 1.0\r\nce-id: 0b9f6a1e-4b8e-4d7b-9a41-6a3c2d1e0f11\r\n"
    b"ce-source: /kiln/orchestrator\r\nce-type: kiln.file.written\r\n"
    b"ce-time: 2026-12-02T11:23:45.123456Z\r\nce-subject: 7c9e6679-7425-40de-944b\r\n"
    b"ce-datacontenttype: application/json\r\nNats-Msg-Id: 7c9e6679:123\r\n\r\n"
)

ODD = [
    b"",
    b"\r\n",
    b"\r\n\r\n",
    EVENT_HEADERS,
    b"a:b",
    b"a:b\r\n",
    b"Name:Value\r\nName:\tTabbed\r\n",
    b"Key: first\r\nKey: second\r\n\r\n",
    b" Leading: space\r\nTrailing : space\r\n",
    b"In side: x\r\nTab\there: y\r\n\x1cSep: z\r\nOk\x1f: w\r\n",
    b": no name\r\n::\r\n:\r\n",
    b"no colon at all\r\nthen: one\r\n",
    b"Value: with: colons: inside\r\n",
    b"Lone: line\nfeed\r\nLone2: carriage\rreturn\r\n",
    b"Utf8: caf\xc3\xa9\r\nBad-Utf8: \xff\xfe\r\nN\xc3\xa9: name\r\n",
    b"Spaces:    padded value   \r\nEmpty:\r\nOnly-Spaces:    \r\n",
    b"Vt\x0bKey: v\r\nFf\x0cKey: v\r\nDel\x7f: v\r\nNul\x00: v\r\n",
    b"Nats-Expected-Last-Subject-Sequence: 42\r\nNats-Batch-Commit: 1\r\n\r\n",
]


@pytest.mark.parametrize("raw", ODD)
def test_odd_header_blocks_parse_as_nats_py_parses_them(raw: bytes) -> None:
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)


def test_random_header_blocks_parse_as_nats_py_parses_them() -> None:
    rng = random.Random(18)
    alphabet = b"ab-: \t\r\n\x0b\x0c\x1c\x7f\x00\xc3\xa9\xffZ9"
    for _ in range(5000):
        lines = [
            bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
            for _ in range(rng.randrange(0, 5))
        ]
        raw = b"\r\n".join(lines) + rng.choice([b"", b"\r\n", b"\r\n\r\n"])
        assert parse_header_lines(raw) == Client._parse_header_lines(raw), raw


def test_random_well_formed_blocks_parse_as_nats_py_parses_them() -> None:
    # Mostly `Token: Value` lines (the fast path), now and then with what takes it off:
    # spaces around a value, an empty one, a tab, a byte outside printable ASCII.
    rng = random.Random(20)
    name_chars = b"abcXYZ-_.09!~;"
    value_chars = b'abc 09:-/.{}~"\\'
    odd = [b" ", b"", b"\t", b"\x7f", b"\xc3\xa9", b":", b" x "]
    for _ in range(5000):
        lines = []
        for _ in range(rng.randrange(0, 6)):
            name = bytes(rng.choice(name_chars) for _ in range(rng.randrange(1, 8)))
            value = bytes(rng.choice(value_chars) for _ in range(rng.randrange(1, 12)))
            if rng.random() < 0.1:
                value = rng.choice(odd) + value if rng.random() < 0.5 else value + rng.choice(odd)
            lines.append(name + b": " + value + b"\r\n")
        raw = b"".join(lines) + rng.choice([b"", b"\r\n"])
        assert parse_header_lines(raw) == Client._parse_header_lines(raw), raw


async def test_services_connect_with_the_faster_parser_and_read_headers(
    service_nc: KilnClient,
) -> None:
    assert isinstance(service_nc, KilnClient)
    sub = await service_nc.subscribe("test.headers")
    await service_nc.publish("test.headers", b"x", headers={"ce-id": "1", "Nats-Msg-Id": "g:1"})
    msg: Msg = await sub.next_msg(timeout=5)
    assert msg.headers == {"ce-id": "1", "Nats-Msg-Id": "g:1"}


def test_the_private_method_it_overrides_is_there() -> None:
    # `KilnClient._process_msg` wraps nats-py's; a nats-py upgrade that changes it must
    # fail here, not silently in production.
    names = Client._process_msg.__code__.co_varnames[:6]
    assert names == ("self", "sid", "subject", "reply", "data", "headers")


async def test_a_subscription_skipping_headers_gets_none_but_still_sees_statuses(
    service_nc: KilnClient,
) -> None:
    # Storage's pull of every event (`PullWorker(headers=False)`): no header block is
    # parsed but for those with an inline status, which end each pull request, so a batch
    # of what is pending returns at once instead of waiting out its deadline.
    assert isinstance(service_nc, KilnClient)
    skipping = await service_nc.subscribe("test.skip")
    service_nc.skip_headers(skipping._id)
    reading = await service_nc.subscribe("test.skip")
    await service_nc.publish("test.skip", b"x", headers={"ce-id": "1", "Status": "404"})
    assert (await skipping.next_msg(timeout=5)).headers is None
    msg = await reading.next_msg(timeout=5)
    assert (msg.data, msg.headers) == (b"x", {"ce-id": "1", "Status": "404"})
    await service_nc.publish("test.skip", b"no headers at all")
    msg = await skipping.next_msg(timeout=5)
    assert (msg.data, msg.headers) == (b"no headers at all", None)
    # Of an atomic batch's messages, one fact is kept: which are not its commit.
    part = {"Nats-Batch-Id": "b1", "Nats-Batch-Sequence": "1", "ce-id": "1"}
    await service_nc.publish("test.skip", b"part", headers=part)
    await service_nc.publish("test.skip", b"commit", headers={**part, "Nats-Batch-Commit": "1"})
    assert (await skipping.next_msg(timeout=5)).headers == {"Nats-Batch-Id": "-"}
    assert (await skipping.next_msg(timeout=5)).headers is None

    js = service_nc.jetstream()
    await js.add_stream(name="SKIP", subjects=["skip.>"])
    for i in range(3):
        await js.publish(f"skip.{i}", str(i).encode(), headers={"ce-id": str(i)})
    worker = PullWorker(
        js,
        service="test",
        stream="SKIP",
        config=ConsumerConfig(
            durable_name="skip", filter_subject="skip.>", ack_policy=AckPolicy.EXPLICIT
        ),
        headers=False,
    )
    started = time.monotonic()
    msgs = await worker.fetch(10, 5.0)
    assert time.monotonic() - started < 2.0, "the 404 that ends the request was seen"
    assert [(m.data, m.headers) for m in msgs] == [(b"0", None), (b"1", None), (b"2", None)]
    assert [stream_seq(m) for m in msgs] == [1, 2, 3]


SENT_HEADERS: list[dict[str, Any] | None] = [
    None,
    {},
    {"ce-id": "1", "Nats-Msg-Id": "g:1", "ce-type": "kiln.file.written"},
    {"Nats-Expected-Last-Subject-Sequence": "0", "Nats-Batch-Commit": "1"},
    {" padded ": "  value  "},
    {"Empty": ""},
    {"": "no name"},
    {"Tab": "a\tb"},
    {"Lines": "a\r\nb\nc"},
    {"Utf8": "café"},
    {"Bad(Name)": "x"},
    {"Colon:Name": "x"},
    {"Number": 42},
    {"ce-id": "a\r\nInjected: yes"},
    {"A: x\r\nB": "y"},
    {"A: x": "y"},
]


def _capturing(client: Client, *, counted: bool = False) -> list[bytes]:
    """The commands `client` sends from now on, kept instead of written; `counted`: each
    is added to the client's pending bytes, as nats-py's own `_send_command` does."""
    commands: list[bytes] = []

    async def send_command(cmd: bytes, priority: bool = False) -> None:
        commands.append(cmd)
        if counted:
            client._pending_data_size += len(cmd)

    client._send_command = send_command  # type: ignore[method-assign]
    return commands


async def _sent(client: Client, subject: str, headers: dict[str, Any] | None) -> bytes | str:
    commands = _capturing(client)
    try:
        await client._send_publish(subject, "_INBOX.r", b"{}", 2, headers)
    except Exception as exc:
        return type(exc).__name__
    return b"".join(commands)


@pytest.mark.parametrize("headers", SENT_HEADERS)
async def test_a_published_header_block_is_the_one_nats_py_sends(
    headers: dict[str, Any] | None,
) -> None:
    for subject in ("events.x", ""):
        assert await _sent(KilnClient(), subject, headers) == await _sent(
            Client(), subject, headers
        )


async def test_random_published_headers_are_the_ones_nats_py_sends() -> None:
    rng = random.Random(19)
    alphabet = "ab-:( \t\r\n\x7fé9Z"
    for _ in range(3000):
        headers = {
            "".join(rng.choices(alphabet, k=rng.randint(0, 6))): "".join(
                rng.choices(alphabet, k=rng.randint(0, 8))
            )
            for _ in range(rng.randint(1, 4))
        }
        assert await _sent(KilnClient(), "s", headers) == await _sent(Client(), "s", headers)


async def _each_sent(
    client: Client,
    subject: str,
    messages: list[tuple[bytes, dict[str, Any]]],
    at_once: bool,
    status: int = Client.CONNECTED,
) -> bytes | str:
    commands = _capturing(client, counted=True)
    client._status = status  # CONNECTED by default: nats-py buffers nothing otherwise
    client._max_payload = 1024
    client._max_pending_size = 1000
    try:
        if at_once:
            assert isinstance(client, KilnClient)
            await client.publish_each(subject, messages)
        else:
            for data, headers in messages:
                await client.publish(subject, data, headers=headers)
    except Exception as exc:
        return type(exc).__name__ + (" after sending" if commands else "")
    return b"".join(commands)


PLAIN_HEADERS = [{"ce-id": "1", "Nats-Msg-Id": "g:1"}, {"Nats-Batch-Commit": "1"}]


async def test_messages_published_at_once_are_the_bytes_nats_py_sends_one_by_one() -> None:
    messages = [(f"{{{i}}}".encode(), h) for i, h in enumerate(PLAIN_HEADERS * 3)]
    for subject in ("events.x", "kiln.events.p.g"):
        mine = await _each_sent(KilnClient(), subject, messages, at_once=True)
        assert isinstance(mine, bytes) and mine.count(b"HPUB ") == len(messages)
        assert mine == await _each_sent(Client(), subject, messages, at_once=False)


@pytest.mark.parametrize("odd", [h for h in SENT_HEADERS if h is not None])
async def test_a_batch_with_any_other_header_is_what_nats_py_sends_one_by_one(
    odd: dict[str, Any],
) -> None:
    messages = [(b"{1}", PLAIN_HEADERS[0]), (b"{2}", odd), (b"{3}", PLAIN_HEADERS[1])]
    assert await _each_sent(KilnClient(), "e.x", messages, at_once=True) == await _each_sent(
        Client(), "e.x", messages, at_once=False
    )


@pytest.mark.parametrize(
    ("subject", "payload", "error", "one_by_one"),
    [
        ("", b"{}", "BadSubjectError", "BadSubjectError"),
        ("a b", b"{}", "BadSubjectError", "BadSubjectError"),
        ("x", b"x" * 2000, "MaxPayloadError", "MaxPayloadError after sending"),
    ],
)
async def test_a_batch_nats_py_would_refuse_is_refused_before_anything_is_sent(
    subject: str, payload: bytes, error: str, one_by_one: str
) -> None:
    messages = [(b"{}", PLAIN_HEADERS[0]), (payload, PLAIN_HEADERS[1])]
    assert await _each_sent(KilnClient(), subject, messages, at_once=True) == error
    assert await _each_sent(Client(), subject, messages, at_once=False) == one_by_one


async def test_a_batch_past_the_reconnect_buffer_is_refused_before_anything_is_sent() -> None:
    # While reconnecting nats-py buffers up to its limit, counting each whole command
    # (headers too): the third message would pass it.
    messages = [(b"x" * 300, {"ce-source": "s" * 200})] * 3
    at_once = await _each_sent(KilnClient(), "e.x", messages, True, Client.RECONNECTING)
    one_by_one = await _each_sent(Client(), "e.x", messages, False, Client.RECONNECTING)
    assert (at_once, one_by_one) == (
        "OutboundBufferLimitError",
        "OutboundBufferLimitError after sending",
    )
    assert await _each_sent(KilnClient(), "e.x", messages[:1], True, Client.RECONNECTING) == (
        await _each_sent(Client(), "e.x", messages[:1], False, Client.RECONNECTING)
    )


def test_the_publish_internals_it_repeats_are_there() -> None:
    # `KilnClient._send_publish` repeats the tail of nats-py's; an upgrade that changes
    # what that tail does must fail here, not silently in production.
    names = Client._send_publish.__code__.co_names
    assert {"stats", "_send_command", "_flush_queue", "_flush_pending", "hpub_cmd"} <= set(names)
    assert Client._send_publish.__code__.co_varnames[:6] == (
        "self",
        "subject",
        "reply",
        "payload",
        "payload_size",
        "headers",
    )


async def _acks_sent(client: Client, msgs: list[Msg], each: bool) -> bytes:
    commands = _capturing(client)
    client._status = Client.CONNECTED  # as if connected: nats-py buffers nothing otherwise
    for msg in msgs:
        msg._client = client
    if each:
        assert isinstance(client, KilnClient)
        await client.ack_each(msgs)
    else:
        for msg in msgs:
            await msg.ack()
    return b"".join(commands)


async def test_acks_of_a_batch_are_the_bytes_nats_py_sends_one_by_one() -> None:
    def delivered() -> list[Msg]:
        return [
            Msg(Client(), subject="e.x", reply=f"$JS.ACK.EVENTS.storage.1.{i}.{i}.0.0")
            for i in range(1, 4)
        ]

    mine, theirs = delivered(), delivered()
    assert await _acks_sent(KilnClient(), mine, each=True) == await _acks_sent(
        Client(), theirs, each=False
    )
    assert all(m._ackd for m in mine)
    with pytest.raises(MsgAlreadyAckdError):
        await KilnClient().ack_each(mine[:1])


async def test_a_batch_acked_at_once_is_acked_on_the_broker(
    service_nc: KilnClient,
) -> None:
    js = service_nc.jetstream()
    await js.add_stream(name="ACKS", subjects=["acks.>"])
    for i in range(5):
        await js.publish(f"acks.{i}", b"x")
    worker = PullWorker(
        js,
        service="test",
        stream="ACKS",
        config=ConsumerConfig(
            durable_name="acks", filter_subject="acks.>", ack_policy=AckPolicy.EXPLICIT
        ),
    )
    msgs = await worker.fetch(10, 5.0)
    # Acks around a retry: they go before and after it, in order.
    await worker._settle_batch(msgs, [Ack(), Ack(), Retry("later", 30.0), Ack(), Ack()])

    async def settled() -> bool:
        info = await js.consumer_info("ACKS", "acks")
        return (info.num_ack_pending, info.ack_floor.stream_seq) == (1, 2)

    await eventually(settled, 10, what="four acks and one retry on the broker")


def test_the_ack_internals_it_repeats_are_there() -> None:
    # `KilnClient.ack_each` does what `Msg.ack` does, for many; an upgrade that changes
    # what an ack is must fail here.
    assert {"_check_reply", "publish", "reply", "_ackd"} <= set(Msg.ack.__code__.co_names)


def test_a_header_block_is_vouched_for_exactly_when_it_has_the_plain_form() -> None:
    # `_plain_block` checks the values without matching `_PLAIN_OUT` over the block (a
    # tenth of an orchestrator's CPU in B6); it must agree with that form everywhere.
    rng = random.Random(23)
    alphabet = "aZ9-_ :\t\r\n\x7f\x00é~!"
    for _ in range(20_000):
        headers = {
            rng.choice(["ce-id", "Nats-Msg-Id", "x"]) + str(i): "".join(
                rng.choices(alphabet, k=rng.randint(0, 5))
            )
            for i in range(rng.randint(0, 3))
        }
        joined = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        expected = joined if _PLAIN_OUT.fullmatch(joined) else None
        assert _plain_block(headers) == expected, headers
