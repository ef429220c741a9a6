"""Schemathesis against the gateway's own OpenAPI document, with a real key: a bounded
number of generated requests per operation, no 5xx, responses as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.common.embedded_nats import EmbeddedNats
from tests.support.environment import ALICE_KEY, service_env
from tests.support.processes import Processes


def test_generated_requests_get_no_5xx_and_documented_responses(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    # The rate limit has its own test; here it would only turn fuzzing into 429s.
    env = service_env(tmp_path, nats_server.url, KILN_GENERATIONS_PER_MINUTE="0")
    processes = Processes(tmp_path, env)
    try:
        processes.migrate()
        processes.start("storage")
        _, url = processes.gateway()
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{url}/schema/openapi.json",
                "--header", f"Authorization: Bearer {ALICE_KEY}",
                "--checks", "not_a_server_error,response_schema_conformance",
                "--max-examples", "10",
                "--seed", "20261124",
                "--max-time", "40",
                "--request-timeout", "10",
                "--exclude-path-regex", r".*/stream$",
                "--workers", "1",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,  # schemathesis keeps its state in ./.schemathesis
        )  # fmt: skip
        gateway_log = processes.started[-1].log
    finally:
        processes.stop_all()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout.lower(), result.stdout[-3000:]
    assert "Traceback" not in gateway_log, gateway_log[-4000:]
