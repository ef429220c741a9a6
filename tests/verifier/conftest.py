"""Fixtures of the verifier's tests."""

from __future__ import annotations

import pytest

from tests.verifier.helpers import SECRETS


@pytest.fixture
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The orchestrator's secrets (`SECRETS`) in this process's environment, where an
    in-process verifier could find them: a run must not."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return SECRETS
