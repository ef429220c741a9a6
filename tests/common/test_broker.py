"""The broker connection: credentials and TLS from settings, the embedded server on loopback,
and "not now" from the broker waited out for a while."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.errors import NoRespondersError
from nats.js.errors import APIError, ServiceUnavailableError

from services.common.broker import (
    BrokerUnavailable,
    connect,
    ensure_streams,
    says_not_now,
    when_available,
)
from services.common.embedded_nats import EmbeddedNats
from services.common.settings import load_settings
from tests.conftest import make_settings
from tests.support.stack import running_stack


def _server(tmp_path: Path, extra: str) -> EmbeddedNats:
    return EmbeddedNats(tmp_path / "nats", extra_config=extra).start()


def test_the_embedded_server_listens_on_loopback_only(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    assert f'listen: "127.0.0.1:{server.port}"' in server.config_text()


async def test_user_and_password_are_sent_and_required(tmp_path: Path) -> None:
    server = _server(tmp_path, 'authorization { user: "kiln", password: "s3cret-pass" }')
    try:
        good = load_settings(
            {"NATS_URL": server.url, "KILN_NATS_USER": "kiln", "KILN_NATS_PASSWORD": "s3cret-pass"}
        )
        nc = await connect(good, "test")
        await ensure_streams(nc.jetstream())
        await nc.close()
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=2)
    finally:
        server.stop()


async def test_a_token_is_sent(tmp_path: Path) -> None:
    server = _server(tmp_path, 'authorization { token: "broker-token-123" }')
    try:
        settings = load_settings({"NATS_URL": server.url, "KILN_NATS_TOKEN": "broker-token-123"})
        nc = await connect(settings, "test")
        assert nc.is_connected
        await nc.close()
    finally:
        server.stop()


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """A self-signed certificate for 127.0.0.1."""
    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(certs / "key.pem"), "-out", str(certs / "cert.pem"),
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return certs


async def test_the_whole_stack_runs_over_tls_with_credentials(tmp_path: Path, certs: Path) -> None:
    server = _server(
        tmp_path,
        f'tls {{ cert_file: "{certs / "cert.pem"}", key_file: "{certs / "key.pem"}" }}\n'
        'authorization { user: "kiln", password: "tls-pass" }',
    )
    try:
        settings = make_settings(
            tmp_path,
            server.url.replace("nats://", "tls://"),
            KILN_NATS_USER="kiln",
            KILN_NATS_PASSWORD="tls-pass",
            KILN_NATS_TLS_CA=str(certs / "cert.pem"),
        )
        async with running_stack(settings, orchestrator=False) as stack:
            created = await stack.create()
            assert created["status"] == "pending"
            status = await stack.alice.get(f"/generations/{created['generation_id']}")
            assert status.status_code == 200
    finally:
        server.stop()


async def test_a_call_the_broker_says_not_now_to_is_made_again_until_it_answers() -> None:
    answers: list[Exception | str] = [
        nats.errors.TimeoutError(),
        NoRespondersError(),
        ServiceUnavailableError(code=503, err_code=10008, description="temporarily unavailable"),
        # A publish repeated while its first is still being stored, under one Nats-Msg-Id.
        APIError(code=409, err_code=10158, description="duplicate message id is in process"),
        "stored",
    ]

    async def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await when_available(call, what="store it", wait_s=10) == "stored"
    assert answers == []


async def test_a_broker_that_keeps_saying_not_now_is_unavailable_saying_what_failed() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise nats.errors.TimeoutError

    with pytest.raises(BrokerUnavailable, match=r"could not store it: .*Timeout"):
        await when_available(call, what="store it", wait_s=0.5)
    assert calls > 1


@pytest.mark.parametrize(
    "error",
    [ValueError("a bug"), APIError(code=400, err_code=10071, description="wrong last sequence")],
)
async def test_any_other_error_is_not_waited_out(error: Exception) -> None:
    async def call() -> None:
        raise error

    with pytest.raises(type(error)):
        await when_available(call, what="store it", wait_s=10)


@pytest.mark.parametrize(
    ("err_code", "not_now"),
    [
        (10008, True),  # temporarily unavailable: no leader yet
        (10163, True),  # expected last sequence per subject temporarily unavailable
        (None, True),
        (10077, False),  # store failed: a subject or the stream is full
        (10023, False),  # insufficient resources
        (10076, False),  # JetStream not enabled
    ],
)
def test_only_jetstreams_passing_503s_are_waited_out(err_code: int | None, not_now: bool) -> None:
    refusal = ServiceUnavailableError(code=503, err_code=err_code, description="…")
    assert says_not_now(refusal) is not_now
