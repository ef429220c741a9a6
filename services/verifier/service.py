"""The verifier service: a durable work-queue pull consumer on the verify commands.

For each command it reads the version from the generation's own log (every event up to
`upto_seq`, folded), verifies it in the sandbox and publishes one `VerifyResult` with
`Nats-Msg-Id: <generation_id>:<round>`; the command is acked only after the result is
stored. A verifier killed mid-run stops renewing the command, so after the ack wait
another verifier takes it; the results stream keeps one result per generation and round.
"""

from __future__ import annotations

import asyncio
import os
import socket

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from contracts import streams, subjects
from contracts.codec import encode
from contracts.events import utc_now
from contracts.state import fold
from contracts.verification import (
    VerifyDecodeError,
    VerifyRequested,
    VerifyResult,
    decode_verify_request,
    result_msg_id,
)
from services.common import metrics
from services.common.blobs import BlobError, BlobStore, resolve_contents
from services.common.consumer import Ack, DeadLetter, Outcome, PullWorker, Retry
from services.common.eventlog import read_generation
from services.common.host import broker_session, health_endpoint
from services.common.logs import get_logger
from services.common.settings import Settings
from services.verifier.checks import sweep_stale_staging, verify
from services.verifier.runtime import RuntimeUnavailable, load_runtime
from services.verifier.sandbox import Limits, Sandbox, SandboxUnavailable

log = get_logger(__name__)

MIB = 1024 * 1024


def worker_name() -> str:
    """host:pid, how results and logs name this verifier."""
    return f"{socket.gethostname()}:{os.getpid()}"


def limits_of(settings: Settings) -> Limits:
    """A run's limits from the settings."""
    return Limits(
        wall_s=settings.verify_timeout_s,
        cpu_s=settings.verify_cpu_s,
        memory_bytes=settings.verify_memory_mb * MIB,
        processes=settings.verify_max_processes,
        disk_bytes=settings.verify_disk_mb * MIB,
    )


