"""Request bodies are limited in the gateway's HTTP protocol, before any route, key or body
is looked at, against a real gateway process: a body that trickles in is cut off at its
deadline, a body declared or sent over the limit answers 413, and a refused client that
goes on sending is reset after a bounded amount; the gateway's memory (from /proc) stays
small and a normal request meanwhile is answered. A request without a body (an SSE
stream) has no such deadline."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from services.common.embedded_nats import EmbeddedNats
from services.gateway.errors import BODY_TOO_LARGE, PayloadTooLarge
from services.gateway.protocol import LINGER_MAX_BYTES
from tests.ops.cluster import scrape
from tests.support import client as kiln
from tests.support.client import SCHEMA_ONE
from tests.support.environment import ALICE_KEY
from tests.support.pressure import MIB, probing
from tests.support.processes import ServiceProcess, lone_gateway
from tests.support.raw_http import address, drain, status_and_problem

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BODY_TIMEOUT_S = 2.0
MAX_BODY_BYTES = 1 * MIB  # the default
TRICKLERS = 300  # half with a key (the application awaits the body), half without
SLACK = 16 * MIB
"""What the kernel may hold in flight on a loopback connection beyond what the gateway
read: the gateway's receive buffer (which Linux grows up to `tcp_rmem`'s maximum for a
fast reader) and the client's send buffer (kept small)."""


