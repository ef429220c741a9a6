"""A scripted provider for the browser tests: real events through the real orchestrator,
with the timing in the test's hands.

Each phase writes a file or two of valid Python or Markdown. A test can hold a phase at
its start (`hold`) and release it later, so "mid-generation" is a state the test sets up
rather than a moment it hopes to catch; it can make one phase fail, or be rate limited
once before it answers.
"""

from __future__ import annotations

import asyncio

from contracts.phases import GeneratedFile, PhaseOutput
from services.orchestrator.providers.base import LlmCall, PhaseRequest, ProviderError, Reporter

FILES_BY_PHASE: dict[str, dict[str, str]] = {
    "plan": {"README.md": "# {name}\n\nA small project made by Kiln's scripted provider.\n"},
    "models": {
        "app/__init__.py": '"""The {name} application."""\n',
        "app/models.py": "from dataclasses import dataclass\n\n\n@dataclass\n"
        "class Product:\n    title: str\n    price: float\n",
    },
    "schemas": {
        "app/schemas.py": "from typing import TypedDict\n\n\nclass ProductIn(TypedDict):\n"
        "    title: str\n    price: float\n"
    },
    "api": {
        "app/api.py": "from app.models import Product\n\n\ndef list_products() -> list[Product]:\n"
        "    return []\n"
    },
    "tests": {
        "tests/test_api.py": "from app.api import list_products\n\n\n"
        "def test_empty() -> None:\n    assert list_products() == []\n"
    },
    "docs": {"docs/usage.md": "# Using {name}\n\nRun `python -m app`.\n"},
    "verify": {},
}


class ScriptedProvider:
    """Deterministic phases, each taking `phase_delay_s`, steerable by the test."""

    name = "offline"

    def __init__(
        self,
        *,
        phase_delay_s: float = 0.0,
        fail_in: str | None = None,
        rate_limited_in: str | None = None,
    ) -> None:
        self.phase_delay_s = phase_delay_s
        self.fail_in = fail_in
        self.rate_limited_in = rate_limited_in
        self._gates: dict[str, asyncio.Event] = {}
        self._reached: dict[str, asyncio.Event] = {}

    def hold(self, phase: str) -> None:
        """Hold `phase` at its start until `release(phase)`."""
        self._gates[phase] = asyncio.Event()

    def release(self, phase: str) -> None:
        """Let a held phase go on."""
        self._gates.pop(phase).set()

    async def reached(self, phase: str, timeout: float = 30) -> None:
        """Wait until some generation has started `phase` (and is held there, if held)."""
        async with asyncio.timeout(timeout):
            await self._reached.setdefault(phase, asyncio.Event()).wait()

    async def run_phase(self, request: PhaseRequest, reporter: Reporter) -> PhaseOutput:
        self._reached.setdefault(request.phase, asyncio.Event()).set()
        gate = self._gates.get(request.phase)
        if gate is not None:
            await gate.wait()
        if self.phase_delay_s:
            await reporter.progress(message="thinking")
            await asyncio.sleep(self.phase_delay_s)
        if request.phase == self.fail_in:
            raise ProviderError(
                f"the model refused to write the {request.phase} (scripted failure)"
            )
        if request.phase == self.rate_limited_in and request.attempt == 1:
            self.rate_limited_in = None
            await reporter.retrying(
                reason="rate_limited", delay_s=3, attempt=1, message="429 Too Many Requests"
            )
            await asyncio.sleep(3)
        files = self._files(request)
        await reporter.llm_called(
            LlmCall(
                provider=self.name,
                model="scripted",
                tokens_in=120 + 10 * len(request.files),
                tokens_out=sum(len(f.content) for f in files) // 4,
                latency_ms=int(self.phase_delay_s * 1000),
                attempt=request.attempt,
                outcome="ok",
            )
        )
        return PhaseOutput(files=files, summary=f"{request.phase}: {len(files)} file(s)")

    def _files(self, request: PhaseRequest) -> list[GeneratedFile]:
        if request.kind == "create":
            return [
                GeneratedFile(path, content.format(name=request.project_name))
                for path, content in FILES_BY_PHASE[request.phase].items()
            ]
        # An iteration changes the phase's own files (those not locked) and adds a note.
        files = []
        for path in FILES_BY_PHASE[request.phase]:
            if path in request.files and path not in request.locked_paths:
                change = f"# change: {request.prompt}\n" if path.endswith(".py") else request.prompt
                files.append(GeneratedFile(path, f"{request.files[path]}\n{change}\n"))
        if request.phase == "docs" and "README.md" not in request.locked_paths:
            readme = request.files.get("README.md", "")
            files.append(GeneratedFile("README.md", f"{readme}\n## Change\n\n{request.prompt}\n"))
        if request.phase == "docs":
            files.append(GeneratedFile("CHANGES.md", f"# Changes\n\n- {request.prompt}\n"))
        return files
