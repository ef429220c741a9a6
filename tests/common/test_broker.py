"""The broker connection: credentials and TLS from settings, the embedded server on loopback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nats
import pytest

from services.common.broker import connect, ensure_streams
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
