"""The bench's SSE client counts and order-checks every event the same way whether it takes
a read's whole run of plain blocks at once or parses block by block."""

from __future__ import annotations

import random

import pytest

from bench.loadgen.sse import Client


def stream(seqs: list[int], terminal: bool = True, keepalive: bool = True) -> bytes:
    blocks = [
        b'id: %d\nevent: file.written\ndata: {"type":"file.written","seq":%d}\n\n' % (s, s)
        for s in seqs
    ]
    if keepalive:
        blocks.insert(len(blocks) // 2, b": keepalive\n\n")
    if terminal:
        last = seqs[-1] + 1
        blocks.append(
            b'id: %d\nevent: generation.completed\ndata: {"type":"generation.completed",'
            b'"seq":%d}\n\n' % (last, last)
        )
    return b"".join(blocks)


def read(body: bytes, decode: bool, pieces: int, seed: int) -> Client:
    client = Client(b"", ready_on_event=True, decode=decode, latencies=[])
    client.chunked = False
    cuts = sorted(random.Random(seed).sample(range(1, len(body)), pieces - 1))
    for start, stop in zip([0, *cuts], [*cuts, len(body)], strict=True):
        client.data_received(body[start:stop])
    return client


@pytest.mark.parametrize("seed", range(20))
async def test_plain_runs_and_block_parsing_agree_on_any_split(seed: int) -> None:
    seqs = sorted(random.Random(seed).sample(range(1, 10_000), 300))
    if seed % 2:
        seqs[100], seqs[101] = seqs[101], seqs[100]  # one event out of order
    body = stream(seqs)
    by_block = read(body, decode=True, pieces=1 + seed, seed=seed)
    by_run = read(body, decode=False, pieces=1 + seed, seed=seed)

    for client in (by_block, by_run):
        assert (client.events, client.terminal) == (301, True)
        assert client.last_id == seqs[-1] + 1
        assert client.disorder == seed % 2
        assert client.keepalives == 1  # the comment's run went block by block
    assert by_block.plain_runs == 0


@pytest.mark.parametrize("seed", range(10))
async def test_reads_of_plain_blocks_are_taken_as_runs(seed: int) -> None:
    seqs = list(range(1, 601))
    if seed % 2:
        seqs[300], seqs[301] = seqs[301], seqs[300]
    client = read(stream(seqs, keepalive=False), decode=False, pieces=10, seed=seed)

    assert (client.events, client.terminal, client.disorder) == (601, True, seed % 2)
    assert client.plain_runs >= 8  # every read but those ending before a block's end


async def test_a_stream_cut_before_its_end_counts_what_arrived_and_is_not_complete() -> None:
    client = read(stream(list(range(1, 51)), terminal=False), decode=False, pieces=3, seed=1)
    assert (client.events, client.last_id, client.terminal) == (50, 50, False)
