"""SSE clients on raw asyncio sockets: HTTP/1.1 (chunked or not), SSE parsed by the spec
(with a fast path for the `id/event/data` blocks servers write), ids checked for order.

Clients of one path share what the first of them read (`Seen`): a read byte-identical to
it at the same offset is not parsed again, and takes what the checks found over those
bytes. In B4's herd, parsing every stream of 1,000 cost the clients 0.65-0.8 ms a stream
(about a third of their CPU, on the same 2 cores as the gateway they measure); comparing
a stream's bytes costs 0.04 ms. A stream that differs anywhere (a keepalive, an event
missing or out of order) is parsed from where it differs, as if alone.

Run as `python -m bench.loadgen.sse '<json config>'`; see `workers.py` for the protocol.
Config: host, port, paths (one stream per path), ready ("headers" or "event": the first
event received), decode (decode every event's JSON data), hold (stay connected until
`stop`), wait_go (connect on `go`), shared (the clients of one path share what they read,
`Seen`; not with decode or ready "event"), timeout.
"""

from __future__ import annotations

import asyncio
import bisect
import operator
import re
import sys
import time
from typing import Any, cast

import msgspec

from bench.loadgen.workers import Control

TERMINAL = frozenset({b"generation.completed", b"generation.failed", b"generation.cancelled"})
MARK = "bench "
# Whole runs of the `id: N\nevent: T\ndata: D\n\n` blocks a server writes, checked and
# counted by the regex engine in one pass: a client that does not decode pays no Python per
# event. Each match is a plain block (its id captured) or, where none starts, a line of
# anything else (captured in the second group), so the run is plain blocks only if no match
# has a second group. Over complete blocks (ending in a blank line) every position starts a
# match of one or the other, so nothing is skipped.
_BLOCK_OR_LINE = re.compile(rb"id: (\d+)\nevent: [^\n]*\ndata: [^\n]*\n\n|([^\n]*\n)")
_first, _second = operator.itemgetter(0), operator.itemgetter(1)


class _Data(msgspec.Struct):
    type: str
    seq: int
    message: str = ""


_decode = msgspec.json.Decoder(_Data).decode


class State(msgspec.Struct, frozen=True):
    """What a client's checks found over the bytes it read so far, and the incomplete block
    it holds: all that its next read depends on."""

    events: int = 0
    last_id: int = 0
    disorder: int = 0
    keepalives: int = 0
    terminal: bool = False
    sse: bytes = b""


