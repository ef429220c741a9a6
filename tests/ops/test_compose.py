"""compose.yaml and the Dockerfile, checked against the code (no Docker engine runs here).

Every Kiln service's command is a real `kiln` command, every environment name it sets is
a real setting, its ports are the ones its settings say, and it has a health check; the
image is multi-stage, runs as a non-root user, and its entry point is the `kiln` script.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli.main import _parser
from services.common.settings import Settings, load_settings, setting_fields

ROOT = Path(__file__).resolve().parents[2]
KILN_SERVICES = {"migrate", "storage", "orchestrator", "verifier", "gateway"}
LONG_RUNNING = KILN_SERVICES - {"migrate"}
_DEFAULTED = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


def interpolate(value: str) -> str:
    """`${NAME:-default}` → default, as compose does with NAME unset."""
    return _DEFAULTED.sub(lambda m: m.group(2) or "", value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def container_ports(service: dict[str, Any]) -> set[int]:
    ports = {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}
    return ports | {int(p) for p in service.get("expose", [])}


def kiln_commands() -> set[str]:
    parser = _parser()
    [subparsers] = [a for a in parser._actions if a.dest == "command"]
    return set(subparsers.choices)  # type: ignore[arg-type]


def settings_of(service: dict[str, Any]) -> Settings:
    return load_settings(environment(service))


def test_every_kiln_service_runs_a_real_kiln_command(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= KILN_SERVICES
    commands = kiln_commands()
    for name in KILN_SERVICES:
        service = services[name]
        assert service["build"] == ".", name
        command = service["command"]
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        assert argv[0] in commands, f"{name}: `kiln {argv[0]}` is not a kiln command"
        assert argv == [name], f"{name} runs `kiln {' '.join(argv)}`"


def test_every_environment_name_is_a_real_setting(compose: dict[str, Any]) -> None:
    known = {info.env for info in setting_fields()}
    for name in KILN_SERVICES:
        env = environment(compose["services"][name])
        assert env, name
        unknown = set(env) - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which are not settings"
        settings_of(compose["services"][name])  # every value converts


def test_the_services_reach_nats_and_postgres_by_their_compose_names(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in KILN_SERVICES:
        settings = settings_of(services[name])
        assert settings.nats_servers == ["nats://nats:4222"], name
        url = settings.effective_database_url
        assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url, name
        assert "nats" in services[name]["depends_on"] or name == "migrate"
        assert "postgres" in services[name]["depends_on"]
    nats_command = " ".join(services["nats"]["command"])
    assert "--jetstream" in nats_command
    assert any(v.endswith(":/data") for v in services["nats"]["volumes"])
    assert "--store_dir /data" in nats_command
    assert any("/var/lib/postgresql/data" in v for v in services["postgres"]["volumes"])
    assert {"nats-data", "postgres-data"} <= set(compose["volumes"])


def test_the_services_wait_for_the_migration(compose: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        depends = compose["services"][name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["nats"]["condition"] == "service_healthy", name
        assert depends["postgres"]["condition"] == "service_healthy", name


def test_ports_match_the_settings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gateway = settings_of(services["gateway"])
    assert gateway.host == "0.0.0.0"
    assert container_ports(services["gateway"]) == {gateway.port}
    published = [str(p) for p in services["gateway"]["ports"]]
    assert published == [f"127.0.0.1:{gateway.port}:{gateway.port}"]
    for name in ("storage", "orchestrator", "verifier"):
        settings = settings_of(services[name])
        assert settings.health_port, f"{name} has no health server"
        assert settings.health_host == "0.0.0.0", name
        assert container_ports(services[name]) == {settings.health_port}, name


def test_every_service_has_a_health_check_on_its_own_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("nats", "postgres"):
        assert services[name]["healthcheck"]["test"], name
    for name in LONG_RUNNING:
        settings = settings_of(services[name])
        port = settings.port if name == "gateway" else settings.health_port
        test = " ".join(services[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in test, name
    nats_check = " ".join(services["nats"]["healthcheck"]["test"])
    assert "8222" in nats_check and "8222" in " ".join(services["nats"]["command"])


def test_gateways_share_the_api_keys_and_the_token_secret(compose: dict[str, Any]) -> None:
    settings = settings_of(compose["services"]["gateway"])
    assert settings.api_keys and settings.secret


def _stages(dockerfile: str) -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split into stages."""
    text = re.sub(r"\\\n", " ", dockerfile)
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def _base_defaults(dockerfile: str) -> dict[str, str]:
    """The defaults of the ARGs before the first FROM (`ARG NAME=value`)."""
    defaults = {}
    for line in dockerfile.splitlines():
        if line.upper().startswith("FROM "):
            break
        if match := re.fullmatch(r"ARG (\w+)=(\S+)", line.strip()):
            defaults[match.group(1)] = match.group(2)
    return defaults


def test_the_image_is_multi_stage_slim_and_not_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "multi-stage"
    final = stages[-1]
    base = re.sub(r"\$\{(\w+)\}", lambda m: _base_defaults(dockerfile)[m.group(1)], final[0])
    assert "slim" in base or "alpine" in base, base
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage sets a USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert any(line.startswith("COPY --from=") for line in final), "copies from the build stage"
    assert not any(line.upper().startswith("RUN pip") for line in final)


def test_the_image_installs_every_extra() -> None:
    """The README says the image has the Gemini provider and PostgreSQL's driver."""
    [build] = [
        stage for stage in _stages((ROOT / "Dockerfile").read_text()) if " AS build" in stage[0]
    ]
    [install] = [line for line in build if "/opt/kiln/bin/pip install" in line]
    extras = re.search(r"\.\[([\w,]+)\]", install)
    assert extras, install
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = set(pyproject["project"]["optional-dependencies"]) - {"dev"}
    assert set(extras.group(1).split(",")) == wanted


def test_the_entrypoint_is_the_kiln_script() -> None:
    final = _stages((ROOT / "Dockerfile").read_text())[-1]
    [entrypoint] = [line for line in final if line.upper().startswith("ENTRYPOINT")]
    [cmd] = [line for line in final if line.upper().startswith("CMD")]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["kiln"] == "services.cli.main:main"
    assert yaml.safe_load(entrypoint.split(None, 1)[1]) == ["kiln"]
    assert yaml.safe_load(cmd.split(None, 1)[1])[0] in kiln_commands()


def test_the_build_context_has_what_the_image_copies() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for stage in _stages((ROOT / "Dockerfile").read_text()):
        for line in stage:
            if not line.startswith("COPY ") or "--from=" in line:
                continue
            sources = line.split()[1:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert source not in ignored, f"COPY {source}: excluded by .dockerignore"
    assert {".venv", ".git", ".kiln", "tests"} <= ignored
