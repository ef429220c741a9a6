"""SSE tokens: a browser's EventSource cannot send headers, so the stream URL carries one.

A token is `<payload>.<signature>`, both base64url: the payload names one generation, its
owner and an expiry; the signature is HMAC-SHA256 over the payload with the secret every
gateway replica shares. Verification compares in constant time, and a token is good only
while its owner is still a user of the gateway: removing a key (and restarting) ends the
streams its tokens opened, not 15 minutes later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Collection

import msgspec


class TokenInvalid(Exception):
    """A token that is missing, malformed, tampered with, expired or for another generation."""


class _Claims(msgspec.Struct, frozen=True):
    g: str
    o: str
    e: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and verifies SSE tokens."""

    def __init__(self, secret: bytes, ttl_s: float, users: Collection[str] | None = None) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self._users = frozenset(users) if users is not None else None

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()

    def issue(self, generation_id: str, owner: str, now: float | None = None) -> tuple[str, int]:
        """A fresh token and its expiry (unix seconds)."""
        expires = int((now if now is not None else time.time()) + self.ttl_s)
        payload = msgspec.json.encode(_Claims(generation_id, owner, expires))
        return f"{_b64(payload)}.{_b64(self._sign(payload))}", expires

    def verify(self, token: str | None, generation_id: str, now: float | None = None) -> str:
        """The owner the token names, or TokenInvalid saying why."""
        if not token:
            raise TokenInvalid("no token: add ?token=… from POST /generations/{id}/stream-token")
        try:
            payload_text, signature_text = token.split(".", 1)
            payload, signature = _unb64(payload_text), _unb64(signature_text)
        except (ValueError, TypeError):
            raise TokenInvalid("the token is malformed") from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise TokenInvalid("the token's signature does not match")
        try:
            claims = msgspec.json.decode(payload, type=_Claims)
        except msgspec.MsgspecError:
            raise TokenInvalid("the token is malformed") from None
        if claims.e < (now if now is not None else time.time()):
            raise TokenInvalid(
                "the token has expired: get a fresh one from POST /generations/{id}/stream-token"
            )
        if not hmac.compare_digest(claims.g.encode(), generation_id.encode()):
            raise TokenInvalid("the token is for another generation")
        if self._users is not None and claims.o not in self._users:
            raise TokenInvalid("the token's owner is no longer a user of this gateway")
        return claims.o