class VerifierService:
    """Verifies versions taken from the work queue, several at once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker = worker_name()
        self.ready = asyncio.Event()
        self.sandbox: Sandbox | None = None
        self.unavailable: str | None = None

    async def prepare(self) -> None:
        """Load the runtime and probe the sandbox; what fails is the reason of every result.

        First removes what verifiers killed mid-run left in the temporary directory."""
        for path in sweep_stale_staging():
            log.info("Removed the staging directory of a verifier that is gone", path=str(path))
        try:
            runtime = load_runtime(self.settings.verify_runtime)
        except RuntimeUnavailable as exc:
            self.unavailable = f"unverified: {exc}"
            log.error("No verify runtime: {reason}", reason=str(exc))
            return
        unsandboxed = self.settings.verify_unsandboxed_dev_only
        self.sandbox = Sandbox(
            runtime,
            limits_of(self.settings),
            slots=self.settings.verify_concurrency,
            uid_base=self.settings.verify_uid_base,
            unsandboxed=unsandboxed,
            bwrap=self.settings.verify_bwrap,
        )
        if unsandboxed:
            log.warning(
                "KILN_VERIFY_UNSANDBOXED_DEV_ONLY is set: generated code runs WITHOUT a sandbox"
            )
            return
        try:
            await self.sandbox.probe()
        except SandboxUnavailable as exc:
            self.unavailable = f"unverified: {exc}"
            log.error("The sandbox cannot run: {reason}", reason=str(exc))

    async def run(self, stop: asyncio.Event) -> None:
        """Take and verify commands until `stop` is set; running verifications finish first."""
        await self.prepare()
        metrics.export("verifier")
        async with broker_session(self.settings, f"kiln-verifier-{self.worker}") as (nc, js):
            worker = PullWorker(
                js,
                service="verifier",
                stream=streams.VERIFY_STREAM,
                config=streams.verifier_consumer(
                    self.settings.verify_ack_wait_s, self.settings.verify_max_deliver
                ),
                max_deliveries=self.settings.verify_max_deliver,
            )

            async def handle(msg: Msg) -> Outcome:
                try:
                    command = decode_verify_request(msg.data)
                except VerifyDecodeError as exc:
                    return DeadLetter(str(exc))
                return await self.handle(js, command)

            async def readiness() -> dict[str, str]:
                return {
                    "nats": "ok" if nc.is_connected else "disconnected",
                    "sandbox": "ok" if self.unavailable is None else "unavailable",
                }

            async with health_endpoint(self.settings, readiness):
                log.info("Verifier {worker} taking verify commands", worker=self.worker)
                self.ready.set()
                await worker.run_each(
                    handle,
                    stop,
                    concurrency=self.settings.verify_concurrency,
                    heartbeat_s=max(self.settings.verify_ack_wait_s / 3, 0.3),
                    grace_s=self.settings.shutdown_grace_s,
                )
        log.info("Verifier {worker} stopped", worker=self.worker)

    async def handle(self, js: JetStreamContext, command: VerifyRequested) -> Outcome:
        """Verify one version and publish its result; Retry while the broker is away."""
        generation_id = command.generation_id
        try:
            if await stored_result(js, generation_id, command.round) is not None:
                log.info(
                    "Round {round} of generation {generation_id} is already verified",
                    generation_id=generation_id,
                    round=command.round,
                )
                return Ack()
            result = await self.verify(js, command)
            await publish_result(js, result)
        except (nats.errors.Error, APIError, TimeoutError) as exc:
            return Retry(f"broker unavailable: {exc!r}")
        log.info(
            "Verified generation {generation_id}: {outcome}, {passed} passed, {failed} failed",
            generation_id=generation_id,
            round=command.round,
            outcome=result.outcome,
            passed=result.passed,
            failed=result.failed,
            errors=result.errors,
            reason=result.reason,
            duration_ms=result.duration_ms,
        )
        return Ack()

    async def verify(self, js: JetStreamContext, command: VerifyRequested) -> VerifyResult:
        """The result of one command (read the version, then check it)."""

        def unavailable(reason: str) -> VerifyResult:
            return VerifyResult(
                generation_id=command.generation_id,
                project_id=command.project_id,
                round=command.round,
                outcome="unavailable",
                reason=reason,
                verifier=self.worker,
                at=utc_now(),
            )

        if self.unavailable is not None or self.sandbox is None:
            return unavailable(self.unavailable or "unverified: no sandbox")
        history = await read_generation(js, command.generation_id)
        state = fold(e.event for e in history if e.event.seq <= command.upto_seq)
        if state is None or state.summary.last_seq < command.upto_seq:
            return unavailable(
                f"unverified: the log of generation {command.generation_id} has no event "
                f"{command.upto_seq}"
            )
        try:
            await resolve_contents(BlobStore(js), state)
        except BlobError as exc:
            return unavailable(f"unverified: the version's files cannot be read ({exc})")
        log.info(
            "Verifying generation {generation_id} at event {seq}",
            generation_id=command.generation_id,
            seq=command.upto_seq,
            round=command.round,
            files=len(state.files),
        )
        return await verify(
            state.file_contents(),
            self.sandbox,
            generation_id=command.generation_id,
            project_id=command.project_id,
            round=command.round,
            verifier=self.worker,
        )


async def stored_result(js: JetStreamContext, generation_id: str, round: int) -> bytes | None:
    """The result already stored for a generation's round, if any."""
    try:
        msg = await js.get_last_msg(
            streams.VERIFY_RESULTS_STREAM, subjects.verify_result_subject(generation_id, round)
        )
    except NotFoundError:
        return None
    return msg.data


async def publish_result(js: JetStreamContext, result: VerifyResult) -> None:
    """Store a result once: a duplicate, or a later result of the same round, is dropped."""
    subject = subjects.verify_result_subject(result.generation_id, result.round)
    headers = {"Nats-Msg-Id": result_msg_id(result.generation_id, result.round)}
    try:
        await js.publish(subject, encode(result), headers=headers, timeout=5.0)
    except APIError:
        # The stream refuses a second message on a subject: the round already has one.
        if await stored_result(js, result.generation_id, result.round) is None:
            raise
