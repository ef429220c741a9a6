"""The verify step: ask a verifier to run the version's own tests, and append its answer.

The orchestrator stays the only writer of a generation's subject: it appends
`verify.started`, publishes a `VerifyRequested` command to the verifiers' work queue, waits
for the one `VerifyResult` stored on `kiln.verify.results.<generation>.<round>` and appends
`verify.completed` (or `verify.unavailable`, with the reason). A result is kept a week and
stored once per round, so an orchestrator that resumes a generation after a crash finds
the answer to a round it had already asked for instead of asking again, and the log gets
exactly one answer per round.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from contracts import streams, subjects
from contracts.codec import encode
from contracts.events import (
    MAX_OUTPUT_TAIL_CHARS,
    VerifyCompleted,
    VerifyStarted,
    VerifyUnavailable,
    utc_now,
    verification_counts,
)
from contracts.verification import (
    VerifyDecodeError,
    VerifyRequested,
    VerifyResult,
    decode_verify_result,
    request_msg_id,
)
from services.common.broker import when_available
from services.common.eventlog import subscribe_ordered
from services.common.eventwriter import GenerationWriter
from services.common.logs import get_logger
from services.orchestrator.folding import FoldingWriter

log = get_logger(__name__)

VERIFY_STARTED_PROGRESS = 96
VERIFY_ANSWERED_PROGRESS = 98
_OFF = "verification is turned off on this orchestrator (KILN_VERIFY=false)"
NO_VERIFIER = (
    "no verifier is running (start `kiln verifier`, which `kiln up` does); "
    "the version is unverified"
)


@dataclass(frozen=True, slots=True)
class VerifyUnanswered:
    """No verifier answered: why, in words a person can act on."""

    reason: str


class VerifierClient:
    """Sends verify commands and waits for their results."""

    def __init__(
        self, js: JetStreamContext, *, pickup_s: float, wait_s: float, enabled: bool = True
    ) -> None:
        self.js = js
        self.pickup_s = pickup_s
        self.wait_s = wait_s
        self.enabled = enabled

    async def verify(
        self, generation_id: str, project_id: str, round_: int, upto_seq: int
    ) -> VerifyResult | VerifyUnanswered:
        """The result of verifying the version that the log holds at `upto_seq`.

        Returns the stored result at once when this round was already answered (a resumed
        generation); otherwise asks, and gives up with a reason when no verifier shows any
        sign of life for `pickup_s`, or none answers within `wait_s`.
        """
        subject = subjects.verify_result_subject(generation_id, round_)
        stored = await when_available(
            lambda: self._stored(subject, generation_id, round_),
            what=f"look up the verify result of generation {generation_id}",
        )
        if stored is not None:
            return stored
        results: asyncio.Queue[bytes] = asyncio.Queue()

        async def received(msg: Msg) -> None:
            results.put_nowait(msg.data)

        # Subscribed before asking, from the subject's start: an answer stored earlier (or
        # one that arrives right after the command) is never missed.
        sub = await when_available(
            lambda: subscribe_ordered(
                self.js,
                subject,
                stream=streams.VERIFY_RESULTS_STREAM,
                cb=received,
                idle_heartbeat_s=2.0,  # a broker restart during a long run is noticed in seconds
            ),
            what=f"follow the verify results of generation {generation_id}",
        )
        try:
            command = VerifyRequested(
                generation_id=generation_id,
                project_id=project_id,
                round=round_,
                upto_seq=upto_seq,
                at=utc_now(),
            )
            # Safe to repeat: the Msg-Id stores one command per round.
            ack = await when_available(
                lambda: self.js.publish(
                    subjects.VERIFY_REQUESTS,
                    encode(command),
                    headers={"Nats-Msg-Id": request_msg_id(generation_id, round_)},
                    timeout=5.0,
                ),
                what=f"ask for the verification of generation {generation_id}",
            )
            return await self._answer(results, generation_id, round_, int(ack.seq))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _stored(self, subject: str, generation_id: str, round_: int) -> VerifyResult | None:
        """The answer already stored for this round (a resumed generation), if any."""
        try:
            msg = await self.js.get_last_msg(streams.VERIFY_RESULTS_STREAM, subject)
        except NotFoundError:
            return None
        try:
            result = decode_verify_result(msg.data or b"")
        except VerifyDecodeError:
            return None
        return result if (result.generation_id, result.round) == (generation_id, round_) else None

    async def _answer(
        self, results: asyncio.Queue[bytes], generation_id: str, round_: int, command_seq: int
    ) -> VerifyResult | VerifyUnanswered:
        loop = asyncio.get_running_loop()
        started = last_alive = loop.time()
        if self.pickup_s <= 0 and not await self._verifiers_alive(command_seq):
            await self._withdraw(command_seq)
            return VerifyUnanswered(NO_VERIFIER)
        while True:
            now = loop.time()
            if now - started >= self.wait_s:
                await self._withdraw(command_seq)
                return VerifyUnanswered(
                    f"no verifier answered within {self.wait_s:.0f} s; the version is unverified"
                )
            try:
                data = await asyncio.wait_for(results.get(), timeout=1.0)
            except TimeoutError:
                if await self._verifiers_alive(command_seq):
                    last_alive = loop.time()
                elif loop.time() - last_alive >= self.pickup_s:
                    await self._withdraw(command_seq)
                    return VerifyUnanswered(NO_VERIFIER)
                continue
            try:
                result = decode_verify_result(data)
            except VerifyDecodeError as exc:
                log.warning(
                    "Ignored an invalid verify result for generation {generation_id}",
                    generation_id=generation_id,
                    round=round_,
                    reason=str(exc),
                )
                continue
            if result.generation_id == generation_id and result.round == round_:
                return result

    async def _verifiers_alive(self, command_seq: int) -> bool:
        """True while some verifier has taken the command, asks for work or is working."""
        try:
            info = await self.js.consumer_info(
                streams.VERIFY_STREAM, streams.VERIFIER_CONSUMER, timeout=2.0
            )
        except NotFoundError:
            return False  # no verifier has ever run against this broker
        except (nats.errors.Error, TimeoutError):
            return True  # the broker cannot tell now: keep waiting, up to `wait_s`
        return (
            int(info.delivered.stream_seq or 0) >= command_seq
            or (info.num_waiting or 0) > 0
            or (info.num_ack_pending or 0) > 0
        )

    async def _withdraw(self, command_seq: int) -> None:
        """Take back a command nobody ran, so a verifier started later does not run it."""
        try:
            await self.js.delete_msg(streams.VERIFY_STREAM, command_seq)
        except NotFoundError:
            pass  # taken (and acked) after all
        except nats.errors.Error as exc:
            log.warning(
                "Could not withdraw a verify command", stream_seq=command_seq, error=repr(exc)
            )


async def verify_step(
    writer: GenerationWriter, client: VerifierClient, round_: int, *, done: bool, started: bool
) -> VerifyCompleted | VerifyUnavailable | None:
    """Verify round `round_` of the version `writer` appends to, unless `done`.

    `started` says the log already has this round's `verify.started` (a resumed generation):
    it is not appended twice, and the verifier's stored answer is used. Returns the event
    appended with the answer (None when the round was already `done`).
    """
    if done:
        return None
    generation_id = writer.generation_id
    # With verification off, a held batch (an instant provider's version, see the runner's
    # `_holds`) takes both events: nothing reads the log between them.
    if not client.enabled and isinstance(writer, FoldingWriter) and writer.held is not None:
        batch = writer.batch()
        if not started:
            progress = VERIFY_STARTED_PROGRESS if round_ == 0 else VERIFY_ANSWERED_PROGRESS
            batch.add(VerifyStarted, round=round_, progress=progress)
        unavailable = batch.add(
            VerifyUnavailable, round=round_, reason=_OFF, progress=VERIFY_ANSWERED_PROGRESS
        )
        writer.hold(batch)
        log.warning(
            "Generation {generation_id} is unverified: {reason}",
            generation_id=generation_id,
            reason=_OFF,
            round=round_,
        )
        return unavailable
    if not started:
        # A repair round's verification starts where the repair left progress: never back.
        progress = VERIFY_STARTED_PROGRESS if round_ == 0 else VERIFY_ANSWERED_PROGRESS
        await writer.emit(VerifyStarted, round=round_, progress=progress)
    if not client.enabled:
        answer: VerifyResult | VerifyUnanswered = VerifyUnanswered(_OFF)
    else:
        log.info(
            "Verification of generation {generation_id} requested",
            generation_id=generation_id,
            round=round_,
        )
        # Every event up to here is the version: the files all come before verify.started.
        answer = await client.verify(generation_id, writer.project_id, round_, writer.last_seq)
    if isinstance(answer, VerifyUnanswered) or answer.outcome == "unavailable":
        reason = answer.reason or "the verifier gave no reason"
        log.warning(
            "Generation {generation_id} is unverified: {reason}",
            generation_id=generation_id,
            reason=reason,
            round=round_,
        )
        return await writer.emit(
            VerifyUnavailable, round=round_, reason=reason, progress=VERIFY_ANSWERED_PROGRESS
        )
    ran = answer.passed + answer.failed + answer.errors + answer.skipped
    verdict = ("passed" if ran else "no_tests") if answer.tests_passed else "failed"
    log.info(
        "Generation {generation_id} verified: {verdict}, {passed} passed, {failed} failed",
        generation_id=generation_id,
        verdict=verdict,
        passed=answer.passed,
        failed=answer.failed,
        errors=answer.errors,
        round=round_,
    )
    return await writer.emit(
        VerifyCompleted,
        round=round_,
        verdict=verdict,
        **verification_counts(answer),
        verifier=answer.verifier,
        # Only a failed run's output is worth its room in the log: a repair round reads it.
        output_tail=answer.output_tail[-MAX_OUTPUT_TAIL_CHARS:] if verdict == "failed" else "",
        progress=VERIFY_ANSWERED_PROGRESS,
    )
