"""B10 repair rounds (issue 15): generations through the gemini and openai providers against
the local fake model servers of `tests/fakes`, scripted as in the e2e repair tests: the api
phase plants a bug (`app/status.py` uses `HTTPStatus` without importing it) that the
project's own test finds. One model fixes it in its first repair answer; the other changes
the module every round but never fixes it, so the generation ends after
`KILN_REPAIR_ROUNDS` (2, the default) rounds with the test still failing.

All four services run as `kiln gateway | storage | orchestrator | verifier` child
processes (the verifier with the real bubblewrap sandbox and the verify runtime), with
default settings but the fake's address and key.

Measured per generation, from its events: the rounds; the time per repaired version
(`repair.started` of a round → the `verify.completed` of the version it wrote: the repair
call, the guard, the files' events and the whole verification of the new version); and,
beside it in the same generation, the time of the first verification (`verify.started` →
`verify.completed` of round 0), the baseline. The generation's POST → `completed` is put
beside the same generation with repair off (`KILN_REPAIR_ROUNDS=0`), measured in the same
run right after (the orchestrator restarted with the setting, and again before the next
run). Issue 15 sets no number: the goal is that the rounds come out as scripted (1 round
and `passed`; 2 rounds and `failed`), and the figures are recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from nats.js.errors import KeyNotFoundError

from bench.env import Stack
from bench.report import Measurements, Row, times
from bench.scenarios import Context
from bench.scenarios.b6_end_to_end import Users
from contracts import streams
from contracts.events import (
    LlmCalled,
    RepairCompleted,
    RepairStarted,
    VerifyCompleted,
    VerifyStarted,
)
from examples.schemas import schema_with
from services.common.eventlog import read_generation
from tests.fakes import FakeLLMServer, Reply
from tests.fakes.gemini_server import FakeGemini
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.planted import fixes_it, never_fixes_it, planted

TITLE = "B10 repair rounds"
ROUNDS = 2
"""KILN_REPAIR_ROUNDS the services run with (the default)."""


@dataclass(frozen=True)
class Model:
    """A scripted fake model: its repair answers, and the rounds and verdict they lead to."""

    label: str
    repairs: tuple[Reply, ...]
    rounds: int
    verdict: str


MODELS = (
    Model("fixed in round 1", fixes_it(), 1, "passed"),
    Model(f"never fixed ({ROUNDS} rounds)", never_fixes_it(), ROUNDS, "failed"),
)


@dataclass
class Repaired:
    """One generation's figures, from its events (seconds)."""

    total_s: float
    """POST → `completed` in the read model."""
    rounds: int = 0
    verdict: str = ""
    verify_s: float = 0.0
    """The first verification: `verify.started` → `verify.completed` of round 0."""
    sandbox_s: list[float] = field(default_factory=list)
    """The verifier's own duration of each verification (round 0 first)."""
    round_s: list[float] = field(default_factory=list)
    """Each repair round: `repair.started` → `verify.completed` of the version it wrote."""
    llm_s: list[float] = field(default_factory=list)
    """The repair calls' latency."""

    @property
    def per_round_s(self) -> float:
        return statistics.mean(self.round_s) if self.round_s else float("nan")


def figures(events: list[Any], total_s: float) -> Repaired:
    """A generation's rounds and timings from its decoded events, in order."""
    out = Repaired(total_s=total_s)
    verify_started: dict[int, float] = {}
    repair_started: dict[int, float] = {}
    for event in events:
        at = event.at.timestamp()
        if isinstance(event, VerifyStarted):
            verify_started[event.round] = at
        elif isinstance(event, VerifyCompleted):
            out.verdict = event.verdict
            out.sandbox_s.append(event.duration_ms / 1000)
            if event.round == 0:
                out.verify_s = at - verify_started.get(0, at)
            elif event.round in repair_started:
                out.round_s.append(at - repair_started[event.round])
        elif isinstance(event, RepairStarted):
            repair_started[event.round] = at
        elif isinstance(event, RepairCompleted):
            out.rounds = max(out.rounds, event.round)
        elif isinstance(event, LlmCalled) and event.phase == "repair":
            out.llm_s.append(event.latency_ms / 1000)
    return out


