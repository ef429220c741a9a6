"""Group commit: the atomic batches several writers append at the same moment, committed to
the events stream as one atomic batch.

nats-server stages every atomic batch before its commit (on a one-replica file stream, in
a store of its own on disk, created and deleted per batch) and commits one batch of a
stream at a time. So fifty generations that each append a phase at once cost the server
fifty stagings and fifty commits in a row, and while they follow one another a consumer
of the stream gets few messages (storage's got 40 of ~4,000 in 0.2 s in B6 50 x 20) and
receives the rest only when the last commit is done. Committed as a few groups instead,
the same events cost the server less than half as much (a measurement with 50 writers of
133 events each, on the server Kiln runs: 0.15 s and 0.10 CPU-s as 50 batches, 0.07 s and
0.04 CPU-s as 7; bench/RESULTS.md).

A group is one atomic batch whose messages are each member's, in the order the members
joined, each member's first message carrying its own
`Nats-Expected-Last-Subject-Sequence` (nats-server checks each message's guard against
the stream as the batch before it leaves it). Every guarantee of a member's batch holds
for the group, which is all or none as a whole: a member's events go in together, after
its subject's expected last message, each with its own `Nats-Msg-Id`. The stream stores
a batch contiguously, so each member's stream sequences follow from the group's ack.

A writer never waits for others to come: a member that arrives while fewer than
`IN_FLIGHT` groups are being committed is sent at once, with whatever joined in the same
turn of the event loop; members that arrive meanwhile form the next group. When a group
of several members is refused, every member is told (`GroupRefused`) and commits its
batch alone: the reason may be one member's (a stale writer, a retried batch already
stored) and only that member can tell, by its own subject.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.errors import APIError

from services.common.natsclient import KilnClient

IN_FLIGHT = 2
"""Groups a stream's writers have waiting for the server's ack at once: one committing,
one staged behind it, so the server never waits for the next group's messages."""
ACK_TIMEOUT_S = 10.0
ATOMIC_TOO_LARGE = 10199
"""nats-server's answer to a batch of more messages than its max_batch_size."""

Message = tuple[bytes, dict[str, str]]
"""One message of a batch: its data and its headers (the batch's own headers excepted)."""


