"""Request headers are limited before any key is checked, against a real gateway process:
a huge header and too many headers answer 431, headers that trickle in are cut off; the
gateway's memory (from /proc) stays small, and a normal request meanwhile is answered."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.embedded_nats import EmbeddedNats
from tests.support.pressure import MIB, probing
from tests.support.processes import ServiceProcess, lone_gateway
from tests.support.raw_http import address, read_response, status_and_problem

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HUGE_HEADER_BYTES = 64 * MIB
HEADER_TIMEOUT_S = 2.0


@pytest.fixture
def gateway(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[tuple[ServiceProcess, str]]:
    """One gateway process (the database migrated), with a short header timeout."""
    with lone_gateway(
        tmp_path, nats_server.url, KILN_HEADER_TIMEOUT=str(HEADER_TIMEOUT_S)
    ) as gateway:
        yield gateway


def _send_until_answered(url: str, head: bytes, filler: Iterator[bytes]) -> tuple[bytes, int]:
    """Send `head`, then `filler` for as long as the server reads it and has not answered;
    the answer (the whole response) and how many bytes were sent."""
    with socket.create_connection(address(url)) as sock:
        sock.sendall(head)
        sent = len(head)
        for piece in filler:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                break
            if not writable:
                raise AssertionError("the gateway neither read nor answered for 30 s")
            try:
                sent += sock.send(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            sock.sendall(b"\r\n\r\n")
        return read_response(sock), sent


async def test_a_huge_header_answers_431_without_the_gateway_growing(
    gateway: tuple[ServiceProcess, str],
) -> None:
    process, url = gateway

    def filler() -> Iterator[bytes]:
        piece = b"a" * 65536
        for _ in range(HUGE_HEADER_BYTES // len(piece)):
            yield piece

    head = b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Huge: "
    async with probing(process, url) as probe:
        response, sent = await asyncio.to_thread(_send_until_answered, url, head, filler())
    probe.report(f"one {HUGE_HEADER_BYTES // MIB} MiB header ({sent} bytes taken)")

    status, problem = status_and_problem(response)
    assert status == 431, response[:300]
    assert problem["status"] == 431 and "16384 bytes" in str(problem["detail"])
    assert sent < 4 * MIB, "the gateway stopped reading soon after the limit"
    assert probe.growth < 16 * MIB
    assert set(probe.statuses) == {200}


async def test_a_request_and_its_large_body_in_one_read_are_served(
    gateway: tuple[ServiceProcess, str],
) -> None:
    """Only header bytes count: a body far over the header limit, sent with its headers in
    one write (one read for the gateway), reaches the application (here: 401, no key)."""
    _, url = gateway
    body = b'{"prompt": "' + b"x" * 100_000 + b'"}'
    request = (
        b"POST /generations HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    for _ in range(5):
        with socket.create_connection(address(url)) as sock:
            sock.sendall(request)
            status, _ = status_and_problem(await asyncio.to_thread(read_response, sock))
        assert status == 401


async def test_too_many_headers_answer_431_and_the_limit_itself_is_fine(
    gateway: tuple[ServiceProcess, str],
) -> None:
    process, url = gateway

    def request(count: int) -> bytes:
        fields = b"".join(b"X-F%d: v\r\n" % i for i in range(count))
        return b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n" + fields + b"\r\n"

    def send(data: bytes) -> bytes:
        with socket.create_connection(address(url)) as sock:
            sock.sendall(data)
            return read_response(sock)

    def many() -> Iterator[bytes]:
        fields = b"".join(b"X-F%d: v\r\n" % i for i in range(100_000))
        for start in range(0, len(fields), 65536):
            yield fields[start : start + 65536]

    async with probing(process, url) as probe:
        response, sent = await asyncio.to_thread(
            _send_until_answered, url, b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n", many()
        )
    probe.report(f"100,000 header fields ({sent} bytes taken)")
    status, _ = status_and_problem(response)
    assert status == 431, response[:300]
    assert probe.growth < 16 * MIB
    assert set(probe.statuses) == {200}

    # 100 fields is the limit, Host and Connection included.
    status, _ = status_and_problem(await asyncio.to_thread(send, request(98)))
    assert status == 200
    status, problem = status_and_problem(await asyncio.to_thread(send, request(99)))
    assert status == 431 and "at most 100 header fields" in str(problem["detail"])


async def test_headers_that_trickle_in_are_cut_off(gateway: tuple[ServiceProcess, str]) -> None:
    process, url = gateway
    trickling = [socket.create_connection(address(url)) for _ in range(150)]
    silent = [socket.create_connection(address(url)) for _ in range(150)]
    for sock in trickling:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Slow: ")
    open_ = {*trickling, *silent}
    answers: list[bytes] = []

    def trickle_until_cut(deadline_s: float) -> None:
        """A byte per half second on each trickling connection, until the gateway closes
        every connection or the deadline passes."""
        deadline = time.monotonic() + deadline_s
        while open_ and time.monotonic() < deadline:
            readable, _, _ = select.select(list(open_), [], [], 0.5)
            for sock in readable:
                answers.append(read_response(sock, timeout=5))
                open_.discard(sock)
            for sock in open_ & set(trickling):
                try:
                    sock.send(b"a")
                except OSError:
                    open_.discard(sock)

    try:
        async with probing(process, url) as probe:
            await asyncio.to_thread(trickle_until_cut, HEADER_TIMEOUT_S * 10)
        probe.report("300 connections: 150 sending a header byte every 0.5 s, 150 silent")
        assert not open_, f"{len(open_)} of 300 connections still open"
        statuses = sorted(status_and_problem(answer)[0] for answer in answers)
        # The trickling connections get a 408; the silent ones are just closed.
        assert statuses == [0] * 150 + [408] * 150
        assert set(probe.statuses) == {200}
        assert probe.growth < 16 * MIB
    finally:
        for sock in [*trickling, *silent]:
            sock.close()
