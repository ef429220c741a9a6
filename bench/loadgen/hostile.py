"""Hostile clients of issue 19, on raw asyncio sockets, each attack sustained for a while.

Run as `python -m bench.loadgen.hostile <config.json>`; see `workers.py` for the protocol.
Config: attack (one of ATTACKS), host, port, seconds, and per attack: header_bytes (a),
fields (b), connections and interval (c, d), path and key (d), stream_path (e).

The result says what the gateway answered and when it closed each connection:
`statuses` (status code → responses; 0: closed without a status line), `opened`
(connections), `closed_after` (seconds from a connection's opening to the gateway
closing it, one per closed connection), `still_open` at the end, and `sent` (bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from bench.loadgen.workers import Control

PIECE = 64 * 1024
TCP_ESTABLISHED = 1
READ_TIMEOUT_S = 30.0
"""How long (a) and (b) wait for the answer to a request they have finished sending. The
trickling attacks (c, d) wait for theirs until the attack ends: a read timeout there as
long as the gateway's own deadline (30 s for a body) gives up on a connection just before
the gateway answers it, and then resets the connection itself."""


class Tally:
    """What the gateway did to the attack's connections."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.opened = 0
        self.closed_after: list[float] = []
        self.sent = 0

    def result(self, still_open: int) -> dict[str, Any]:
        return {
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "opened": self.opened,
            "closed_after": self.closed_after,
            "still_open": still_open,
            "sent": self.sent,
        }


def _status(head: bytes) -> int:
    parts = head.split(b" ", 2)
    return int(parts[1]) if head.startswith(b"HTTP/1.") and len(parts) > 1 else 0


async def _read_answer(
    reader: asyncio.StreamReader, timeout_s: float | None = READ_TIMEOUT_S
) -> tuple[int, bool]:
    """The status of the one response the gateway sends (0 if it closes the connection
    without one, or sends nothing for `timeout_s`), and whether the connection ends with it
    (`Connection: close`, or closed)."""
    try:
        async with asyncio.timeout(timeout_s):
            head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return 0, True
    except TimeoutError:
        return 0, False
    return _status(head), b"\r\nconnection: close\r\n" in head.lower()


async def _send_until_answered(
    host: str, port: int, head: bytes, filler: Iterator[bytes], tally: Tally
) -> None:
    """One request: `head`, then `filler` for as long as the gateway reads it and has not
    answered (then the end of the headers); its answer is tallied."""
    reader, writer = await asyncio.open_connection(host, port)
    tally.opened += 1
    opened = time.monotonic()
    answer = asyncio.create_task(_read_answer(reader))
    try:
        writer.write(head)
        for piece in [*filler, b"\r\n\r\n"]:
            if answer.done():
                break
            writer.write(piece)
            drained = asyncio.ensure_future(writer.drain())
            await asyncio.wait({drained, answer}, return_when=asyncio.FIRST_COMPLETED)
            if not drained.done():
                drained.cancel()
                break
            if drained.exception() is not None:
                break
            tally.sent += len(piece)
        status, closed = await answer
        tally.statuses[status] += 1
        if closed:
            tally.closed_after.append(time.monotonic() - opened)
    except ConnectionError:
        tally.statuses[0] += 1
    finally:
        answer.cancel()
        writer.transport.abort()


async def huge_header(config: dict[str, Any], tally: Tally, until: float) -> int:
    """(a) a header of `header_bytes` on /healthz, again and again, one at a time."""
    head = b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Huge: "
    count = config["header_bytes"] // PIECE
    while time.monotonic() < until:
        filler = (b"a" * PIECE for _ in range(count))
        await _send_until_answered(config["host"], config["port"], head, filler, tally)
    return 0


async def many_headers(config: dict[str, Any], tally: Tally, until: float) -> int:
    """(b) `fields` header fields on /healthz, again and again, one at a time."""
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(config["fields"]))
    head = b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n"
    while time.monotonic() < until:
        filler = (fields[i : i + PIECE] for i in range(0, len(fields), PIECE))
        await _send_until_answered(config["host"], config["port"], head, filler, tally)
    return 0


