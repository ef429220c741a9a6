"""A minimal HTTP server for the services that have no API: /healthz, /readyz, /metrics.

The orchestrator and storage start one on `KILN_HEALTH_PORT` (when set), so compose and
an operator can probe them like the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable

from services.common.logs import get_logger
from services.common.metrics import exposition

log = get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[dict[str, str]]]


class HealthServer:
    """Serves /healthz (alive), /readyz (the checks all say "ok") and /metrics."""

    def __init__(self, host: str, port: int, readiness: ReadinessCheck) -> None:
        self.host = host
        self.port = port
        self.readiness = readiness
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        log.info("Health endpoints on http://{host}:{port}", host=self.host, port=self.port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            status, body, content_type = await self._answer(path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # a probe that hung up or never finished its request
        except Exception:
            log.exception("Health endpoint failed to answer a request")
        finally:
            writer.close()

    async def _answer(self, path: str) -> tuple[str, bytes, str]:
        if path == "/healthz":
            return "200 OK", b'{"status": "ok"}', "application/json"
        if path == "/readyz":
            try:
                checks = await asyncio.wait_for(self.readiness(), 3)
            except Exception as exc:
                checks = {"readiness": f"failed: {type(exc).__name__}"}
            ready = all(v == "ok" for v in checks.values())
            body = json.dumps(
                {"status": "ok" if ready else "unavailable", "checks": checks}
            ).encode()
            return ("200 OK" if ready else "503 Service Unavailable"), body, "application/json"
        if path == "/metrics":
            data, content_type = exposition()
            return "200 OK", data, content_type
        return "404 Not Found", b'{"detail": "not found"}', "application/json"