class Seen:
    """A path's stream as its clients read and checked it, so far: its bytes (as received,
    before any line-end change) and the checks' state at the end of each read that added to
    it. `open` is False once a read held a CR (the parser's buffer then differs from the
    bytes): it grows no more, and every client parses beyond it alone."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ends: list[int] = [0]
        self.states: list[State] = [State()]
        self.open = True
        self.final: int | None = None
        """The length at which the stream ended (its terminal event), once read."""

    def add(self, text: bytes, state: State) -> None:
        """`text` read and checked next, leaving `state`."""
        self.data += text
        self.ends.append(len(self.data))
        self.states.append(state)
        if state.terminal:
            self.final = len(self.data)


class Client(asyncio.Protocol):
    """One SSE stream."""

    def __init__(
        self,
        request: bytes,
        ready_on_event: bool,
        decode: bool,
        latencies: list[int],
        seen: Seen | None = None,
    ):
        """`seen`: the stream of this path as other clients read it (not with `decode` or
        `ready_on_event`, whose per-event work a replayed read would skip)."""
        assert seen is None or not (decode or ready_on_event)
        loop = asyncio.get_running_loop()
        self.request = request
        self.ready_on_event = ready_on_event
        self.decode = decode
        self.latencies = latencies
        self.ready = loop.create_future()
        self.done = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.status = 0
        self.chunked: bool | None = None
        self.raw = b""
        self.chunk_left = 0
        self.crlf_left = 0
        self.sse = b""
        self.events = 0
        self.marked = 0
        self.keepalives = 0
        self.plain_runs = 0
        """Reads whose complete blocks were all taken at once (`_plain`)."""
        self.last_id = 0
        self.disorder = 0
        self.terminal = False
        self.error = ""
        self.done_at = 0.0
        self.closing = False
        self.seen = seen
        self.offset = 0
        """Bytes of the stream received (after unchunking) while it matched `seen`."""
        self.replayed = 0
        """Reads taken from `seen` without parsing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.settle()
        if not self.terminal and not self.closing and not self.error:
            self.error = f"connection closed before the end ({exc!r})"
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done_at = time.time()
            self.done.set_result(None)
        if not self.ready.done():
            self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.chunked is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            self.head = b""
            lines = head.split(b"\r\n")
            self.status = int(lines[0].split()[1])
            names = {line.partition(b":")[0].strip().lower(): line for line in lines[1:]}
            self.chunked = b"chunked" in names.get(b"transfer-encoding", b"").lower()
            if self.status != 200:
                self.error = f"HTTP {self.status}"
                self.close()
                return
            if not self.ready_on_event and not self.ready.done():
                self.ready.set_result(None)
            if not data:
                return
        self._sse(self._unchunk(data) if self.chunked else data)

    def _unchunk(self, data: bytes) -> bytes:
        raw = self.raw + data if self.raw else data
        pieces = []
        pos, end = 0, len(raw)
        while pos < end:
            if self.chunk_left:
                take = min(self.chunk_left, end - pos)
                pieces.append(raw[pos : pos + take])
                pos += take
                self.chunk_left -= take
                if not self.chunk_left:
                    self.crlf_left = 2
                continue
            if self.crlf_left:
                skip = min(self.crlf_left, end - pos)
                pos += skip
                self.crlf_left -= skip
                continue
            line_end = raw.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(raw[pos:line_end].split(b";")[0], 16)
            pos = line_end + 2
            if size == 0:
                break
            self.chunk_left = size
        self.raw = raw[pos:]
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _sse(self, text: bytes) -> None:
        if self.seen is not None:
            rest = self._compare(self.seen, text)
            if not rest:
                return
            text = rest
        self._parse(text)

    def _compare(self, seen: Seen, text: bytes) -> bytes:
        """Take what of `text` matches `seen` (its bytes, or at its end, this read parsed
        for all); what is left to parse alone, once it differs (then `seen` is dropped)."""
        if not text:  # a read of chunk framing only
            return b""
        known = min(len(text), len(seen.data) - self.offset)
        if known > 0:
            if seen.data[self.offset : self.offset + known] != text[:known]:
                return self._alone(seen, text)
            self.offset += known
            self.replayed += 1
            if self.offset == seen.final:
                self._catch_up(seen)
                self.close()
                return b""
            text = text[known:]
            if not text:
                return b""
        if not seen.open or seen.final is not None or self.offset != len(seen.data):
            return self._alone(seen, text)
        # At the end of what was seen: this client reads the next bytes for every client.
        self._catch_up(seen)
        self._parse(text)
        if b"\r" in text:
            seen.open = False
            self.seen = None
            return b""
        seen.add(text, self._state())
        self.offset += len(text)
        return b""

    def _alone(self, seen: Seen, text: bytes) -> bytes:
        self._catch_up(seen)
        self.seen = None
        return text

    def _catch_up(self, seen: Seen) -> None:
        """The checks' state after the bytes this client matched: the last one recorded
        before them, and the rest parsed (as one read: any split gives the same state)."""
        index = bisect.bisect_right(seen.ends, self.offset) - 1
        self._take(seen.states[index])
        if seen.ends[index] < self.offset:
            self._parse(bytes(seen.data[seen.ends[index] : self.offset]))

    def _state(self) -> State:
        return State(
            self.events, self.last_id, self.disorder, self.keepalives, self.terminal, self.sse
        )

    def _take(self, state: State) -> None:
        self.events, self.last_id, self.disorder = state.events, state.last_id, state.disorder
        self.keepalives, self.terminal, self.sse = state.keepalives, state.terminal, state.sse

    def _parse(self, text: bytes) -> None:
        buf = self.sse + text if self.sse else text
        if b"\r" in buf:
            keep_cr = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:  # a CRLF split between two reads: decide on the next read
                buf = buf[:-1] + b"\r"
        end = buf.rfind(b"\n\n") + 2
        if end > 1 and not self.decode and self._plain(buf[:end]):
            self.sse = buf[end:]
            return
        blocks = buf.split(b"\n\n")
        self.sse = blocks.pop()
        for block in blocks:
            if not block:
                continue
            # Fast path for the `id: N\nevent: T\ndata: D` block a server writes; anything
            # else takes the general path of the SSE spec.
            i1 = block.find(b"\n")
            i2 = block.find(b"\n", i1 + 1) if i1 > 0 else -1
            if (
                i2 > 0
                and block.startswith(b"id: ")
                and block.startswith(b"event: ", i1 + 1)
                and block.startswith(b"data: ", i2 + 1)
                and block.find(b"\n", i2 + 1) < 0
            ):
                self._event(block[4:i1], block[i1 + 8 : i2], block[i2 + 7 :])
            else:
                self._general(block)
            if self.terminal:
                return

    def _plain(self, whole: bytes) -> bool:
        """Count and order-check `whole` (complete blocks) at once if it is plain blocks
        and its last is not a terminal event (one is only ever last); False leaves it to
        the per-block path."""
        last = max(0, whole.rfind(b"\n\nid: ", 0, len(whole) - 2))
        if whole.find(b"\nevent: generation.", last) >= 0:
            return False
        found = _BLOCK_OR_LINE.findall(whole)
        if any(map(_second, found)):
            return False
        seqs = [self.last_id, *map(int, map(_first, found))]
        self.events += len(seqs) - 1
        self.disorder += sum(map(operator.ge, seqs, seqs[1:]))
        self.last_id = seqs[-1]
        self.plain_runs += 1
        if not self.ready.done():
            self.ready.set_result(None)
        return True

    def _general(self, block: bytes) -> None:
        event_id: bytes | None = None
        event_type = b"message"
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b":"):
                self.keepalives += 1
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"id":
                event_id = value
            elif name == b"event":
                event_type = value
            elif name == b"data":
                data.append(value)
        if data:
            self._event(event_id, event_type, b"\n".join(data))

    def _event(self, event_id: bytes | None, event_type: bytes, data: bytes) -> None:
        self.events += 1
        if event_id:
            seq = int(event_id)
            if seq <= self.last_id:
                self.disorder += 1
            self.last_id = seq
        if self.decode:
            body = _decode(data)
            if body.message.startswith(MARK):
                self.marked += 1
                self.latencies.append(int((time.time() - float(body.message[6:])) * 1e6))
        if not self.ready.done():
            self.ready.set_result(None)
        if event_type in TERMINAL:
            self.terminal = True
            self.close()

    def settle(self) -> None:
        """At the end of a stream that matched `seen` but did not reach its end (cut short,
        or closed by `stop`): the checks' state over what it received."""
        if self.seen is not None and not self.terminal:
            self._catch_up(self.seen)
        self.seen = None

    def close(self) -> None:
        self.settle()
        self.closing = True
        if self.transport is not None:
            self.transport.close()
        self._finish()


