"""Request dependencies: the gateway's parts and the authenticated caller."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

from litestar import Controller, Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import SerializationException
from litestar.handlers import BaseRouteHandler
from litestar.openapi.spec import Operation

from services.gateway.errors import BadRequest, MalformedJson
from services.gateway.state import Gateway

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # fullmatch: `$` accepts a trailing newline


def gateway(state: State) -> Gateway:
    """The gateway's shared parts."""
    return cast(Gateway, state["gateway"])


def current_user(request: Request[Any, Any, Any], state: State) -> str:
    """The caller named by the request's API key, or 401."""
    return gateway(state).keys.user_for(request.headers.get("authorization"))


TOKEN_AUTH = "token_auth"
"""A route handler's `opt` key: the route checks an SSE token or a key itself."""


async def require_key(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """A guard: the API key is checked before a byte of the body is read (a stranger gets a
    401 whatever they send), then a JSON body is decoded, once, for the handler: bytes that
    are not UTF-8 and nesting past the decoder's depth are a 400, not a server error."""
    if handler.opt.get(TOKEN_AUTH):
        return
    gateway(connection.app.state).keys.user_for(connection.headers.get("authorization"))
    if not isinstance(connection, Request) or connection.method in ("GET", "HEAD"):
        return
    try:
        await connection.json()  # cached on the connection: the handler's body is this one
    except SerializationException as exc:
        raise MalformedJson(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise MalformedJson(f"a string is not valid UTF-8 at byte {exc.start}") from None
    except RecursionError:
        raise MalformedJson("nested deeper than any Kiln request needs") from None


@dataclass
class NoKeyOperation(Operation):
    """The OpenAPI operation of a route that needs no API key: `security: []` overrides the
    document's default (Litestar adds security requirements up the layers, never removes)."""

    def __post_init__(self) -> None:
        self.security = []


def checked_id(value: str, what: str = "generation", where: str = "path") -> str:
    """An id that can be a Kiln id, or 400 naming it (a malformed id is the caller's mistake,
    and being nobody's, answering it reveals nothing of another tenant's)."""
    if not _ID.fullmatch(value):
        message = f"{value[:80]!r} is not a {what} id: an id is 1 to 64 letters, digits, - or _."
        raise BadRequest(
            f"{message} Use the id Kiln gave you.",
            problems=[{"location": where, "message": message}],
        )
    return value


GatewayDep = NamedDependency[Gateway]
"""A handler parameter `gw: GatewayDep` receives the gateway's shared parts."""
UserDep = NamedDependency[str]
"""A handler parameter `user: UserDep` receives the caller named by the API key."""


class KeyedController(Controller):
    """A controller of the caller's own resources: every route needs the API key
    (`require_key`), and a handler may take `gw: GatewayDep` and `user: UserDep`."""

    guards = [require_key]
    dependencies = {
        "gw": Provide(gateway, sync_to_thread=False),
        "user": Provide(current_user, sync_to_thread=False),
    }
