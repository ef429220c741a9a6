"""The orchestrator suite's fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.js import JetStreamContext

from services.common.broker import ensure_streams
from services.common.embedded_nats import EmbeddedNats


@pytest.fixture
async def js(nats_server: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    """A JetStream context on the test's nats-server, with Kiln's streams and buckets."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js)
    yield js
    await nc.close()
