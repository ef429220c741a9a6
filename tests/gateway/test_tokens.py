"""SSE tokens: signed, scoped to one generation, expiring."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.embedded_nats import EmbeddedNats
from services.gateway.tokens import TokenInvalid, TokenSigner
from tests.conftest import ALICE_KEY, make_settings
from tests.support.stack import SCHEMA_ONE, running_stack

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


def test_a_token_is_good_only_while_its_owner_is_a_user() -> None:
    token, _ = signer.issue("gen-1", "bob", now=1000)
    assert TokenSigner(b"secret", 900, users={"alice", "bob"}).verify(token, "gen-1", 1000) == "bob"
    with pytest.raises(TokenInvalid, match="no longer a user"):
        TokenSigner(b"secret", 900, users={"alice"}).verify(token, "gen-1", now=1000)


async def test_after_a_restart_without_bobs_key_his_earlier_token_replays_nothing(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    both = make_settings(tmp_path, nats_server.url)
    async with running_stack(both) as stack:
        bobs = (await stack.bob.post("/generations", json=_body())).json()
        alices = await stack.create()
        await stack.wait_status(alices["generation_id"])
        assert len(await stack.events(bobs["stream_url"])) > 3  # the token works today

    alice_only = make_settings(tmp_path, nats_server.url, KILN_API_KEYS=f"alice:{ALICE_KEY}")
    async with running_stack(alice_only) as stack:
        refused = await stack.anonymous.get(bobs["stream_url"])
        assert refused.status_code == 401, refused.text[:300]
        assert "no longer a user" in refused.json()["detail"]
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert len(await stack.events(alices["stream_url"])) > 3  # alice's still replays


def _body() -> dict[str, object]:
    return {"project_name": "bobs", "schema": SCHEMA_ONE, "prompt": "bob's shop"}
