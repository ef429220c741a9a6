"""The orchestrator's side of verification, through a real nats-server: a stored answer is
used as it is, a busy verifier is waited for, and no verifier at all is said plainly."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
from nats.aio.client import Client

from contracts import streams, subjects
from contracts.codec import encode
from contracts.events import (
    MAX_OUTPUT_TAIL_CHARS,
    GenerationRequested,
    VerifyCompleted,
    VerifyUnavailable,
    utc_now,
)
from contracts.state import fold
from contracts.verification import (
    VerifyResult,
    decode_verify_request,
    result_msg_id,
)
from services.common.embedded_nats import EmbeddedNats
from services.common.eventlog import read_generation
from services.common.eventwriter import GenerationWriter
from services.orchestrator.verification import (
    NO_VERIFIER,
    VerifierClient,
    VerifyUnanswered,
    verify_step,
)
from tests.support.frozen import frozen


def _result(generation_id: str, round_: int, output_tail: str = "", **counts: int) -> VerifyResult:
    return VerifyResult(
        generation_id=generation_id,
        project_id="p",
        round=round_,
        outcome="completed",
        output_tail=output_tail,
        verifier="test-verifier",
        at=utc_now(),
        **counts,
    )


async def _store(nc: Client, result: VerifyResult) -> None:
    await nc.jetstream().publish(
        subjects.verify_result_subject(result.generation_id, result.round),
        encode(result),
        headers={"Nats-Msg-Id": result_msg_id(result.generation_id, result.round)},
    )


async def test_an_answer_already_stored_is_used_without_asking_again(nc: Client) -> None:
    generation_id = str(uuid.uuid4())
    await _store(nc, _result(generation_id, 0, passed=7))
    client = VerifierClient(nc.jetstream(), pickup_s=0, wait_s=30)

    answer = await client.verify(generation_id, "p", 0, upto_seq=5)

    assert isinstance(answer, VerifyResult) and answer.passed == 7


async def test_without_any_verifier_the_answer_is_unanswered_and_the_command_withdrawn(
    nc: Client,
) -> None:
    client = VerifierClient(nc.jetstream(), pickup_s=0, wait_s=30)

    answer = await client.verify(str(uuid.uuid4()), "p", 0, upto_seq=5)

    assert answer == VerifyUnanswered(NO_VERIFIER)
    info = await nc.jetstream().stream_info(streams.VERIFY_STREAM)
    assert info.state.messages == 0, "a verifier started later does not run a stale command"


async def test_a_broker_that_does_not_answer_for_a_while_is_waited_for_not_an_error(
    nc: Client, nats_server: EmbeddedNats
) -> None:
    # A cluster electing a leader (or a frozen node) answers nothing for seconds: every
    # broker call of the step times out at first (1 s here), and must be asked again.
    client = VerifierClient(nc.jetstream(timeout=1.0), pickup_s=0, wait_s=30)
    with frozen(nats_server):
        asking = asyncio.create_task(client.verify(str(uuid.uuid4()), "p", 0, upto_seq=5))
        await asyncio.sleep(2.5)
        assert not asking.done(), "it waits for the broker"

    assert await asyncio.wait_for(asking, 20) == VerifyUnanswered(NO_VERIFIER)


async def test_a_verifier_that_takes_its_time_is_waited_for(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_consumer(streams.VERIFY_STREAM, streams.verifier_consumer(30.0, 3))
    pull = await js.pull_subscribe_bind(streams.VERIFIER_CONSUMER, stream=streams.VERIFY_STREAM)

    async def slow_verifier() -> None:
        [msg] = await pull.fetch(1, timeout=10)
        command = decode_verify_request(msg.data)
        await asyncio.sleep(3)  # longer than the pickup window: it is working, not absent
        await _store(nc, _result(command.generation_id, command.round, passed=3, failed=1))
        await msg.ack()

    verifier = asyncio.create_task(slow_verifier())
    client = VerifierClient(js, pickup_s=1, wait_s=30)
    answer = await client.verify(str(uuid.uuid4()), "p", 1, upto_seq=9)
    await verifier

    assert isinstance(answer, VerifyResult)
    assert (answer.round, answer.passed, answer.failed) == (1, 3, 1)


async def test_the_step_appends_one_answer_per_round_also_when_resumed(nc: Client) -> None:
    js = nc.jetstream()
    writer = GenerationWriter(js, "p-1", str(uuid.uuid4()), source="urn:kiln:test")
    await writer.emit(GenerationRequested, owner="alice", project_name="shop", version=1)
    await _store(nc, _result(writer.generation_id, 0, passed=4, failed=2))
    client = VerifierClient(js, pickup_s=0, wait_s=30)

    completed = await verify_step(writer, client, 0, done=False, started=False)
    # A resumed run whose log already has the round's verify.started asks again and gets
    # the same stored answer; one whose round is done appends nothing.
    again = await verify_step(writer, client, 0, done=True, started=True)
    unverified = await verify_step(writer, client, 1, done=False, started=False)

    assert isinstance(completed, VerifyCompleted) and completed.verdict == "failed"
    assert again is None
    assert isinstance(unverified, VerifyUnavailable) and unverified.reason == NO_VERIFIER
    state = fold(e.event for e in await read_generation(js, writer.generation_id))
    assert state is not None and state.summary.verification is not None
    assert [type(e.event).__name__ for e in await read_generation(js, writer.generation_id)] == [
        "GenerationRequested",
        "VerifyStarted",
        "VerifyCompleted",
        "VerifyStarted",
        "VerifyUnavailable",
    ]


async def test_a_failed_run_keeps_the_end_of_its_output_for_the_repair_round(nc: Client) -> None:
    js = nc.jetstream()
    writer = GenerationWriter(js, "p-1", str(uuid.uuid4()), source="urn:kiln:test")
    await writer.emit(GenerationRequested, owner="alice", project_name="shop", version=1)
    # A verifier that does not cap its output: the event still carries only the end of it.
    output = "x" * MAX_OUTPUT_TAIL_CHARS + "\nFAILED tests/test_a.py::test_a\n1 failed\n"
    await _store(nc, _result(writer.generation_id, 0, output, passed=1, failed=1))
    await _store(nc, _result(writer.generation_id, 1, "2 passed in 0.01s\n", passed=2))
    client = VerifierClient(js, pickup_s=0, wait_s=30)

    failed = await verify_step(writer, client, 0, done=False, started=False)
    history = [e.event for e in await read_generation(js, writer.generation_id)]
    state = fold(history)
    passed = await verify_step(writer, client, 1, done=False, started=False)

    assert isinstance(failed, VerifyCompleted) and failed.verdict == "failed"
    assert len(failed.output_tail) == MAX_OUTPUT_TAIL_CHARS
    assert failed.output_tail.endswith("FAILED tests/test_a.py::test_a\n1 failed\n")
    assert state is not None and state.verify_output == failed.output_tail
    assert state.summary.verification is not None
    assert b"FAILED" not in msgspec.json.encode(state.summary), "not in every reader's copy"
    assert isinstance(passed, VerifyCompleted) and passed.verdict == "passed"
    assert passed.output_tail == "", "a passing run's output is not worth its room in the log"
    after = fold(e.event for e in await read_generation(js, writer.generation_id))
    assert after is not None and after.verify_output == ""