@pytest.fixture
def gateway(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[tuple[ServiceProcess, str]]:
    """One gateway process (the database migrated), with a short body timeout and
    frequent SSE keepalives."""
    with lone_gateway(
        tmp_path,
        nats_server.url,
        KILN_BODY_TIMEOUT=str(BODY_TIMEOUT_S),
        KILN_SSE_KEEPALIVE="0.5",
    ) as gateway:
        yield gateway


def _post_head(length: int | None, key: str | None = None) -> bytes:
    """The head of `POST /generations` with a declared body `length`, or a chunked body."""
    framing = (
        b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length
    )
    auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
    return (
        b"POST /generations HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\n"
        + auth
        + framing
        + b"\r\n"
    )


def _keep_sending(url: str, head: bytes, piece: bytes, cap: int) -> tuple[bytes, int, bool]:
    """A client that sends `head` and then `piece` after `piece`, whatever it is answered,
    until the gateway resets the connection or `cap` bytes are sent; (what it received,
    how many bytes the gateway took, whether it was reset)."""
    received = b""
    ended = False  # the gateway has answered and closed its side
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.connect(address(url))
        sock.sendall(head)
        sent = 0
        try:
            while sent < cap:
                readable, writable, _ = select.select([] if ended else [sock], [sock], [], 30)
                if readable:
                    chunk = sock.recv(65536)
                    received += chunk
                    ended = not chunk
                elif writable:
                    sent += sock.send(piece)
                else:
                    raise AssertionError("the gateway neither read nor answered for 30 s")
        except (BrokenPipeError, ConnectionResetError):
            return received + drain(sock, 1)[0], sent, True
    return received, sent, False


def _listen(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What the server sends for `seconds`; (the bytes, whether it closed the connection)."""
    deadline = time.monotonic() + seconds
    received = b""
    while (left := deadline - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return received, True
            received += chunk
    return received, False


async def test_bodies_that_trickle_in_are_cut_off_at_the_deadline(
    gateway: tuple[ServiceProcess, str],
) -> None:
    process, url = gateway
    keyed = [socket.create_connection(address(url)) for _ in range(TRICKLERS // 2)]
    anonymous = [socket.create_connection(address(url)) for _ in range(TRICKLERS // 2)]
    for sock in keyed:
        sock.sendall(_post_head(4096, ALICE_KEY) + b"{")
    for sock in anonymous:
        sock.sendall(_post_head(4096) + b"{")
    started = time.monotonic()
    open_ = {*keyed, *anonymous}
    answers = {sock: b"" for sock in open_}
    lasted: list[float] = []

    def trickle_until_cut(deadline_s: float) -> None:
        """A body byte every 2 s on each connection, until the gateway closes every
        connection or the deadline passes; what each was answered."""
        deadline = time.monotonic() + deadline_s
        next_byte = time.monotonic() + 2
        while open_ and time.monotonic() < deadline:
            readable, _, _ = select.select(list(open_), [], [], 0.2)
            for sock in readable:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                answers[sock] += chunk
                if not chunk:
                    open_.discard(sock)
                    lasted.append(time.monotonic() - started)
            if time.monotonic() >= next_byte:
                next_byte += 2
                for sock in list(open_):
                    try:
                        sock.send(b" ")
                    except OSError:
                        open_.discard(sock)
                        lasted.append(time.monotonic() - started)

    try:
        async with probing(process, url) as probe:
            await asyncio.to_thread(trickle_until_cut, BODY_TIMEOUT_S * 10)
        probe.report(
            f"{TRICKLERS} connections sending a body byte every 2 s (cut after "
            f"{min(lasted, default=0):.1f}-{max(lasted, default=0):.1f} s)"
        )
        assert not open_, f"{len(open_)} of {TRICKLERS} connections still open"
        # With a key the application awaits the body: the protocol answers 408. Without
        # one it has answered 401 at once; the connection is then just closed.
        for sock in keyed:
            status, problem = status_and_problem(answers[sock])
            assert status == 408, answers[sock][:300]
            assert "body did not arrive within 2 seconds" in str(problem["detail"])
            assert problem["instance"] == "/generations"
        assert {status_and_problem(answers[sock])[0] for sock in anonymous} == {401}
        assert set(probe.statuses) == {200}
        assert probe.growth < 16 * MIB
        metrics = await scrape(url)
        assert metrics['kiln_gateway_http_refused_total{reason="body_timeout"}'] == TRICKLERS
        assert "ERROR" not in process.log
    finally:
        for sock in [*keyed, *anonymous]:
            sock.close()


@pytest.mark.parametrize("key", [None, ALICE_KEY], ids=["no key", "key"])
async def test_a_declared_body_over_the_limit_answers_413_before_it_is_sent(
    gateway: tuple[ServiceProcess, str], key: str | None
) -> None:
    """Only the headers are sent: the 413 and the close come without a byte of the body,
    whether or not the request has a key (the application never sees it)."""
    _, url = gateway
    with socket.create_connection(address(url)) as sock:
        sock.sendall(_post_head(MAX_BODY_BYTES + 1, key))
        response, closed = await asyncio.to_thread(drain, sock, 10)
    status, problem = status_and_problem(response)
    assert status == 413, response[:300]
    # The application's own 413, word for word.
    assert (problem["title"], problem["detail"]) == (PayloadTooLarge.title, BODY_TOO_LARGE)
    assert problem["instance"] == "/generations"
    assert b"connection: close" in response.lower()
    assert closed, "the gateway closes the connection after a 413"

    # The limit itself is a body like any other (here: 401 without a key, 400 with one).
    with socket.create_connection(address(url)) as sock:
        sock.sendall(_post_head(MAX_BODY_BYTES, key) + b" " * MAX_BODY_BYTES)
        sock.shutdown(socket.SHUT_WR)
        response, _ = await asyncio.to_thread(drain, sock, 30)
    assert status_and_problem(response)[0] == (400 if key else 401), response[:300]


async def test_a_chunked_body_past_the_limit_answers_413_and_is_read_no_further(
    gateway: tuple[ServiceProcess, str],
) -> None:
    process, url = gateway
    piece = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    async with probing(process, url) as probe:
        response, sent, reset = await asyncio.to_thread(
            _keep_sending, url, _post_head(None, ALICE_KEY), piece, 256 * MIB
        )
    probe.report(f"a chunked body sent without end ({sent} bytes taken)")
    status, problem = status_and_problem(response)
    assert status == 413, response[:300]
    assert problem["detail"] == BODY_TOO_LARGE
    assert reset, f"the gateway took all {sent} bytes"
    assert sent < MAX_BODY_BYTES + LINGER_MAX_BYTES + SLACK
    assert set(probe.statuses) == {200}


@pytest.mark.parametrize("refusal", ["413", "431"])
async def test_a_refused_client_that_keeps_sending_is_reset_after_a_mebibyte(
    gateway: tuple[ServiceProcess, str], refusal: str
) -> None:
    """After a refusal the gateway drops what the client still sends (so that the client
    can read the answer) only up to LINGER_MAX_BYTES, then resets the connection."""
    _, url = gateway
    if refusal == "413":  # no key: the application would have answered 401
        head = _post_head(1024 * MIB)
    else:
        head = b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Huge: " + b"a" * (32 * 1024) + b"\r\n"
    response, sent, reset = await asyncio.to_thread(
        _keep_sending, url, head, b"a" * 65536, 256 * MIB
    )
    print(f"refused with {refusal}, then {sent} bytes taken before the reset")
    assert status_and_problem(response)[0] == int(refusal), response[:300]
    assert reset, f"the gateway took all {sent} bytes"
    assert sent < LINGER_MAX_BYTES + SLACK


async def test_a_stream_and_a_body_in_time_are_not_cut(
    gateway: tuple[ServiceProcess, str],
) -> None:
    """The body deadline is a deadline on bodies only: an SSE stream (a GET, no body)
    lives on well past it, and a body that arrives in parts within it is served."""
    _, url = gateway
    async with kiln.connect(url, ALICE_KEY) as http:
        accepted = await kiln.create(http)  # no orchestrator: the stream stays open
    with socket.create_connection(address(url)) as stream:
        stream.sendall(f"GET {accepted['stream_url']} HTTP/1.1\r\nHost: kiln\r\n\r\n".encode())
        received, closed = await asyncio.to_thread(_listen, stream, BODY_TIMEOUT_S * 3)
    assert received.startswith(b"HTTP/1.1 200 "), received[:300]
    assert b"event: generation.requested" in received
    assert not closed, "the stream was cut"
    assert received.rstrip().endswith(b": keepalive"), "keepalives went on to the end"

    body = msgspec.json.encode(
        {"project_name": "slow", "schema": SCHEMA_ONE, "prompt": "a body in three parts"}
    )
    head = _post_head(len(body), ALICE_KEY).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    third = len(body) // 3 + 1
    with socket.create_connection(address(url)) as sock:
        sock.sendall(head)
        for start in range(0, len(body), third):
            await asyncio.sleep(BODY_TIMEOUT_S / 6)
            sock.sendall(body[start : start + third])
        response, _ = await asyncio.to_thread(drain, sock, 30)
    assert status_and_problem(response)[0] == 201, response[:300]


async def test_a_client_gone_mid_body_is_no_server_error(
    gateway: tuple[ServiceProcess, str],
) -> None:
    """A client that sends part of a body and closes (or resets) counts as 499, not as the
    500 that Litestar makes of the disconnect; a body cut at its deadline counts as the 408
    the client was answered. No 5xx in /metrics, no ERROR line: an operator's 5xx alert
    does not fire during a slow-body attack."""
    process, url = gateway
    logged = len(process.log)
    for reset in (False, True, False):
        sock = socket.create_connection(address(url))
        sock.sendall(_post_head(4096, ALICE_KEY) + b'{"project_name": "gone"')
        await asyncio.sleep(0.3)  # the application awaits the rest of the body
        if reset:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        sock.close()
    with socket.create_connection(address(url)) as sock:
        sock.sendall(_post_head(4096, ALICE_KEY) + b"{")
        response, _ = await asyncio.to_thread(drain, sock, BODY_TIMEOUT_S * 10)
    assert status_and_problem(response)[0] == 408, response[:300]

    counted = {}
    for _ in range(50):  # the gateway hears of the last close in its own time
        metrics = await scrape(url)
        counted = {
            key: value
            for key, value in metrics.items()
            if key.startswith("kiln_gateway_requests_total{") and 'route="/generations"' in key
        }
        if sum(counted.values()) >= 4:
            break
        await asyncio.sleep(0.1)
    assert counted == {
        'kiln_gateway_requests_total{method="POST",route="/generations",status="499"}': 3,
        'kiln_gateway_requests_total{method="POST",route="/generations",status="408"}': 1,
    }
    assert not [key for key in metrics if 'status="5' in key]
    log = process.log[logged:]
    assert "ERROR" not in log
    assert log.count("closed the connection before its answer") == 3
