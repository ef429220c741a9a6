"""Kiln's HTTP protocol costs an idle SSE connection no more than uvicorn's own (B3), and
times a request's body only while the gateway is reading it (the attacks themselves are in
tests/security/test_headers.py and test_body_limits.py, against a gateway process)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from services.common.settings import Settings
from services.gateway.protocol import LimitedHttpProtocol, protocol_class


class _Transport(asyncio.Transport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 1), "peername": ("127.0.0.1", 2)}.get(name, default)

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _instance_dict_bytes(cls: type[HttpToolsProtocol]) -> int:
    config = Config(app=_app, log_config=None, access_log=False)
    config.load()
    protocol = cls(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
    protocol.connection_made(_Transport())
    protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n")
    await asyncio.sleep(0)
    size = sys.getsizeof(vars(protocol))
    protocol.connection_lost(None)
    return size


async def test_the_protocols_instance_dict_stays_as_small_as_uvicorns() -> None:
    # Past 30 attributes an instance's __dict__ stops sharing its keys with its class and
    # grows from ~0.3 KB to ~1.6 KB: for every open connection.
    ours = await _instance_dict_bytes(protocol_class(Settings()))
    assert ours <= await _instance_dict_bytes(HttpToolsProtocol)


class _Recording(_Transport):
    """A transport that keeps what is written and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


BODY_TIMEOUT_S = 0.05


async def _connection(app: Any) -> tuple[LimitedHttpProtocol, _Recording]:
    config = Config(app=app, log_config=None, access_log=False)
    config.load()
    cls = protocol_class(Settings(body_timeout_s=BODY_TIMEOUT_S))
    protocol = cls(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
    transport = _Recording()
    protocol.connection_made(transport)
    return protocol, transport


async def test_only_a_request_with_a_body_has_a_body_deadline_until_its_last_byte() -> None:
    protocol, _ = await _connection(_app)
    protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n")
    assert protocol._h.timer is None, "a GET is not timed once its headers are in"
    await asyncio.sleep(0)

    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: kiln\r\nContent-Length: 4\r\n\r\nab")
    assert protocol._h.timer is not None, "a body arriving is timed"
    protocol.data_received(b"cd")
    assert protocol._h.timer is None, "a whole body is no longer timed"
    protocol.connection_lost(None)


async def test_a_body_waiting_behind_a_response_is_not_timed_out() -> None:
    """A request pipelined behind one whose response is still being written is not read
    (uvicorn pauses reading): its body's slowness is the gateway's, not the client's."""
    release = asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        if scope["method"] == "GET":
            await release.wait()
        else:  # the POST reads its whole body first
            while (await receive()).get("more_body"):
                pass
        await _app(scope, receive, send)

    protocol, transport = await _connection(slow)
    protocol.data_received(
        b"GET /slow HTTP/1.1\r\nHost: kiln\r\n\r\n"
        b"POST /x HTTP/1.1\r\nHost: kiln\r\nContent-Length: 4\r\n\r\nab"
    )
    await asyncio.sleep(BODY_TIMEOUT_S * 4)
    assert not transport.closed and b"408" not in transport.written

    release.set()  # the first response ends; the second request's body is now awaited
    await asyncio.sleep(BODY_TIMEOUT_S * 4)
    assert transport.written.count(b"HTTP/1.1 204") == 1
    assert b"HTTP/1.1 408 " in transport.written and b"body did not arrive" in transport.written
    protocol.connection_lost(None)
