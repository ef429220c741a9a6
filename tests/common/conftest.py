"""Fixtures of the common plumbing's tests: a broker with one plain stream, for the pull
and consumer loops that do not care which stream they read."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from services.common.embedded_nats import EmbeddedNats

PLAIN_STREAM = "TESTPLAIN"
PLAIN_SUBJECT = "test.plain"


@pytest.fixture
async def plain_nc(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    """A client of this test's nats-server with the stream `PLAIN_STREAM` on
    `PLAIN_SUBJECT` (and none of Kiln's)."""
    client = await nats.connect(nats_server.url)
    await client.jetstream().add_stream(StreamConfig(name=PLAIN_STREAM, subjects=[PLAIN_SUBJECT]))
    yield client
    await client.close()


async def publish_numbers(nc: Client, numbers: Iterable[int]) -> None:
    """Publish each number, as its decimal text, on `PLAIN_SUBJECT`."""
    js = nc.jetstream()
    for i in numbers:
        await js.publish(PLAIN_SUBJECT, str(i).encode())


def numbers_of(msgs: list[Msg]) -> list[int]:
    """The numbers `publish_numbers` sent, as the messages carry them."""
    return [int(msg.data) for msg in msgs]
