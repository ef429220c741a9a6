"""An in-memory JetStream for route tests: publish (with `Nats-Msg-Id` de-duplication and
the `Nats-Expected-Last-Subject-Sequence` guard), last/direct gets, ordered reads of a
subject, and key-value buckets. It answers as nats-py does, so the gateway's real views
and commands run on it unchanged; what needs a real server is tested against one."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import nats.errors
from nats.js.api import PubAck, RawStreamMsg
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from contracts import streams

WRONG_LAST_SEQUENCE = 10071


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, `>` the rest."""
    want, got = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(got) > index
        if index >= len(got) or (token != "*" and token != got[index]):
            return False
    return len(want) == len(got)


@dataclass
class Stored:
    """One message as the fake stream holds it."""

    stream: str
    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]


@dataclass
class _Entry:
    key: str
    value: bytes
    revision: int


class FakeKeyValue:
    """A key-value bucket with nats-py's get/create/update/put/delete."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._revision = 0

    async def get(self, key: str) -> _Entry:
        if key not in self._entries:
            raise KeyNotFoundError
        return self._entries[key]

    async def put(self, key: str, value: bytes) -> int:
        self._revision += 1
        self._entries[key] = _Entry(key, value, self._revision)
        return self._revision

    async def create(self, key: str, value: bytes) -> int:
        if key in self._entries:
            raise KeyWrongLastSequenceError
        return await self.put(key, value)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        current = self._entries.get(key)
        if current is None or (last is not None and current.revision != last):
            raise KeyWrongLastSequenceError
        return await self.put(key, value)

    async def delete(self, key: str, last: int | None = None) -> bool:
        self._entries.pop(key, None)
        return True


class _OrderedRead:
    """What `js.subscribe(..., ordered_consumer=True)` returns, for `next_msg` reads."""

    def __init__(self, messages: list[Stored]) -> None:
        self._messages = list(messages)
        self._sub = SimpleNamespace()  # no `_jsi`: nothing to reposition

    async def next_msg(self, timeout: float = 1.0) -> Any:
        if not self._messages:
            await asyncio.sleep(0)
            raise nats.errors.TimeoutError
        stored = self._messages.pop(0)
        return SimpleNamespace(
            data=stored.data,
            subject=stored.subject,
            headers=stored.headers,
            # The ack subject a real ordered consumer's message has: the stream seq 6th.
            reply=f"$JS.ACK.{stored.stream}.fake.1.{stored.seq}.1.0.0",
            metadata=SimpleNamespace(sequence=SimpleNamespace(stream=stored.seq)),
        )

    async def unsubscribe(self) -> None:
        self._messages.clear()


@dataclass
class FakeJetStream:
    """The broker boundary of a gateway, in memory (one sequence per stream)."""

    messages: list[Stored] = field(default_factory=list)
    buckets: dict[str, FakeKeyValue] = field(default_factory=dict)
    _ids: dict[tuple[str, str], int] = field(default_factory=dict)

    @staticmethod
    def stream_of(subject: str) -> str:
        """The stream that stores `subject`."""
        if subject.startswith("kiln.events."):
            return streams.EVENTS_STREAM
        return streams.COMMANDS_STREAM if subject.startswith("kiln.cmds.") else "other"

    def on(self, stream: str, subject: str = ">") -> list[Stored]:
        """The messages of `stream` whose subject matches `subject`, in order."""
        return [
            m for m in self.messages if m.stream == stream and subject_matches(subject, m.subject)
        ]

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> PubAck:
        """Store a message, or answer as JetStream does to a duplicate or a stale guard."""
        headers = dict(headers or {})
        name = self.stream_of(subject)
        msg_id = headers.get("Nats-Msg-Id")
        if msg_id and (name, msg_id) in self._ids:
            return PubAck(stream=name, seq=self._ids[(name, msg_id)], duplicate=True)
        expected = headers.get("Nats-Expected-Last-Subject-Sequence")
        if expected is not None:
            on_subject = self.on(name, subject)
            last = on_subject[-1].seq if on_subject else 0
            if last != int(expected):
                raise APIError(code=400, err_code=WRONG_LAST_SEQUENCE, description="wrong last")
        seq = len(self.on(name)) + 1
        self.messages.append(Stored(name, subject, seq, payload, headers))
        if msg_id:
            self._ids[(name, msg_id)] = seq
        return PubAck(stream=name, seq=seq)

    async def get_last_msg(self, stream_name: str, subject: str) -> RawStreamMsg:
        """The last message of `stream_name` on `subject` (wildcards allowed)."""
        found = self.on(stream_name, subject)
        if not found:
            raise NotFoundError
        return self._raw(found[-1])

    async def get_msg(self, stream_name: str, seq: int) -> RawStreamMsg:
        """The message at `seq` of `stream_name`."""
        for stored in self.on(stream_name):
            if stored.seq == seq:
                return self._raw(stored)
        raise NotFoundError

    async def subscribe(self, subject: str, stream: str | None = None, **options: Any) -> Any:
        """An ordered read of `subject` from `config.opt_start_seq` (messages so far)."""
        config = options.get("config")
        start = getattr(config, "opt_start_seq", None) or 1
        name = stream or self.stream_of(subject)
        return _OrderedRead([m for m in self.on(name, subject) if m.seq >= start])

    async def key_value(self, bucket: str) -> FakeKeyValue:
        """The bucket called `bucket` (made on first use, as `ensure_streams` would)."""
        return self.buckets.setdefault(bucket, FakeKeyValue())

    @staticmethod
    def _raw(stored: Stored) -> RawStreamMsg:
        return RawStreamMsg(
            subject=stored.subject,
            seq=stored.seq,
            data=stored.data,
            headers=stored.headers,
            stream=stored.stream,
        )
