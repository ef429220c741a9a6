"""The bench's POST client: JSON over kept-alive HTTP/1.1 connections, a connection the
server closed while idle replaced once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from bench.loadgen.posts import Posts


class Server:
    """An HTTP/1.1 server on loopback answering each POST with 201 and its body echoed; it
    closes a connection after each answer when `close_after` is set (without saying so)."""

    def __init__(self, close_after: bool) -> None:
        self.close_after = close_after
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                answer = msgspec.json.encode({"got": msgspec.json.decode(body)})
                writer.write(
                    b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )
                await writer.drain()
                if self.close_after:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture(params=[False, True], ids=["kept alive", "closed after each"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    made = Server(close_after=request.param)
    made.server = await asyncio.start_server(made.handle, "127.0.0.1", 0)
    yield made
    made.server.close()
    await made.server.wait_closed()


async def test_posts_are_answered_on_kept_alive_connections(server: Server) -> None:
    async with Posts("127.0.0.1", server.port) as posts:
        for number in range(3):
            response = await posts.post("/x", {"n": number}, {"Authorization": "Bearer k"})
            assert (response.status, response.json()) == (201, {"got": {"n": number}})
            await asyncio.sleep(0.05)  # a closed connection is seen as closed by the next
    # One connection for all, or a new one after each the server closed.
    assert server.connections == (3 if server.close_after else 1)