async def run(control: Control, config: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    host, port = config["host"], config["port"]
    latencies: list[int] = []
    requests = [
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
            "Cache-Control: no-cache\r\n\r\n"
        ).encode()
        for path in config["paths"]
    ]
    if config.get("wait_go"):
        await control.wait("go")
    started = time.time()
    cpu = time.process_time()
    ready_on_event, decode = config.get("ready") == "event", config.get("decode", False)
    shared = config.get("shared") and not (ready_on_event or decode)
    seen = {request: Seen() for request in requests} if shared else {}
    clients = [
        Client(request, ready_on_event, decode, latencies, seen.get(request))
        for request in requests
    ]

    async def connect(client: Client) -> None:
        try:
            await loop.create_connection(lambda: client, host, port)
        except OSError as exc:
            client.error = f"connect failed: {exc!r}"
            client._finish()

    await asyncio.gather(*(connect(c) for c in clients))
    timeout = config.get("timeout", 120.0)
    await asyncio.wait_for(asyncio.gather(*(c.ready for c in clients)), timeout)
    control.send({"ready": time.time()})
    if config.get("hold"):
        await control.wait("stop")
        for client in clients:
            client.close()
    await asyncio.wait([c.done for c in clients], timeout=timeout)
    for client in clients:
        client.settle()  # one still open may be behind on what it matched
    cpu = time.process_time() - cpu
    done_at = [c.done_at for c in clients if c.done.done()]
    return {
        "started": started,
        "finished": max(done_at) if done_at else time.time(),
        "cpu_s": cpu,
        "streams": len(clients),
        "completed": sum(c.terminal for c in clients),
        "events": sum(c.events for c in clients),
        "marked": [c.marked for c in clients],
        "last_ids": [c.last_id for c in clients],
        "disorder": sum(c.disorder for c in clients),
        "keepalives": sum(c.keepalives for c in clients),
        "replayed_reads": sum(c.replayed for c in clients),
        "errors": sorted({c.error for c in clients if c.error})[:5],
        "latencies_us": latencies,
    }


if __name__ == "__main__":
    Control.main(run, sys.argv[1])
