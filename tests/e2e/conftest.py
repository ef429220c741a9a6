"""Every e2e test that runs Kiln's services runs once per database (tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _each_database(database: str) -> str:
    return database