async def _trickle(
    config: dict[str, Any],
    request: bytes,
    endless: bytes,
    tally: Tally,
    until: float,
    *,
    trickle_request: bool,
) -> int:
    """`connections` clients, each sending `request` (at once, or one byte at a time with
    `trickle_request`) and then `endless` one byte every `interval` seconds; a connection
    the gateway closes is opened again at once. Each waits for its answer until `until`
    (no read timeout of its own): returns how many are still open, unanswered, then."""
    still_open = 0

    async def client() -> None:
        nonlocal still_open
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.open_connection(config["host"], config["port"])
            except OSError:
                tally.statuses[0] += 1
                await asyncio.sleep(config["interval"])
                continue
            tally.opened += 1
            opened = time.monotonic()
            answer = asyncio.create_task(_read_answer(reader, None))
            try:
                writer.write(b"" if trickle_request else request)
                for byte in (request if trickle_request else b"") + endless:
                    if answer.done() or time.monotonic() >= until:
                        break
                    writer.write(bytes((byte,)))
                    tally.sent += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(answer), config["interval"])
                if answer.done():
                    status, closed = answer.result()
                    tally.statuses[status] += 1
                    if closed:
                        tally.closed_after.append(time.monotonic() - opened)
                        continue
                still_open += 1
                return
            finally:
                answer.cancel()
                writer.transport.abort()

    await asyncio.gather(*(client() for _ in range(config["connections"])))
    return still_open


async def slow_headers(config: dict[str, Any], tally: Tally, until: float) -> int:
    """(c) connections sending their request line and headers one byte every `interval`."""
    request = b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n"
    endless = b"X-Slow: " + b"a" * 100_000
    return await _trickle(config, request, endless, tally, until, trickle_request=True)


async def slow_body(config: dict[str, Any], tally: Tally, until: float) -> int:
    """(d) POSTs with a key and a declared Content-Length whose body comes one byte every
    `interval`."""
    body = b'{"project_name": "' + b"a" * 100_000 + b'"}'
    request = (
        f"POST {config['path']} HTTP/1.1\r\nHost: kiln\r\n"
        f"Authorization: Bearer {config['key']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return await _trickle(config, request, body, tally, until, trickle_request=False)


def _non_reader(rcvbuf: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
    sock.setblocking(False)
    return sock


def _tcp_state(sock: socket.socket) -> int:
    return struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]


async def never_read(config: dict[str, Any], tally: Tally, until: float) -> int:
    """(e) SSE clients of a large finished replay with a tiny receive buffer that never
    read: the status line is peeked at (not read), the gateway closing the connection is
    seen in the socket's TCP state."""
    loop = asyncio.get_running_loop()
    request = f"GET {config['stream_path']} HTTP/1.1\r\nHost: kiln\r\n\r\n".encode()
    every: list[socket.socket] = []
    sockets: dict[socket.socket, float] = {}
    statuses: dict[socket.socket, int] = {}
    try:
        for _ in range(config["connections"]):
            sock = _non_reader(config["rcvbuf"])
            every.append(sock)
            await loop.sock_connect(sock, (config["host"], config["port"]))
            await loop.sock_sendall(sock, request)
            sockets[sock] = time.monotonic()
            tally.opened += 1
            tally.sent += len(request)
        while sockets and time.monotonic() < until:
            for sock, opened in list(sockets.items()):
                if sock not in statuses:
                    with contextlib.suppress(BlockingIOError, ConnectionError):
                        peeked = sock.recv(16, socket.MSG_PEEK)
                        if peeked.startswith(b"HTTP/1.1 ") and len(peeked) >= 12:
                            statuses[sock] = _status(peeked)
                if _tcp_state(sock) != TCP_ESTABLISHED:
                    tally.closed_after.append(time.monotonic() - opened)
                    del sockets[sock]
            await asyncio.sleep(0.1)
        return len(sockets)
    finally:
        for status in statuses.values():
            tally.statuses[status] += 1
        tally.statuses[0] += config["connections"] - len(statuses)
        for sock in every:
            sock.close()
        if not tally.statuses[0]:
            del tally.statuses[0]


ATTACKS = {
    "huge_header": huge_header,
    "many_headers": many_headers,
    "slow_headers": slow_headers,
    "slow_body": slow_body,
    "never_read": never_read,
}


async def run(control: Control, config: dict[str, Any]) -> dict[str, Any]:
    """Wait for `go`, then run the attack for `seconds`."""
    await control.wait("go")
    tally = Tally()
    started = time.monotonic()
    still_open = await ATTACKS[config["attack"]](config, tally, started + config["seconds"])
    return {**tally.result(still_open), "elapsed": time.monotonic() - started}


if __name__ == "__main__":
    Control.main(run, sys.argv[1])
