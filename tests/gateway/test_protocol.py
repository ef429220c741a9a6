"""Kiln's HTTP protocol costs an idle SSE connection no more than uvicorn's own (B3)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from services.common.settings import Settings
from services.gateway.protocol import protocol_class


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
