"""The LLM providers through their real clients against local fake servers.

The scripted cases run against both fakes: the gemini provider through the real
google-genai SDK, and the openai provider (OpenAI-compatible endpoints) through httpx.
What is particular to Gemini is at the end; to OpenAI-compatible endpoints, in
test_openai.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from google import genai
from google.genai import types

from services.common.settings import load_settings
from services.orchestrator.guard import check_output
from services.orchestrator.providers.base import PhaseRequest, Provider, ProviderError
from services.orchestrator.providers.gemini import GeminiProvider, daily_quota, retry_delay
from services.orchestrator.providers.openai import OpenAIProvider
from services.orchestrator.providers.prompts import (
    phase_prompt,
)
from tests.fakes import (
    HOSTILE_PATHS,
    MODEL_FILES,
    DailyQuota,
    FakeLLMServer,
    RateLimited,
    RecordingReporter,
    Rejected,
    Reply,
    ServerFailure,
    Truncated,
    hostile,
    huge,
    malformed,
    phase_request,
    wrong_shape,
)
from tests.fakes.gemini_server import FakeGemini
from tests.fakes.openai_server import FakeOpenAI

FAST = {"KILN_LLM_RETRY_DELAY": "0.01", "KILN_LLM_MAX_RETRIES": "3"}


@pytest.fixture(params=["gemini", "openai"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeLLMServer]:
    """A started fake of each API."""
    server = FakeGemini() if request.param == "gemini" else FakeOpenAI()
    with server:
        yield server


def make_provider(fake: FakeLLMServer, **env: str) -> Provider:
    """The provider that talks to `fake`, with fast retries."""
    settings = load_settings({**fake.env(), **FAST, **env})
    if fake.provider == "gemini":
        return GeminiProvider(settings)
    return OpenAIProvider(settings)


@pytest.fixture
async def provider(fake: FakeLLMServer) -> AsyncIterator[Provider]:
    """The provider for `fake`, closed after the test."""
    instance = make_provider(fake)
    yield instance
    await instance.aclose()  # type: ignore[attr-defined]


async def run(
    provider: Provider, request: PhaseRequest | None = None
) -> tuple[Any, RecordingReporter]:
    reporter = RecordingReporter()
    output = await provider.run_phase(request or phase_request(), reporter)
    return output, reporter


async def fails(
    provider: Provider, request: PhaseRequest | None = None
) -> tuple[ProviderError, RecordingReporter]:
    reporter = RecordingReporter()
    with pytest.raises(ProviderError) as caught:
        await provider.run_phase(request or phase_request(), reporter)
    return caught.value, reporter


async def test_a_phase_streams_decodes_and_reports_the_call(
    fake: FakeLLMServer, provider: Provider
) -> None:
    fake.on("models", Reply(chunks=4))

    output, reporter = await run(provider)

    assert sorted(f.path for f in output.files) == MODEL_FILES
    assert output.summary == "The fake wrote the models phase."
    [called] = reporter.of("llm_called")
    assert called["provider"] == fake.provider
    assert called["outcome"] == "ok" and called["attempt"] == 1
    assert called["tokens_in"] > 0 and called["tokens_out"] > 0
    assert called["latency_ms"] >= 0
    progress = reporter.of("progress")
    assert len(progress) >= 4
    received = [p["bytes_received"] for p in progress]
    assert received == sorted(received) and received[-1] > 0
    [call] = fake.calls
    assert call.phase == "models"
    assert "Entities: Product, OrderLine" in call.prompt
    assert "complete" in call.system and "relative POSIX paths" in call.system


async def test_the_key_is_sent_as_the_header_and_nowhere_else(
    fake: FakeLLMServer, provider: Provider
) -> None:
    await run(provider)

    [call] = fake.calls
    if fake.provider == "gemini":
        assert call.headers["x-goog-api-key"] == fake.key
        assert "authorization" not in call.headers
        assert call.query == "alt=sse"
    else:
        assert call.headers["authorization"] == f"Bearer {fake.key}"
    others = {k: v for k, v in call.headers.items() if k not in ("x-goog-api-key", "authorization")}
    assert fake.key not in repr(others)
    assert fake.key not in call.path + call.query
    assert fake.key not in repr(call.body)


async def test_the_answer_is_asked_for_as_structured_json(
    fake: FakeLLMServer, provider: Provider
) -> None:
    await run(provider)

    [call] = fake.calls
    if fake.provider == "gemini":
        config = call.body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        schema = config["responseSchema"]
        assert schema["type"] == "OBJECT"
        assert list(schema["properties"]) == ["files", "deletions", "summary"]
        assert "systemInstruction" in call.body
    else:
        assert call.body["stream"] is True
        response_format = call.body["response_format"]
        assert response_format["type"] == "json_schema"
        assert response_format["json_schema"]["strict"] is True
        assert call.body["messages"][0]["role"] == "system"


@pytest.mark.parametrize("bad", [malformed(), wrong_shape()], ids=["malformed", "wrong_shape"])
async def test_an_unreadable_answer_is_asked_again(
    fake: FakeLLMServer, provider: Provider, bad: Any
) -> None:
    fake.on("models", bad, Reply())

    output, reporter = await run(provider)

    assert sorted(f.path for f in output.files) == MODEL_FILES
    [retry] = reporter.of("retrying")
    assert retry["reason"] == "invalid_output" and retry["attempt"] == 2
    assert [c["outcome"] for c in reporter.of("llm_called")] == ["invalid_output", "ok"]
    second = fake.calls_for("models")[1].prompt
    assert "Your previous answer could not be read" in second


async def test_an_answer_that_stays_unreadable_fails_clearly(
    fake: FakeLLMServer, provider: Provider
) -> None:
    fake.on("models", malformed())

    error, reporter = await fails(provider)

    assert error.kind == "invalid_output" and not error.retryable
    assert "unreadable after 3 tries" in error.message
    assert "not valid JSON" in error.message
    assert "Nothing of this phase was saved" in error.message
    assert len(fake.calls) == 3
    assert len(reporter.of("retrying")) == 2


async def test_an_answer_cut_at_the_output_limit_is_continued_never_saved_truncated(
    fake: FakeLLMServer, provider: Provider
) -> None:
    fake.on("models", Truncated(complete=1), Reply())

    output, reporter = await run(provider)

    assert sorted(f.path for f in output.files) == MODEL_FILES
    for file in output.files:
        assert file.content.endswith("\n"), f"{file.path} is complete"
    assert [c["outcome"] for c in reporter.of("llm_called")] == ["max_tokens", "ok"]
    first, second = fake.calls_for("models")
    assert "Already saved" not in first.prompt
    assert "Already saved from this phase (do not write them again): app/models/__init__.py" in (
        second.prompt
    )


async def test_an_answer_cut_before_any_file_is_complete_fails_with_limits(
    fake: FakeLLMServer, provider: Provider
) -> None:
    fake.on("models", Truncated(complete=0))

    error, _ = await fails(provider)

    assert error.kind == "limits"
    assert "output limit" in error.message and "Nothing of this phase was saved" in error.message
    assert len(fake.calls) == 1


async def test_endless_cut_offs_stop_after_the_continuation_limit(
    fake: FakeLLMServer, provider: Provider
) -> None:
    fake.on("models", Truncated(complete=1))  # every answer is cut, one new file each time

    error, reporter = await fails(provider)

    assert error.kind == "limits"
    assert "reached its output limit 5 times" in error.message
    assert len(fake.calls) == 5
    assert {c["outcome"] for c in reporter.of("llm_called")} == {"max_tokens"}


@pytest.mark.parametrize("header", [False, True], ids=["retry_info", "retry_after_header"])
async def test_a_rate_limit_is_waited_out_as_the_server_says_and_announced_first(
    fake: FakeLLMServer, provider: Provider, header: bool
) -> None:
    fake.on("models", RateLimited(retry_after_s=0.3, header=header), Reply())

    output, reporter = await run(provider)

    assert sorted(f.path for f in output.files) == MODEL_FILES
    [retry] = reporter.of("retrying")
    assert retry["reason"] == "rate_limited"
    assert retry["delay_s"] == pytest.approx(0.3)
    assert "rate limited" in retry["message"] and "retrying in 0.3 s" in retry["message"]
    [announced] = [t for kind, t, _ in reporter.reports if kind == "retrying"]
    _, second = fake.calls_for("models")
    assert second.started - announced >= 0.3 * 0.9, "announced, then waited as told"
    assert [c["outcome"] for c in reporter.of("llm_called")] == ["rate_limited", "ok"]


async def test_a_daily_quota_is_not_retried_and_fails_clearly(
    fake: FakeLLMServer, provider: Provider
) -> None:
    fake.on("models", DailyQuota())

    error, reporter = await fails(provider)

    assert error.kind == "quota" and not error.retryable
    assert "quota" in error.message
    assert len(fake.calls) == 1
    assert reporter.of("retrying") == []
    assert [c["outcome"] for c in reporter.of("llm_called")] == ["quota"]


async def test_repeated_server_errors_are_retried_with_backoff_then_fail(
    fake: FakeLLMServer, provider: Provider
) -> None:
    fake.on("models", ServerFailure(500))

    error, reporter = await fails(provider)

    assert error.retryable and error.kind == "provider"
    assert "500" in error.message and "gave up after 4 tries" in error.message
    assert len(fake.calls) == 4
    retries = reporter.of("retrying")
    assert [r["reason"] for r in retries] == ["server_error"] * 3
    delays = [r["delay_s"] for r in retries]
    assert delays[0] < delays[1] < delays[2], "exponential backoff"
    assert [r["attempt"] for r in retries] == [2, 3, 4]


async def test_a_server_error_then_success_recovers(
    fake: FakeLLMServer, provider: Provider
) -> None:
    fake.on("models", ServerFailure(503), Reply())

    output, reporter = await run(provider)

    assert len(output.files) == 3
    assert [c["outcome"] for c in reporter.of("llm_called")] == ["server_error", "ok"]


async def test_a_stalled_stream_is_retried_as_a_timeout(fake: FakeLLMServer) -> None:
    provider = make_provider(fake, KILN_LLM_TIMEOUT="0.3")
    fake.on("models", Reply(chunks=3, delay_s=2.0), Reply())
    try:
        output, reporter = await run(provider)
    finally:
        await provider.aclose()  # type: ignore[attr-defined]

    assert len(output.files) == 3
    [retry] = reporter.of("retrying")
    assert retry["reason"] == "timeout"
    assert [c["outcome"] for c in reporter.of("llm_called")] == ["timeout", "ok"]


async def test_the_timeout_is_an_idle_limit_not_a_deadline(fake: FakeLLMServer) -> None:
    provider = make_provider(fake, KILN_LLM_TIMEOUT="0.5")
    fake.on("models", Reply(chunks=6, delay_s=0.2))  # 1 s in all, never 0.5 s silent
    try:
        output, reporter = await run(provider)
    finally:
        await provider.aclose()  # type: ignore[attr-defined]

    assert len(output.files) == 3
    assert reporter.of("retrying") == []
    assert "x-server-timeout" not in fake.calls[0].headers, "no deadline sent to the server"


async def test_a_rejected_key_fails_at_once_without_repeating_the_key(
    fake: FakeLLMServer, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.on("models", Rejected(401))

    error, reporter = await fails(provider)

    assert error.kind == "auth" and not error.retryable
    assert "API key was rejected" in error.message
    assert fake.key not in error.message
    assert len(fake.calls) == 1
    assert fake.key not in repr(reporter.reports)
    for record in caplog.records:
        assert fake.key not in record.getMessage()
        assert fake.key not in repr(getattr(record, "fields", {}))


async def test_the_key_never_appears_in_logs_reports_or_messages(
    fake: FakeLLMServer, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.on("models", RateLimited(retry_after_s=0.01), ServerFailure(500), malformed(), Reply())
    fake.on("schemas", Rejected(403))

    await run(provider)
    error, reporter = await fails(provider, phase_request("schemas"))

    assert fake.key not in error.message
    assert fake.key not in repr(reporter.reports)
    assert caplog.records, "the calls were logged"
    for record in caplog.records:
        assert fake.key not in record.getMessage()
        assert fake.key not in repr(getattr(record, "fields", {}))
        assert fake.key not in repr(record.args)


async def test_slow_streaming_reports_progress_while_the_call_runs(
    fake: FakeLLMServer, provider: Provider
) -> None:
    fake.on("models", Reply(chunks=5, delay_s=0.2))

    started = asyncio.get_running_loop().time()
    _, reporter = await run(provider)

    times = [t - started for kind, t, _ in reporter.reports if kind == "progress"]
    assert len(times) >= 5
    [end] = [t - started for kind, t, _ in reporter.reports if kind == "llm_called"]
    assert times[0] < end - 0.5, "progress arrived well before the call ended"


async def test_cancelling_stops_between_retries(fake: FakeLLMServer, provider: Provider) -> None:
    fake.on("models", RateLimited(retry_after_s=0.05), Reply())
    reporter = RecordingReporter()

    async def cancel_soon() -> None:
        await reporter.wait_for("retrying")
        reporter.cancel = True

    canceller = asyncio.create_task(cancel_soon())
    with pytest.raises(ProviderError) as caught:
        await provider.run_phase(phase_request(), reporter)
    await canceller

    assert caught.value.kind == "cancelled"
    assert len(fake.calls) == 1


async def test_an_abandoned_call_stops_at_once(fake: FakeLLMServer, provider: Provider) -> None:
    fake.on("models", Reply(chunks=10, delay_s=0.5))
    reporter = RecordingReporter()
    task = asyncio.create_task(provider.run_phase(phase_request(), reporter))
    await reporter.wait_for("progress")

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert reporter.of("llm_called") == []


@pytest.mark.parametrize("path", HOSTILE_PATHS)
async def test_hostile_paths_reach_the_guard_and_are_rejected(
    fake: FakeLLMServer, provider: Provider, path: str
) -> None:
    fake.on("models", hostile(path))

    output, _ = await run(provider)

    assert path in [f.path for f in output.files], "the provider never rewrites a path"
    checked, violations = check_output(output, current={}, locked=frozenset())
    assert [v.rule for v in violations] == ["unsafe_path"]
    assert sorted(f.path for f in checked.files) == MODEL_FILES


async def test_a_10_mb_answer_is_read_and_the_guard_rejects_its_file(
    fake: FakeLLMServer, provider: Provider
) -> None:
    fake.on("models", huge())

    output, reporter = await run(provider)

    [big] = [f for f in output.files if f.path == "app/huge.py"]
    assert len(big.content) == 10 * 1024 * 1024
    _, violations = check_output(output, current={}, locked=frozenset())
    assert [(v.path, v.rule) for v in violations] == [("app/huge.py", "too_large")]
    assert reporter.of("progress")[-1]["bytes_received"] > 10 * 1024 * 1024


async def test_an_answer_past_the_response_cap_is_abandoned(
    fake: FakeLLMServer, provider: Provider
) -> None:
    provider.policy = dataclasses.replace(provider.policy, max_response_bytes=1024 * 1024)  # type: ignore[attr-defined]
    fake.on("models", huge())

    error, reporter = await fails(provider)

    assert error.kind == "limits"
    assert "grew past 1,048,576 bytes" in error.message
    assert [c["outcome"] for c in reporter.of("llm_called")] == ["too_large"]


async def test_the_model_of_the_request_wins_over_the_setting(
    fake: FakeLLMServer, provider: Provider
) -> None:
    _, reporter = await run(provider, phase_request(model="special-model"))

    [called] = reporter.of("llm_called")
    assert called["model"] == "special-model"
    [call] = fake.calls
    assert "special-model" in (call.path if fake.provider == "gemini" else call.body["model"])


async def test_the_correction_of_a_rejected_output_is_in_the_prompt(
    fake: FakeLLMServer, provider: Provider
) -> None:
    await run(provider, phase_request(correction="app/x.py — path rejected", attempt=2))

    [call] = fake.calls
    assert "## Your previous output was rejected\napp/x.py — path rejected" in call.prompt


# ---------------------------------------------------------------------------------------
# Gemini only
# ---------------------------------------------------------------------------------------


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


async def test_a_gemini_400_api_key_invalid_is_an_auth_failure(gemini: FakeGemini) -> None:
    gemini.on("models", Rejected(400))
    provider = make_provider(gemini)

    error, _ = await fails(provider)
    await provider.aclose()  # type: ignore[attr-defined]

    assert error.kind == "auth"
    assert "The Gemini API key was rejected" in error.message
    assert gemini.key not in error.message


async def test_gemini_without_a_key_cannot_be_created() -> None:
    with pytest.raises(ProviderError) as caught:
        GeminiProvider(load_settings({}))
    assert caught.value.kind == "auth"
    assert "GEMINI_API_KEY" in caught.value.message


async def test_the_sdk_does_not_retry_on_its_own(gemini: FakeGemini) -> None:
    gemini.on("models", ServerFailure(500))
    provider = make_provider(gemini, KILN_LLM_MAX_RETRIES="0")

    error, reporter = await fails(provider)
    await provider.aclose()  # type: ignore[attr-defined]

    assert len(gemini.calls) == 1, "one call, one request: Kiln's policy is the only one"
    assert error.retryable
    assert len(reporter.of("llm_called")) == 1


async def test_the_fake_also_answers_generate_content_unstreamed(gemini: FakeGemini) -> None:
    client = genai.Client(api_key=gemini.key, http_options=types.HttpOptions(base_url=gemini.url))
    response = await client.aio.models.generate_content(
        model="m", contents=phase_prompt(phase_request(), context_chars=10_000)
    )
    await client.aio.aclose()

    assert response.text is not None
    assert sorted(f["path"] for f in json.loads(response.text)["files"]) == MODEL_FILES
    assert gemini.calls[0].path == "/v1/models/m:generateContent"


def quota_error(quota_id: str, delay: str | None = "36s") -> dict[str, Any]:
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generate_content_requests", "quotaId": quota_id}],
        }
    ]
    if delay:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
    return {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota", "details": details}


def test_a_per_day_quota_id_is_a_daily_quota_and_a_per_minute_one_is_not() -> None:
    per_day = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    assert daily_quota(quota_error(per_day)) == per_day
    assert daily_quota(quota_error("GenerateRequestsPerMinutePerProjectPerModel")) is None
    info = {
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "RATE_LIMIT_EXCEEDED",
                "metadata": {"quota_limit": "Gemini25ProRequestsPerDay"},
            }
        ]
    }
    assert daily_quota(info) == "Gemini25ProRequestsPerDay"
    assert daily_quota({"message": "Resource has been exhausted (e.g. check quota)."}) is None


class _Headers(dict[str, str]):
    pass


class _Response:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = _Headers(headers)


def test_the_retry_delay_comes_from_retry_info_the_header_or_the_message() -> None:
    minute = quota_error("PerMinute", "37s")
    assert retry_delay(None, minute, "") == 37.0
    assert retry_delay(_Response({"retry-after": "5"}), quota_error("x", None), "") == 5.0
    assert retry_delay(_Response({"retry-after": "5"}), minute, "") == 37.0, "the longest"
    assert retry_delay(None, quota_error("x", "1.5s"), "") == 1.5
    assert retry_delay(None, {}, "Please retry in 36.429760048s.") == pytest.approx(36.43, 0.01)
    assert retry_delay(None, {}, "Please retry in 250ms") == 0.25
    assert retry_delay(None, {}, "slow down") is None
