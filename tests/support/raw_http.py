"""HTTP/1.1 by hand, on plain sockets: what a hostile client sends (a header or a body that
never ends, a byte at a time) cannot be sent with an HTTP client library, and what it gets
back (an answer, a close, a reset) must be seen as the socket sees it."""

from __future__ import annotations

import json
import socket


def address(url: str) -> tuple[str, int]:
    """The (host, port) of a gateway's `http://host:port` URL."""
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def drain(sock: socket.socket, timeout: float = 30) -> tuple[bytes, bool]:
    """Read what the server sends until it closes or resets the connection, or sends
    nothing for `timeout` seconds; (the bytes, whether the server closed it)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        return received, True
    except TimeoutError:
        return received, False
    return received, True


def read_response(sock: socket.socket, timeout: float = 30) -> bytes:
    """Everything the server sends until it closes (or `timeout`)."""
    return drain(sock, timeout)[0]


def status_and_problem(response: bytes) -> tuple[int, dict[str, object]]:
    """The status of a raw response (0 if there is none) and its problem+json body ({} if
    it has none)."""
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    problem = json.loads(body) if b"application/problem+json" in head.lower() else {}
    return status, problem
