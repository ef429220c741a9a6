"""The one environment of Kiln's services under test: the same variables whether the
services run in the test's event loop (`make_settings`) or as processes (`Processes`)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.databases import DATABASE_ENV

ALICE_KEY = "alice-key-0123456789"
BOB_KEY = "bob-key-0123456789"


def service_env(tmp_path: Path, nats_url: str, **overrides: str) -> dict[str, str]:
    """The services' variables for one test: its nats-server, its own database (a SQLite
    file, or the PostgreSQL database the `database` fixture made for it) and data folder,
    two users (alice and bob), a fixed token secret, no wait for a verifier; `overrides`
    win."""
    return {
        "NATS_URL": nats_url,
        "KILN_DATABASE_URL": os.environ.get(DATABASE_ENV)
        or f"sqlite+aiosqlite:///{tmp_path / 'kiln.db'}",
        "KILN_DATA_DIR": str(tmp_path / "data"),
        "KILN_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}",
        "KILN_SECRET": "test-secret-not-for-production",
        "KILN_COMMAND_ACK_WAIT": "5",
        # Most tests run no verifier: a version is unverified at once instead of after the
        # production wait for one; the verifier's own tests start one.
        "KILN_VERIFY_PICKUP": "0",
        **overrides,
    }


def process_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of a child process: this one's, without any Kiln or NATS variable
    of the person running the tests, and then `env`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "NATS_"))}
    return {**inherited, **env}
