"""The openai provider (any OpenAI-compatible chat-completions endpoint) against a local fake.

The scripted cases it shares with the gemini provider (malformed JSON, the output limit,
429, a used-up quota, 5xx, timeouts, hostile paths, 10 MB, the key) run against both fakes
in test_gemini.py; here is what is particular to OpenAI-compatible endpoints.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from contracts.phases import PhaseOutput
from contracts.providers import KNOWN_PROVIDERS
from services.common.embedded_nats import free_port
from services.common.settings import load_settings
from services.orchestrator.providers.base import ProviderError
from services.orchestrator.providers.openai import OpenAIProvider
from services.orchestrator.providers.registry import Providers
from tests.fakes import (
    MODEL_FILES,
    Call,
    RecordingReporter,
    Reply,
    Response,
    Truncated,
    phase_request,
)
from tests.fakes.openai_server import FakeOpenAI

FAST = {"KILN_LLM_RETRY_DELAY": "0.01", "KILN_LLM_MAX_RETRIES": "2"}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def provider(fake: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    instance = OpenAIProvider(load_settings({**fake.env(), **FAST}))
    yield instance
    await instance.aclose()


def test_openai_is_a_known_provider_the_registry_creates(fake: FakeOpenAI) -> None:
    assert "openai" in KNOWN_PROVIDERS
    provider = Providers(load_settings(fake.env())).get("openai")
    assert isinstance(provider, OpenAIProvider)
    assert provider.name == "openai"


def test_without_a_base_url_the_provider_cannot_be_created() -> None:
    with pytest.raises(ProviderError) as caught:
        OpenAIProvider(load_settings({}))
    assert "KILN_OPENAI_BASE_URL" in caught.value.message


async def test_a_local_server_without_a_key_gets_no_authorization_header(
    fake: FakeOpenAI,
) -> None:
    env = {**fake.env(), **FAST}
    env.pop("KILN_OPENAI_API_KEY")
    provider = OpenAIProvider(load_settings(env))
    try:
        output = await provider.run_phase(phase_request(), RecordingReporter())
    finally:
        await provider.aclose()

    assert sorted(f.path for f in output.files) == MODEL_FILES
    [call] = fake.calls
    assert "authorization" not in call.headers


async def test_the_request_names_the_model_and_asks_for_usage(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    _, reporter = await _run(provider)

    [call] = fake.calls
    assert call.body["model"] == "fake-model"
    assert call.body["stream_options"] == {"include_usage": True}
    schema = call.body["response_format"]["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["files", "deletions", "summary"]
    [called] = reporter.of("llm_called")
    assert called["model"] == "fake-model" and called["tokens_out"] > 0


async def test_the_output_cap_setting_is_sent_as_max_tokens(fake: FakeOpenAI) -> None:
    provider = OpenAIProvider(
        load_settings({**fake.env(), **FAST, "KILN_LLM_MAX_OUTPUT_TOKENS": "4096"})
    )
    try:
        await provider.run_phase(phase_request(), RecordingReporter())
    finally:
        await provider.aclose()
    assert fake.calls[0].body["max_tokens"] == 4096


async def test_a_server_that_ignores_stream_is_read_as_one_completion(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.ignore_stream = True
    fake.on("models", Truncated(complete=1), Reply())

    output, reporter = await _run(provider)

    assert sorted(f.path for f in output.files) == MODEL_FILES
    assert [c["outcome"] for c in reporter.of("llm_called")] == ["max_tokens", "ok"]


async def test_an_unknown_model_fails_with_what_to_check(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    async def handle(call: Call) -> Response:
        body = {"error": {"message": "model 'nope' not found", "type": "not_found_error"}}
        return Response(404, {"content-type": "application/json"}, json.dumps(body).encode())

    fake.handle = handle  # type: ignore[method-assign]

    error = await _fails(provider)

    assert error.kind == "provider" and not error.retryable
    assert "does not know the model 'fake-model'" in error.message
    assert "KILN_OPENAI_MODEL" in error.message and "KILN_OPENAI_BASE_URL" in error.message


async def test_retry_after_ms_is_honoured(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    answered: list[int] = []

    original = fake.handle

    async def handle(call: Call) -> Response:
        if not answered:
            answered.append(429)
            body = {"error": {"message": "slow down", "type": "requests"}}
            return Response(
                429,
                {"content-type": "application/json", "retry-after-ms": "120"},
                json.dumps(body).encode(),
            )
        return await original(call)

    fake.handle = handle  # type: ignore[method-assign]

    output, reporter = await _run(provider)

    assert len(output.files) == 3
    [retry] = reporter.of("retrying")
    assert retry["reason"] == "rate_limited" and retry["delay_s"] == pytest.approx(0.12)


async def test_an_error_inside_the_stream_is_classified(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    async def events() -> AsyncIterator[bytes]:
        yield b'data: {"choices": [{"index": 0, "delta": {"content": "{\\"fi"}}]}\n\n'
        yield b'data: {"error": {"message": "overloaded", "code": 503}}\n\n'

    async def handle(call: Call) -> Response:
        return Response(200, {"content-type": "text/event-stream"}, stream=events)

    fake.handle = handle  # type: ignore[method-assign]

    error = await _fails(provider)

    assert error.retryable
    assert "503" in error.message and "gave up after 3 tries" in error.message


async def test_a_day_limit_in_the_message_is_a_quota(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    async def handle(call: Call) -> Response:
        body = {
            "error": {
                "message": "Rate limit reached for gpt-x on requests per day (RPD): Limit 200",
                "type": "requests",
                "code": "rate_limit_exceeded",
            }
        }
        return Response(
            429,
            {"content-type": "application/json", "retry-after": "3600"},
            json.dumps(body).encode(),
        )

    fake.handle = handle  # type: ignore[method-assign]

    error = await _fails(provider)

    assert error.kind == "quota" and not error.retryable
    assert len(fake.calls) == 1, "not retried"


async def test_an_unreachable_endpoint_is_retried_then_fails_naming_it_without_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    settings = load_settings(
        {
            **FAST,
            "KILN_OPENAI_BASE_URL": f"http://user:hunter2secret@127.0.0.1:{port}/v1",
            "KILN_OPENAI_API_KEY": "sk-never-shown-123456",
        }
    )
    provider = OpenAIProvider(settings)
    reporter = RecordingReporter()
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.run_phase(phase_request(), reporter)
    finally:
        await provider.aclose()

    error = caught.value
    assert error.retryable
    assert f"http://127.0.0.1:{port}" in error.message
    assert [r["reason"] for r in reporter.of("retrying")] == ["server_error", "server_error"]
    for text in [error.message, repr(reporter.reports), *(r.getMessage() for r in caplog.records)]:
        assert "hunter2secret" not in text
        assert "sk-never-shown-123456" not in text


async def _run(provider: OpenAIProvider) -> tuple[PhaseOutput, RecordingReporter]:
    reporter = RecordingReporter()
    output = await provider.run_phase(phase_request(), reporter)
    return output, reporter


async def _fails(provider: OpenAIProvider) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await provider.run_phase(phase_request(), RecordingReporter())
    return caught.value
