"""Who the caller is: `Authorization: Bearer <key>` names a user; a stream also takes an SSE
token (services/gateway/tokens.py)."""

from __future__ import annotations

import hmac
from typing import NamedTuple

from services.common.logs import get_logger
from services.gateway.errors import Unauthorized
from services.gateway.tokens import TokenInvalid, TokenSigner

log = get_logger(__name__)


class ApiKeys:
    """The keys the gateway accepts, and who each belongs to."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._by_key = {key.encode(): user for user, key in keys.items()}

    @property
    def users(self) -> frozenset[str]:
        """Every user who has a key now."""
        return frozenset(self._by_key.values())

    def user_for(self, authorization: str | None) -> str:
        """The user of a Bearer key, or Unauthorized."""
        if not authorization:
            raise Unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("The Authorization header must be `Bearer <key>`.")
        candidate = key.strip().encode()
        user = None
        # Compare against every key, in constant time each, so timing tells nothing.
        for known, owner in self._by_key.items():
            if hmac.compare_digest(candidate, known):
                user = owner
        if user is None:
            raise Unauthorized("The API key is not valid.")
        return user


class StreamCaller(NamedTuple):
    """Who opens an SSE stream, and how: an SSE token names a generation the holder may
    watch; an API key names a user whose ownership of the generation is still to check."""

    owner: str
    by_key: bool


def stream_caller(
    keys: ApiKeys,
    tokens: TokenSigner,
    generation_id: str,
    *,
    token: str | None,
    authorization: str | None,
) -> StreamCaller:
    """The caller of `/stream`: `?token=` when given, else a Bearer key, or Unauthorized."""
    if token is None and authorization:
        return StreamCaller(keys.user_for(authorization), by_key=True)
    try:
        owner = tokens.verify(token, generation_id)
    except TokenInvalid as exc:
        log.info(
            "SSE token rejected for generation {generation_id}: {reason}",
            generation_id=generation_id,
            reason=str(exc),
        )
        raise Unauthorized(str(exc)) from None
    # At DEBUG: a token is only ever issued to the generation's owner, and the access log's
    # line for the GET already tells of the stream; a rejection stays at INFO (#19 (e)).
    log.debug(
        "SSE token validated for generation {generation_id}",
        generation_id=generation_id,
        owner=owner,
    )
    return StreamCaller(owner, by_key=False)
