"""JSON POSTs over HTTP/1.1 on raw asyncio connections, kept alive between requests.

B6's 50 concurrent generations start with 50 POSTs from the bench, on the same 2 cores as
the services they time: through httpx they cost the bench about 2 ms of CPU each (a core
for the first 60-100 ms of a round). A request here is one write of prepared bytes and a
read of the status line, headers and `Content-Length` body.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self

import msgspec


class Response(msgspec.Struct, frozen=True):
    """A response's status and body."""

    status: int
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON."""
        return msgspec.json.decode(self.body)


class Posts:
    """POSTs to one server, each on an idle kept-alive connection or a new one."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(
        self, path: str, body: Any, headers: dict[str, str], timeout_s: float = 60.0
    ) -> Response:
        """POST `body` as JSON to `path` with `headers`; the response. A kept-alive
        connection the server has closed since is replaced by a new one, once."""
        data = msgspec.json.encode(body)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n{head}\r\n"
        ).encode() + data
        async with asyncio.timeout(timeout_s):
            while True:
                reused = bool(self._idle)
                connection = (
                    self._idle.pop()
                    if reused
                    else await asyncio.open_connection(self.host, self.port)
                )
                try:
                    return await self._exchange(connection, path, request)
                except (asyncio.IncompleteReadError, ConnectionError):
                    if not reused:
                        raise

    async def _exchange(
        self,
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        path: str,
        request: bytes,
    ) -> Response:
        reader, writer = connection
        try:
            writer.write(request)
            status_and_headers = await reader.readuntil(b"\r\n\r\n")
            lines = status_and_headers.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            fields = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            if "content-length" not in fields:
                raise RuntimeError(f"POST {path}: a response without Content-Length: {fields}")
            response = Response(status, await reader.readexactly(int(fields["content-length"])))
        except BaseException:
            writer.close()
            raise
        if fields.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append(connection)
        return response

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the idle connections."""
        for _, writer in self._idle:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for _, w in self._idle), return_exceptions=True)
        self._idle = []
