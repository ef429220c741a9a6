"""The orchestrator service: a durable pull consumer on the generate commands."""

from __future__ import annotations

import asyncio
import os
import socket

from nats.aio.msg import Msg

from contracts import streams
from contracts.codec import DecodeError, decode_command
from contracts.commands import GenerateRequested
from services.common import metrics
from services.common.consumer import DeadLetter, Outcome, PullWorker, deliveries_of
from services.common.eventwriter import atomic_batches
from services.common.host import broker_session, health_endpoint, nats_readiness
from services.common.logs import get_logger
from services.common.settings import Settings
from services.orchestrator.adverts import ProviderAdverts
from services.orchestrator.cancels import CancelWatcher
from services.orchestrator.providers.base import Provider
from services.orchestrator.providers.registry import Providers
from services.orchestrator.runner import GenerationRunner, RunnerConfig
from services.orchestrator.verification import VerifierClient
from services.orchestrator.watchdog import Heartbeats, Watchdog

log = get_logger(__name__)


def worker_name() -> str:
    """host:pid, how events and logs name this orchestrator."""
    return f"{socket.gethostname()}:{os.getpid()}"


class OrchestratorService:
    """Runs generations taken from the work queue, several at once."""

    def __init__(self, settings: Settings, providers: dict[str, Provider] | None = None) -> None:
        self.settings = settings
        self.providers = Providers(settings, providers)
        self.worker = worker_name()
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Take and run commands until `stop` is set; in-flight generations finish first."""
        metrics.export("orchestrator")
        async with broker_session(self.settings, f"kiln-orchestrator-{self.worker}") as (nc, js):
            await atomic_batches(js)  # detected once, and logged, before any append
            cancels = CancelWatcher(js)
            await cancels.start()
            runs = await js.key_value(streams.RUNS_BUCKET)
            stale_after = self.settings.stale_run_after_s
            runner = GenerationRunner(
                js,
                self.providers,
                cancels,
                RunnerConfig(
                    worker=self.worker,
                    max_attempts=self.settings.command_max_deliver,
                    conflict_retry_s=self.settings.command_ack_wait_s,
                    heartbeat_s=max(min(stale_after / 6, 10.0), 0.2),
                    repair_rounds=max(0, self.settings.repair_rounds),
                ),
                Heartbeats(runs, self.worker),
                VerifierClient(
                    js,
                    pickup_s=self.settings.verify_pickup_s,
                    wait_s=self.settings.verify_wait_s,
                    enabled=self.settings.verify_enabled,
                ),
            )
            adverts = ProviderAdverts(
                await js.key_value(streams.PROVIDERS_BUCKET),
                self.worker,
                self.providers.configured(),
            )
            await adverts.publish()  # before the first command: gateways check against it
            advertising = asyncio.create_task(adverts.run(stop))
            watchdog = asyncio.create_task(
                Watchdog(nc, js, runs, worker=self.worker, stale_after_s=stale_after).run(stop)
            )
            config = streams.orchestrator_consumer(
                self.settings.command_ack_wait_s, self.settings.command_max_deliver
            )
            worker = PullWorker(
                js,
                service="orchestrator",
                stream=streams.COMMANDS_STREAM,
                config=config,
                max_deliveries=self.settings.command_max_deliver,
            )

            async def handle(msg: Msg) -> Outcome:
                try:
                    command = decode_command(msg.data)
                except DecodeError as exc:
                    return DeadLetter(exc.reason)
                if not isinstance(command, GenerateRequested):
                    return DeadLetter(
                        f"the work queue takes generate commands, not {type(command).__name__}"
                    )
                return await runner.run(command, deliveries_of(msg))

            async with health_endpoint(self.settings, nats_readiness(nc)):
                log.info("Orchestrator {worker} taking generate commands", worker=self.worker)
                self.ready.set()
                await worker.run_each(
                    handle,
                    stop,
                    concurrency=self.settings.orchestrator_concurrency,
                    heartbeat_s=max(self.settings.command_ack_wait_s / 3, 0.5),
                    grace_s=self.settings.shutdown_grace_s,
                )
                await cancels.stop()
                await watchdog
                await advertising
        log.info("Orchestrator {worker} stopped", worker=self.worker)
