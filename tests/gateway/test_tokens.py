"""SSE tokens: signed, scoped to one generation, expiring."""

from __future__ import annotations

import pytest

from services.gateway.tokens import TokenInvalid, TokenSigner

signer = TokenSigner(b"secret", ttl_s=900)


def test_a_token_names_its_owner() -> None:
    token, expires = signer.issue("gen-1", "alice", now=1000)
    assert expires == 1900
    assert signer.verify(token, "gen-1", now=1500) == "alice"


@pytest.mark.parametrize(
    ("token", "generation", "now", "reason"),
    [
        (None, "gen-1", 1000, "no token"),
        ("garbage", "gen-1", 1000, "malformed"),
        (signer.issue("gen-1", "alice", now=1000)[0] + "x", "gen-1", 1000, "signature"),
        (signer.issue("gen-1", "alice", now=1000)[0], "gen-2", 1000, "another generation"),
        (signer.issue("gen-1", "alice", now=1000)[0], "gen-1", 2000, "expired"),
        (
            TokenSigner(b"other", 900).issue("gen-1", "alice", now=1000)[0],
            "gen-1",
            1000,
            "signature",
        ),
    ],
)
def test_bad_tokens_are_refused_with_the_reason(
    token: str | None, generation: str, now: float, reason: str
) -> None:
    with pytest.raises(TokenInvalid, match=reason):
        signer.verify(token, generation, now=now)


def test_a_tampered_payload_is_refused() -> None:
    token, _ = signer.issue("gen-1", "alice", now=1000)
    payload, signature = token.split(".")
    forged = TokenSigner(b"secret", 900).issue("gen-1", "mallory", now=1000)[0].split(".")[0]
    with pytest.raises(TokenInvalid, match="signature"):
        signer.verify(f"{forged}.{signature}", "gen-1", now=1000)
    assert payload != forged
