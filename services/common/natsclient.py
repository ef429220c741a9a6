"""nats-py's client with a faster parse of message headers, the same dict out.

Every event carries about ten headers (CloudEvents `ce-*`, `Nats-Msg-Id`, …), and nats-py
parses each message's header block in Python as it reads it: per line, a split, two
decodes and a generator over the name's characters looking for whitespace. That was 6-7 %
of the storage projector's samples in py-spy (B5) and a quarter of the gateway's in a late
replay (B1). `parse_header_lines` checks the whole block with one regular expression:
when every line is `Name: Value` in printable ASCII (a header token, one space, a value
without surrounding whitespace) — as every header Kiln and nats-server write — the lines
are split without further checks; otherwise each line whose name is a token is taken
as it is, and any other line is handed to nats-py's own parser. Either way the result is
nats-py's for every input (tests/common/test_natsclient.py compares the two).

A subscriber that never reads its messages' headers (storage's pull of every event: the
event is its JSON) can skip even that: `KilnClient.skip_headers(sid)` delivers that
subscription's messages with `headers` None, their header block not parsed at all — but
for a block with an inline status (`NATS/1.0 404 No Messages`, a heartbeat), which
nats-server sends to end or mark a pull request: those are parsed as always. That parse
was still 6-10 % of the projector's samples in py-spy (B5, B6) after the fast path above.

Publishing has the mirror cost: nats-py writes each header of a message one at a time
(strip, a regex check of the name, a translate of the value, three encodes) — a quarter
of the orchestrator's samples in B6's 50 concurrent generations once its own work was
cut. `KilnClient._send_publish` joins the block at once and checks it with one regular
expression; a block it does not vouch for goes through nats-py's own code, so the bytes
sent are nats-py's for every input (tests/common/test_natsclient.py compares the two).
`KilnClient.publish_each` sends many messages (an atomic batch's) as one command: nats-py's
per-message checks, buffer append and flush request were half of a batch's publishing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any, cast

from nats.aio.client import Client, _validate_subject
from nats.aio.msg import Msg
from nats.errors import (
    ConnectionClosedError,
    ConnectionDrainingError,
    MaxPayloadError,
    OutboundBufferLimitError,
)
from nats.protocol.command import hpub_cmd, pub_cmd

_TOKEN = re.compile(rb"[!-9;-~]+")
"""A header name nats-py keeps as it is: printable ASCII, no whitespace, no colon."""
_PLAIN = re.compile(rb"(?:[!-9;-~]+: [!-~](?:[ -~]*[!-~])?\r\n)*(?:\r\n)?")
"""A block of `Token: Value` lines, each value printable ASCII without surrounding spaces."""
_nats_parse = Client._parse_header_lines
_PLAIN_OUT = re.compile(r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [!-~](?:[ -~]*[!-~])?\r\n)*")
"""Header lines nats-py would send as they are: a name it accepts, one space, a printable
ASCII value without surrounding whitespace (so its strip and newline translation change
nothing)."""


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """A NATS header block (`Name: Value\\r\\n` lines) as nats-py's
    `Client._parse_header_lines` returns it."""
    if _PLAIN.fullmatch(raw):
        text = raw.decode("ascii").rstrip("\r\n")  # a value never ends with either
        if not text:
            return {}
        return dict(map(str.split, text.split("\r\n"), repeat(": "), repeat(1)))
    out: dict[str, str] = {}
    token = _TOKEN.fullmatch
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        if token(name):
            out[name.decode("ascii")] = value.strip().decode("utf-8", "replace")
        else:
            out.update(_nats_parse(line))
    return out


_STATUS_AT = len(b"NATS/1.0")
"""Where a header block has a space when it starts with an inline status (as nats-py tells)."""


_CUT_BATCH_MARK = b"NATS/1.0\r\nNats-Batch-Id: -\r\n\r\n"
"""The header block a skipped message of an atomic batch, not its commit, is given."""


class KilnClient(Client):
    """nats-py's `Client`, parsing message headers with `parse_header_lines`, and not at all
    for the subscriptions given to `skip_headers`."""

    _parse_header_lines = staticmethod(parse_header_lines)

    def __init__(self) -> None:
        super().__init__()
        self._headerless: set[int] = set()

    def skip_headers(self, sid: int) -> None:
        """Deliver subscription `sid`'s messages without their headers (None), but for
        those with an inline status, which keep theirs. Sids are never reused by nats-py."""
        self._headerless.add(sid)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        # `headers` is None for a message published without any (nats-py's annotation says
        # bytes, its parser passes None).
        if headers and sid in self._headerless and headers[_STATUS_AT : _STATUS_AT + 1] != b" ":
            # Only one fact is kept: the message is part of an atomic batch and not its
            # commit (pull.ends_in_a_cut_batch asks for the rest of such a batch at once).
            if b"Nats-Batch-Id" in headers and b"Nats-Batch-Commit" not in headers:
                headers = _CUT_BATCH_MARK
            else:
                headers = None
        await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]

    async def _process_headers(self, headers: bytes | None) -> dict[str, str] | None:
        if headers is _CUT_BATCH_MARK:  # nearly every message of a pull of atomic batches
            return {"Nats-Batch-Id": "-"}
        return await super()._process_headers(headers)

    async def ack_each(self, msgs: list[Msg]) -> None:
        """Acknowledge each of `msgs` (JetStream messages), in order, as one write.

        An ack is an empty message to the message's reply subject; nats-py's `Msg.ack`
        publishes each alone (checks, a command, a flush request): with a projector's
        thousands a second that was 4 % of its samples in py-spy (B6). The bytes sent are
        the same."""
        for msg in msgs:
            msg._check_reply()  # no reply subject, or acked already: nats-py's errors
        if self.is_closed:
            raise ConnectionClosedError
        if self.is_draining_pubs:
            raise ConnectionDrainingError
        if not self.is_connected and (
            self._max_pending_size <= 0 or self._pending_data_size > self._max_pending_size
        ):
            raise OutboundBufferLimitError  # nats-py's answer while it cannot buffer
        await self._send_command(b"".join([pub_cmd(msg.reply, "", b"") for msg in msgs]))
        self.stats["out_msgs"] += len(msgs)
        for msg in msgs:
            msg._ackd = True
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

    async def publish_each(
        self, subject: str, messages: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> None:
        """`publish(subject, data, headers=headers)` of each of `messages`, in order, as one
        write; the bytes sent are the same. When every header block is one this client
        vouches for (`_plain_block`), nothing is sent unless all can be: the error nats-py
        would raise at the first message it refuses is raised before any is sent. Otherwise
        nats-py publishes them one by one."""
        if not messages:
            return
        blocks = [_plain_block(headers) for _, headers in messages]
        if not subject or None in blocks:
            for data, headers in messages:
                await self.publish(subject, data, headers=dict(headers))
            return
        if not self._skip_subject_validation:
            _validate_subject(subject)
        if self.is_closed:
            raise ConnectionClosedError
        if self.is_draining_pubs:
            raise ConnectionDrainingError
        parts: list[bytes] = []
        pending = self._pending_data_size  # as nats-py's checks would find it, message by message
        payload_bytes = 0
        for (data, _), block in zip(messages, blocks, strict=True):
            if not self.is_connected and (
                self._max_pending_size <= 0 or len(data) + pending > self._max_pending_size
            ):
                raise OutboundBufferLimitError
            if len(data) > self._max_payload:
                raise MaxPayloadError
            head = b"NATS/1.0\r\n" + cast(str, block).encode() + b"\r\n"
            line = f"HPUB {subject}  {len(head)} {len(head) + len(data)}\r\n".encode()
            parts += (line, head, data, b"\r\n")
            pending += len(line) + len(head) + len(data) + 2
            payload_bytes += len(data)
        self.stats["out_msgs"] += len(messages)
        self.stats["out_bytes"] += payload_bytes
        await self._send_command(b"".join(parts))
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

    async def _send_publish(
        self,
        subject: str,
        reply: str,
        payload: bytes,
        payload_size: int,
        headers: dict[str, Any] | None,
    ) -> None:
        block = _plain_block(headers) if headers else None
        if block is None or not subject:
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        # nats-py's own tail of `_send_publish`, with the block it would have built.
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(
            hpub_cmd(subject, reply, b"NATS/1.0\r\n" + block.encode() + b"\r\n", payload)
        )
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()


def _plain_block(headers: Mapping[str, Any]) -> str | None:
    """The header lines of `headers` as nats-py would send them, when it would send them as
    they are: every name one nats-py accepts as it is (`_NAME_OUT`), and the block one line
    per header (so no value holds a line break) of `_PLAIN_OUT`'s form; None for any other
    (or no) headers."""
    if not _NAMES_OUT.issuperset(headers) and not _learn_names(headers):
        return None
    try:
        values = "".join(headers.values())
    except TypeError:  # a value not a str: nats-py's code says what it makes of it
        return None
    # `_PLAIN_OUT`'s values, checked at once (a regex over the block took 3.8 µs a
    # message): printable ASCII only, so no line break, and no space at either end.
    if not (values.isascii() and values.isprintable()):
        return None
    for value in headers.values():
        if not value or value[0] == " " or value[-1] == " ":
            return None
    return "".join([k + ": " + v + "\r\n" for k, v in headers.items()])


_NAME_OUT = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""A header name nats-py sends as it is (its own check, and nothing its strip removes)."""
_NAMES_OUT: set[str] = set()
"""Names already found to be `_NAME_OUT`s (a service uses a few dozen)."""


def _learn_names(headers: Mapping[str, Any]) -> bool:
    """Whether every name of `headers` is a `_NAME_OUT`; those that are are remembered."""
    for name in headers:
        if name not in _NAMES_OUT:
            if not (isinstance(name, str) and _NAME_OUT.fullmatch(name)):
                return False
            if len(_NAMES_OUT) < 1024:
                _NAMES_OUT.add(name)
    return True