async def generate(
    stack: Stack, client: httpx.AsyncClient, users: Users, fake: FakeLLMServer, model: Model
) -> Repaired:
    """One generation of the planted-bug project with `model`'s repair answers."""
    planted(fake, *model.repairs)
    key = users.take()
    headers = {"Authorization": f"Bearer {key}"}
    body = {
        "project_name": "bench-repair",
        "schema": schema_with(1),
        "prompt": "a benchmark of repair rounds",
        "provider": fake.provider,
    }
    started = time.monotonic()
    response = await client.post("/generations", json=body, headers=headers)
    if response.status_code != 201:
        raise RuntimeError(f"POST /generations: {response.status_code} {response.text}")
    generation_id = response.json()["generation_id"]
    deadline = started + 300
    while True:
        status = (await client.get(f"/generations/{generation_id}", headers=headers)).json()
        if status.get("status") in ("completed", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{generation_id} not finished within 300 s: {status}")
        await asyncio.sleep(0.02)
    total = time.monotonic() - started
    if status["status"] != "completed":
        raise RuntimeError(f"{generation_id} ended {status['status']}: {status.get('error')}")
    events = [stored.event for stored in await read_generation(stack.js, generation_id)]
    return figures(events, total)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def row(title: str, model: Model, runs: list[Repaired], off: list[Repaired]) -> Row:
    """The row of one model: time per repaired version beside the first verification."""
    per_version = Measurements()
    for one in runs:
        per_version.add(one.per_round_s, one.verify_s)
    end_to_end = Measurements()
    for one, plain in zip(runs, off, strict=False):
        end_to_end.add(one.total_s, plain.total_s)
    rounds = sorted({one.rounds for one in runs})
    verdicts = sorted({one.verdict for one in runs})
    met = rounds == [model.rounds] and verdicts == [model.verdict]
    every_round = [s for one in runs for s in one.round_s]
    llm = _median([s for one in runs for s in one.llm_s])
    sandbox = _median([s for one in runs for s in one.sandbox_s[1:]])
    rest = _median(every_round) - llm - sandbox
    return Row(
        f"{title}: {model.label}",
        f"{'/'.join(map(str, rounds))} round{'s' if rounds != [1] else ''}, "
        f"{per_version.kiln_median:.2f} s per repaired version "
        f"(POST → completed {end_to_end.kiln_median:.2f} s)",
        f"{per_version.baseline_median:.2f} s one verification "
        f"(repair off: {end_to_end.baseline_median:.2f} s)",
        f"{times(per_version.ratio)} (end to end {times(end_to_end.ratio)})",
        f"recorded (issue 15 sets no number); {model.rounds} round"
        f"{'s' if model.rounds != 1 else ''}, {model.verdict}",
        met,
        [
            f"verdicts {', '.join(verdicts)}; per repaired version / first verification, "
            f"runs: {per_version.spread('{:.2f}')} s; POST → completed with repair / repair "
            f"off, runs: {end_to_end.spread('{:.2f}')} s",
            f"a round (median {_median(every_round):.2f} s) is the repair call "
            f"{llm * 1000:.0f} ms (the fake answers at once), the verifier's sandboxed "
            f"checks {sandbox:.2f} s (compile, ruff check, ruff format, pytest), and "
            f"{rest:.2f} s of the rest (events, the verify command's queue and pickup)",
        ],
    )


async def repair_rounds(stack: Stack, provider: str, rounds: int) -> None:
    """Restart the orchestrator with `KILN_REPAIR_ROUNDS=rounds`; return once it advertises
    `provider` again, which it does just before it pulls its first command."""
    adverts = await stack.js.key_value(streams.PROVIDERS_BUCKET)
    await stack.stop_service("orchestrator")
    try:
        before = (await adverts.get(provider)).revision or 0
    except KeyNotFoundError:
        before = 0
    stack.settings["KILN_REPAIR_ROUNDS"] = str(rounds)
    stack.start_service("orchestrator")
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(KeyNotFoundError):
            if ((await adverts.get(provider)).revision or 0) > before:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the orchestrator did not advertise {provider} within 60 s")
        await asyncio.sleep(0.05)


async def measure(ctx: Context, fake: FakeLLMServer) -> list[Row]:
    """Each run: every model with repair on, then the same generation with repair off (the
    orchestrator restarted in between, so both sides of a run see the same machine)."""
    title = f"{TITLE} ({fake.provider})"
    users = Users()
    measured: dict[str, list[Repaired]] = {m.label: [] for m in MODELS}
    off: list[Repaired] = []
    settings = {**fake.env(), "KILN_LLM_RETRY_DELAY": "0.01", "KILN_REPAIR_ROUNDS": str(ROUNDS)}
    async with (
        Stack(
            ctx.dir(f"b10-{fake.provider}"),
            gateway=True,
            storage=True,
            orchestrator=True,
            verifier=True,
            profile=ctx.profile,
            settings=settings,
        ) as stack,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.port}", timeout=60) as client,
    ):
        if not ctx.toy:
            await generate(stack, client, users, fake, MODELS[0])  # warm-up
        for run in range(ctx.runs):
            if run:
                await repair_rounds(stack, fake.provider, ROUNDS)
            for model in MODELS:
                one = await generate(stack, client, users, fake, model)
                measured[model.label].append(one)
                ctx.log(
                    f"{title}: {model.label}: {one.rounds} rounds, {one.verdict}, "
                    f"{one.per_round_s:.2f} s per round, first verification "
                    f"{one.verify_s:.2f} s, POST → completed {one.total_s:.2f} s"
                )
            await repair_rounds(stack, fake.provider, 0)
            one = await generate(stack, client, users, fake, MODELS[0])
            if one.rounds != 0 or one.verdict != "failed":
                raise RuntimeError(f"repair off still repaired: {one}")
            off.append(one)
            ctx.log(f"{title}: repair off: POST → completed {one.total_s:.2f} s")
    return [row(title, model, measured[model.label], off) for model in MODELS]


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for server in (FakeGemini,) if ctx.toy else (FakeGemini, FakeOpenAI):
        with server() as fake:
            rows += await measure(ctx, fake)
    return rows
