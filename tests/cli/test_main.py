"""The `kiln` command as an operator meets it first: its version, its settings errors, and
what an offline-only install needs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from contracts import __version__
from contracts.asyncapi import document
from services.common.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_kiln_version_is_the_package_version_everywhere() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert printed == f"kiln {declared}" == f"kiln {__version__}"
    assert document()["info"]["version"] == declared


def test_the_openapi_document_carries_the_same_version() -> None:
    from services.common.settings import Settings
    from services.gateway.app import create_app

    app = create_app(Settings(api_keys="alice:0123456789abcdef", secret="s"))
    assert app.openapi_schema.info.version == __version__


@pytest.mark.parametrize(
    ("env", "value"), [("KILN_PORT", "eighty"), ("KILN_OFFLINE_PHASE_DELAY", "soon")]
)
def test_an_invalid_setting_names_its_variable_and_value(env: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({env: value})
    assert f"{env}={value!r}" in str(caught.value)


def test_the_packages_say_they_are_typed() -> None:
    assert (ROOT / "contracts" / "py.typed").is_file()
    assert (ROOT / "services" / "py.typed").is_file()


def test_an_offline_only_install_needs_neither_gemini_nor_postgres_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "google-genai" not in core and "asyncpg" not in core
    assert project["optional-dependencies"]["gemini"] == ["google-genai"]
    assert project["optional-dependencies"]["postgres"] == ["asyncpg"]
    # The offline path never imports them.
    code = (
        "import sys, services.cli.main, services.orchestrator.service, services.storage.service\n"
        "from services.common.settings import Settings\n"
        "from services.orchestrator.providers.registry import Providers\n"
        "Providers(Settings()).get('offline')\n"
        "assert 'google.genai' not in sys.modules, 'gemini imported'\n"
        "assert 'asyncpg' not in sys.modules, 'asyncpg imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
