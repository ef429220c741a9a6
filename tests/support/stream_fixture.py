"""Event logs written by a past release, kept as committed fixtures, and loaded back into a
fresh nats-server: what proves that a newer Kiln still reads the logs an older one wrote.

A fixture is two files in `tests/fixtures/streams/`:

- `<name>.jsonl.gz`: every message of the `KILN_EVENTS` stream in stream order, one JSON
  object a line (`ReleaseMessage`: stream sequence, subject, headers, data as UTF-8 text);
- `<name>.expected.json`: what a reader must see (`ReleaseExpectations`), as that release's
  gateway and storage answered when the fixture was made: per generation its version,
  status, files (path → sha256) and diff against its parent.

`tests/fixtures/make_release_log.py` makes them; `load_release_log` replays one.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from contracts import streams
from services.common.broker import ensure_streams

STREAMS_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "streams"
RELEASE_0_1_0 = "kiln-0.1.0-events"
"""The log written by Kiln 0.1.0: a project created, then iterated twice."""

# Headers a replay must not send again: they were conditions on the original append (the
# subject's last sequence, an atomic batch's bookkeeping), true then and refused now.
# `Nats-Msg-Id` stays (every id is unique in a log), and so does every CloudEvents header.
_REFUSED_ON_REPLAY = ("nats-expected-", "nats-batch-")


class ReleaseMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message of the stream as the release stored it."""

    stream_seq: int
    subject: str
    headers: dict[str, str] = {}
    data: str
    """The payload as UTF-8 text (Kiln's events are JSON)."""


class ExpectedDiff(msgspec.Struct, frozen=True, kw_only=True):
    """A version against its parent, as GET /generations/{id}/diff summarised it."""

    added: int
    modified: int
    deleted: int
    unchanged: int
    files: dict[str, str]
    """path → added / modified / deleted, for every file that changed."""


class ExpectedGeneration(msgspec.Struct, frozen=True, kw_only=True):
    """One generation of the fixture, as the release's reader saw it."""

    generation_id: str
    project_id: str
    project_name: str
    owner: str
    version: int
    kind: str
    prompt: str
    parent_generation_id: str | None
    status: str
    verdict: str | None
    """The verification's verdict (passed, failed, …), None if none was recorded."""
    file_count: int
    total_bytes: int
    events: int
    """How many events its log holds (seq 1 … events)."""
    files: dict[str, str]
    """path → sha256 of every file of the version."""
    diff: ExpectedDiff


class ReleaseExpectations(msgspec.Struct, frozen=True, kw_only=True):
    """The sidecar of a fixture: how it was made, and what reading it must give."""

    release: str
    nats_server: str
    stream: str
    messages: int
    made_by: str
    generations: list[ExpectedGeneration]

    def generation(self, generation_id: str) -> ExpectedGeneration:
        """One generation by id."""
        return next(g for g in self.generations if g.generation_id == generation_id)


def log_path(name: str) -> Path:
    """The messages file of the fixture `name`."""
    return STREAMS_DIR / f"{name}.jsonl.gz"


def expectations_path(name: str) -> Path:
    """The sidecar of the fixture `name`."""
    return STREAMS_DIR / f"{name}.expected.json"


def write_messages(path: Path, messages: list[ReleaseMessage]) -> None:
    """Write messages as gzipped JSON lines (no timestamp in the gzip header, so the same
    messages give the same bytes)."""
    encoder = msgspec.json.Encoder(order="sorted")
    body = b"".join(encoder.encode(m) + b"\n" for m in messages)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(body, compresslevel=9, mtime=0))


def read_messages(path: Path) -> list[ReleaseMessage]:
    """The messages of a fixture, in stream order."""
    decoder = msgspec.json.Decoder(ReleaseMessage)
    lines = gzip.decompress(path.read_bytes()).splitlines()
    return [decoder.decode(line) for line in lines if line]


def write_expectations(path: Path, expected: ReleaseExpectations) -> None:
    """Write a fixture's sidecar, indented for review."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(expected), indent=2) + b"\n")


def read_expectations(path: Path) -> ReleaseExpectations:
    """A fixture's sidecar."""
    return msgspec.json.decode(path.read_bytes(), type=ReleaseExpectations)


async def dump_stream(
    js: JetStreamContext, stream: str = streams.EVENTS_STREAM
) -> list[ReleaseMessage]:
    """Every message of a stream, in stream order, exactly as stored."""
    state = (await js.stream_info(stream)).state
    messages: list[ReleaseMessage] = []
    for seq in range(state.first_seq, state.last_seq + 1):
        try:
            raw = await js.get_msg(stream, seq)
        except NotFoundError:
            continue
        messages.append(
            ReleaseMessage(
                stream_seq=seq,
                subject=str(raw.subject),
                headers=dict(raw.headers or {}),
                data=(raw.data or b"").decode("utf-8"),
            )
        )
    return messages


def replay_headers(headers: dict[str, str]) -> dict[str, str]:
    """The headers to publish a stored message with again: all but the append conditions."""
    return {k: v for k, v in headers.items() if not k.lower().startswith(_REFUSED_ON_REPLAY)}


async def load_release_log(
    js: JetStreamContext, messages: list[ReleaseMessage], *, create_streams: bool = True
) -> int:
    """Create Kiln's streams as today's code does (unless `create_streams` is False: the
    caller made them as an older release did) and publish every message again, in order,
    with its subject and headers; the last stream sequence.

    The stream must be empty: each message then lands at the sequence it had, so an SSE
    `id:` or a stored position means the same as in the release that wrote it."""
    if create_streams:
        await ensure_streams(js)
    last = 0
    for message in messages:
        ack = await js.publish(
            message.subject,
            message.data.encode("utf-8"),
            headers=replay_headers(message.headers) or None,
            stream=streams.EVENTS_STREAM,
        )
        if ack.duplicate or ack.seq != message.stream_seq:
            raise AssertionError(
                f"message {message.stream_seq} of the fixture landed at {ack.seq}"
                f"{' as a duplicate' if ack.duplicate else ''}: is the stream empty?"
            )
        last = ack.seq
    return last
