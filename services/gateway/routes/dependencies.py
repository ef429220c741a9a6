"""Request dependencies: the gateway's parts and the authenticated caller."""

from __future__ import annotations

import re
from typing import Any, cast

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from services.gateway.errors import NotFound
from services.gateway.state import Gateway

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # fullmatch: `$` accepts a trailing newline


def gateway(state: State) -> Gateway:
    """The gateway's shared parts."""
    return cast(Gateway, state["gateway"])


def current_user(request: Request[Any, Any, Any], state: State) -> str:
    """The caller named by the request's API key, or 401."""
    return gateway(state).keys.user_for(request.headers.get("authorization"))


def checked_id(value: str, what: str = "generation") -> str:
    """A path id that can be a Kiln id, or 404 (an impossible id is simply not found)."""
    if not _ID.fullmatch(value):
        raise NotFound(f"There is no {what} {value[:80]!r}.")
    return value


GatewayDep = NamedDependency[Gateway]
"""A handler parameter `gw: GatewayDep` receives the gateway's shared parts."""
UserDep = NamedDependency[str]
"""A handler parameter `user: UserDep` receives the caller named by the API key."""
