"""Where bubblewrap cannot run, the verifier refuses: the version is `unverified` with the
reason and nothing of it runs. Only the setting that says DEV_ONLY in its name runs a
version without the sandbox. Real processes throughout: a bubblewrap path that does not
exist, a `bwrap` that fails as it does where namespaces are not allowed, a real
nats-server and, for a whole generation, the real stack."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client

from services.common.embedded_nats import EmbeddedNats
from services.common.settings import Settings
from services.verifier.runtime import load_runtime
from services.verifier.sandbox import Sandbox, SandboxUnavailable
from tests.conftest import make_settings
from tests.support.stack import running_stack
from tests.verifier.helpers import (
    LIMITS,
    ScriptedProvider,
    generate,
    project,
    verify_once,
    write_generation,
)

pytestmark = pytest.mark.timeout(180)

NOT_INSTALLED = "unverified: bubblewrap (bwrap) is not installed"


def marking(marker: Path) -> dict[str, str]:
    """A project whose one test leaves `marker` on the host: proof that it ran outside a
    sandbox (inside one, nothing of the host but the runtime is even visible)."""
    return project(f"""
        import os

        def test_mark():
            with open({str(marker)!r}, "w") as fh:
                fh.write("ran")
            assert "NATS_URL" not in os.environ and "KILN_SECRET" not in os.environ
    """)


def no_bwrap(tmp_path: Path, nats_url: str, **env: str) -> Settings:
    """Settings whose bubblewrap does not exist, and a short deadline for the verifier."""
    return make_settings(
        tmp_path,
        nats_url,
        KILN_VERIFY_BWRAP=str(tmp_path / "nowhere" / "bwrap"),
        KILN_VERIFY_PICKUP="30",
        KILN_VERIFY_TIMEOUT="60",
        **env,
    )


async def test_without_bubblewrap_the_version_is_unverified_with_the_reason_and_not_run(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    settings = no_bwrap(tmp_path, nats_server.url)
    provider = ScriptedProvider({"unsandboxable": marking(marker)})
    async with running_stack(settings, providers={"offline": provider}, verifier=True) as stack:
        g = await generate(stack, nc, "unsandboxable")

    assert [t for t, _ in g.verify] == ["verify.started", "verify.unavailable"], g.verify
    reason = g.verify[1][1]["reason"]
    assert reason.startswith(NOT_INSTALLED), reason
    assert "KILN_VERIFY_UNSANDBOXED_DEV_ONLY" in reason  # it says what to do
    assert g.events[-1] == "generation.completed"
    assert g.status["verification"]["status"] == "unverified"
    assert g.status["verification"]["reason"] == reason
    assert g.result.outcome == "unavailable" and g.result.reason == reason
    assert g.result.exit_code is None and g.result.output_tail == ""
    assert (g.result.passed, g.result.failed, g.result.errors) == (0, 0, 0)
    assert not marker.exists(), "nothing of the version ran"


async def test_a_bubblewrap_that_cannot_run_is_refused_with_its_own_error(
    tmp_path: Path,
) -> None:
    # What bubblewrap says in a container that may not create namespaces.
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    sandbox = Sandbox(load_runtime(), LIMITS, bwrap=str(fake))

    with pytest.raises(SandboxUnavailable) as refused:
        await sandbox.probe()

    assert str(refused.value) == (
        "bubblewrap cannot run here (exit 1): bwrap: No permissions to create new namespace"
    )


async def test_without_the_dev_only_setting_nothing_runs_unsandboxed(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    settings = no_bwrap(tmp_path, nats_server.url)
    assert settings.verify_unsandboxed_dev_only is False  # the default

    js = nc.jetstream()
    service, result = await verify_once(settings, js, *await write_generation(js, marking(marker)))

    assert result.outcome == "unavailable" and result.reason.startswith(NOT_INSTALLED)
    assert service.unavailable == result.reason
    assert service.sandbox is not None and not service.sandbox.unsandboxed
    assert not marker.exists()


async def test_the_dev_only_setting_runs_the_version_without_bubblewrap(
    nats_server: EmbeddedNats,
    nc: Client,
    tmp_path: Path,
    secrets_in_env: dict[str, str],
) -> None:
    marker = tmp_path / "ran"
    settings = no_bwrap(tmp_path, nats_server.url, KILN_VERIFY_UNSANDBOXED_DEV_ONLY="true")

    js = nc.jetstream()
    service, result = await verify_once(settings, js, *await write_generation(js, marking(marker)))

    assert result.outcome == "completed", result.reason
    # It ran on the host (the marker is there), still with an empty environment.
    assert (result.passed, result.failed) == (1, 0), result.failures
    assert marker.read_text() == "ran"
    assert service.unavailable is None
    assert service.sandbox is not None and service.sandbox.unsandboxed
