"""The bench's SSE client counts and order-checks every event the same way whether it takes
a read's whole run of plain blocks at once or parses block by block."""

from __future__ import annotations

import random

import pytest

from bench.loadgen.sse import Client, Seen


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


def _results(client: Client) -> tuple[int, int, int, int, bool]:
    return (client.events, client.last_id, client.disorder, client.keepalives, client.terminal)


def _reads(body: bytes, pieces: int, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(body)), pieces - 1))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


def _chunked(body: bytes, rng: random.Random) -> bytes:
    """`body` in HTTP/1.1 chunked framing, in chunks of random sizes, with its last chunk."""
    out, at = [], 0
    while at < len(body):
        size = rng.randint(1, 120)
        out.append(
            b"%x\r\n%s\r\n"
            % (size if at + size <= len(body) else len(body) - at, body[at : at + size])
        )
        at += size
    return b"".join(out) + b"0\r\n\r\n"


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("seed", range(12))
async def test_clients_of_one_path_find_what_each_finds_alone(seed: int, chunked: bool) -> None:
    # As in B4's herd: many clients of one stream, their reads interleaved, split anywhere.
    # Most get the same bytes; some differ (a keepalive, an event out of order or missing,
    # CRLF line ends, a stream cut short) and must be checked as if read alone.
    rng = random.Random(seed)
    seqs = list(range(1, 301))
    swapped = [*seqs[:150], seqs[151], seqs[150], *seqs[152:]]
    bodies = [stream(seqs, keepalive=False)] * 6 + [
        stream(seqs, keepalive=True),
        stream(swapped, keepalive=False),
        stream(seqs[:200] + seqs[201:], keepalive=False),
        stream(seqs, keepalive=False).replace(b"\n", b"\r\n"),
        stream(seqs, keepalive=False, terminal=False),
    ]
    rng.shuffle(bodies)
    seen = Seen()
    shared = [
        Client(b"", ready_on_event=False, decode=False, latencies=[], seen=seen) for _ in bodies
    ]
    # Chunked, a read may hold framing only (nothing of the stream).
    sent = [_chunked(body, rng) if chunked else body for body in bodies]
    queues = [_reads(body, rng.randint(1, 120 if chunked else 12), rng) for body in sent]
    for client in shared:
        client.chunked = chunked
    while any(queues):
        index = rng.choice([i for i, q in enumerate(queues) if q])
        shared[index].data_received(queues[index].pop(0))

    for index, client in enumerate(shared):
        # The server closes each stream after its last read, or the client stops (B3).
        if index % 2:
            client.connection_lost(None)
        else:
            client.close()
    for client, body in zip(shared, bodies, strict=True):
        alone = read(body, decode=False, pieces=3, seed=seed)
        assert _results(client) == _results(alone)
    same = [
        c for c, b in zip(shared, bodies, strict=True) if b == bodies[0] and b.endswith(b"\n\n")
    ]
    assert sum(c.replayed > 0 for c in shared) >= 1
    assert all(
        c.terminal == (b"generation.completed" in b) for c, b in zip(shared, bodies, strict=True)
    )
    assert same  # the identical streams were all checked, whichever read first