class GroupRefused(Exception):
    """The stream refused a group of several writers' batches as a whole: commit alone."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"a group commit was refused: {error!r}")
        self.error = error


class BatchMiscounted(Exception):
    """The server acknowledged a batch with another number of messages than were sent."""

    def __init__(self, sent: int, acknowledged: int) -> None:
        super().__init__(f"a batch of {sent} messages was acknowledged as {acknowledged}")
        self.sent = sent
        self.acknowledged = acknowledged


@dataclass(eq=False)
class _Member:
    subject: str
    messages: list[Message]
    result: asyncio.Future[int]


@dataclass(eq=False)
class GroupCommits:
    """The group commits of one JetStream context's writers (`commit_groups` finds it).

    A group takes members while it has at most `max_messages` messages and
    `max_bytes` bytes of data (a member alone may have more: the server then refuses it
    with the limit, which its writer learns).
    """

    js: weakref.ref[JetStreamContext]
    """Weak: the store is cached under its context (`commit_groups`), which it must not
    keep alive."""
    max_messages: int
    max_bytes: int
    in_flight: int = IN_FLIGHT
    _waiting: list[_Member] = field(default_factory=list)
    _sending: set[asyncio.Task[None]] = field(default_factory=set)
    _scheduled: bool = False
    _loop: asyncio.AbstractEventLoop | None = None
    groups: int = 0
    """How many groups were sent (a measurement's figure)."""
    members: int = 0
    """How many writers' batches they held."""

    async def commit(self, subject: str, messages: list[Message]) -> int:
        """Commit `messages` (a writer's whole batch, on `subject`) atomically, in a group
        with other writers' batches of the moment; the stream sequence of its last message.

        Raises what the server answered when the group held this batch only, so the writer
        acts on it as on its own batch's answer; `GroupRefused` when a group of several
        was refused; `BatchMiscounted` when the ack counts other than was sent.
        """
        if not messages:
            raise ValueError("a batch has at least one message")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A context is used on one loop; should another take it, nothing of the last
            # one's (members, groups in flight, a scheduled call) can go on there.
            self._loop, self._waiting, self._sending, self._scheduled = loop, [], set(), False
        result: asyncio.Future[int] = loop.create_future()
        self._waiting.append(_Member(subject, messages, result))
        self._schedule()
        return await result

    def _schedule(self) -> None:
        """Form groups on the next turn of the event loop, so that the members arriving in
        this one go together."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._form_groups)

    def _form_groups(self) -> None:
        self._scheduled = False
        self._waiting = [m for m in self._waiting if not m.result.done()]  # cancelled writers
        while self._waiting and len(self._sending) < self.in_flight:
            task = asyncio.get_running_loop().create_task(self._send(self._take_group()))
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _take_group(self) -> list[_Member]:
        group: list[_Member] = []
        count = size = 0
        while self._waiting:
            member = self._waiting[0]
            more = len(member.messages)
            more_bytes = sum(len(data) for data, _ in member.messages)
            if group and (count + more > self.max_messages or size + more_bytes > self.max_bytes):
                break
            group.append(self._waiting.pop(0))
            count += more
            size += more_bytes
        return group

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if self._waiting:
            self._schedule()

    async def _send(self, group: list[_Member]) -> None:
        self.groups += 1
        self.members += len(group)
        try:
            js = self.js()
            if js is None:
                raise asyncio.CancelledError  # the context is gone: so are its writers
            last = await publish_atomic(js, [(m.subject, m.messages) for m in group])
        except asyncio.CancelledError:
            for member in group:
                member.result.cancel()
            raise
        except Exception as exc:
            if isinstance(exc, APIError) and exc.err_code == ATOMIC_TOO_LARGE:
                # The server's limit is lower than this store's: groups keep under it.
                limit = limit_in(exc.description)
                if limit is not None:
                    self.max_messages = min(self.max_messages, max(limit, 1))
            error = exc if len(group) == 1 else GroupRefused(exc)
            for member in group:
                if not member.result.done():
                    member.result.set_exception(error)
            return
        # Stored contiguously, in the group's order: each member's last sequence follows.
        after = 0
        for member in reversed(group):
            if not member.result.done():
                member.result.set_result(last - after)
            after += len(member.messages)


async def publish_atomic(js: JetStreamContext, batches: list[tuple[str, list[Message]]]) -> int:
    """Publish `batches` (each a subject and its messages) as one atomic batch under a
    fresh id; the stream sequence of its last message. Only the commit asks for an ack:
    the server answers it with the whole batch's outcome (a lost message makes it refuse
    the batch as incomplete). The messages' headers get the batch's own added."""
    nc = js._nc  # nats-py keeps a JetStream context's connection here
    batch_id = uuid.uuid4().hex
    number = 0
    for _, messages in batches:
        for _, headers in messages:
            number += 1
            headers["Nats-Batch-Id"] = batch_id
            headers["Nats-Batch-Sequence"] = str(number)
    *leading_batches, (last_subject, last_messages) = batches
    *last_leading, (commit_data, commit_headers) = last_messages
    for subject, messages in [*leading_batches, (last_subject, last_leading)]:
        if not messages:
            continue
        if isinstance(nc, KilnClient):
            await nc.publish_each(subject, messages)
        else:
            for data, headers in messages:
                await nc.publish(subject, data, headers=headers)
    commit_headers["Nats-Batch-Commit"] = "1"
    ack = await js.publish(last_subject, commit_data, headers=commit_headers, timeout=ACK_TIMEOUT_S)
    if ack.batch_size is not None and ack.batch_size != number:
        raise BatchMiscounted(number, ack.batch_size)
    return int(ack.seq)


def limit_in(description: str | None) -> int | None:
    """The number in "atomic publish batch is too large: 1000"."""
    tail = (description or "").rsplit(":", 1)[-1].strip()
    return int(tail) if tail.isdigit() else None


_groups: weakref.WeakKeyDictionary[JetStreamContext, GroupCommits] = weakref.WeakKeyDictionary()


def commit_groups(js: JetStreamContext, *, max_messages: int, max_bytes: int) -> GroupCommits:
    """The group commits of `js`'s writers (made on first use); its limits lowered to
    `max_messages` and `max_bytes` when those are lower (a writer learnt the server's)."""
    groups = _groups.get(js)
    if groups is None:
        groups = _groups[js] = GroupCommits(weakref.ref(js), max_messages, max_bytes)
    groups.max_messages = min(groups.max_messages, max_messages)
    groups.max_bytes = min(groups.max_bytes, max_bytes)
    return groups
