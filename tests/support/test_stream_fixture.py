"""The release-log fixture support: the file format round-trips byte for byte, and a load
puts every message back at its own sequence with its own headers (a real nats-server)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from nats.aio.client import Client

from contracts.streams import EVENTS_STREAM
from tests.support.stream_fixture import (
    RELEASE_0_1_0,
    load_release_log,
    log_path,
    read_messages,
    replay_headers,
    write_messages,
)


def test_the_file_format_round_trips_and_is_the_same_bytes_each_time(tmp_path: Path) -> None:
    messages = read_messages(log_path(RELEASE_0_1_0))
    first, second = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_messages(first, messages)
    write_messages(second, messages)
    assert read_messages(first) == messages
    assert first.read_bytes() == second.read_bytes()
    assert gzip.decompress(first.read_bytes()) == gzip.decompress(
        log_path(RELEASE_0_1_0).read_bytes()
    )


def test_a_replay_drops_the_append_conditions_and_keeps_the_rest() -> None:
    headers = {
        "Nats-Msg-Id": "g:3",
        "Nats-Expected-Last-Subject-Sequence": "7",
        "Nats-Batch-Id": "b",
        "Nats-Batch-Sequence": "2",
        "Nats-Batch-Commit": "1",
        "ce-id": "e",
        "ce-type": "kiln.file.written",
        "content-type": "application/json",
    }
    assert replay_headers(headers) == {
        "Nats-Msg-Id": "g:3",
        "ce-id": "e",
        "ce-type": "kiln.file.written",
        "content-type": "application/json",
    }


async def test_a_load_puts_each_message_at_its_sequence_with_its_headers(nc: Client) -> None:
    messages = read_messages(log_path(RELEASE_0_1_0))
    js = nc.jetstream()
    assert await load_release_log(js, messages) == len(messages)
    for message in (messages[0], messages[len(messages) // 2], messages[-1]):
        stored = await js.get_msg(EVENTS_STREAM, message.stream_seq)
        assert stored.subject == message.subject
        assert (stored.data or b"").decode() == message.data
        assert replay_headers(dict(stored.headers or {})) == replay_headers(message.headers)


async def test_a_second_load_into_the_same_stream_is_refused(nc: Client) -> None:
    messages = read_messages(log_path(RELEASE_0_1_0))[:3]
    await load_release_log(nc.jetstream(), messages)
    with pytest.raises(AssertionError, match="is the stream empty"):
        await load_release_log(nc.jetstream(), messages)
