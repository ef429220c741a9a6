"""API keys: `Authorization: Bearer <key>` names the caller."""

from __future__ import annotations

import hmac

from services.gateway.errors import Unauthorized


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
