"""This orchestrator's providers, advertised to the gateways (contracts/providers.py)."""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
from nats.js.kv import KeyValue

from contracts.providers import ADVERT_REFRESH_S
from services.common.logs import get_logger

log = get_logger(__name__)


class ProviderAdverts:
    """Writes a key per configured provider now and every `refresh_s`. A stopped worker's
    keys are left to expire: deleting them could briefly hide a provider that another
    orchestrator runs too, and a stale key costs no more than a generation that the
    orchestrators fail with what to configure."""

    def __init__(
        self, kv: KeyValue, worker: str, providers: list[str], refresh_s: float = ADVERT_REFRESH_S
    ) -> None:
        self.kv = kv
        self.worker = worker
        self.providers = providers
        self.refresh_s = refresh_s

    async def publish(self) -> None:
        """Advertise every provider once."""
        for provider in self.providers:
            await self.kv.put(provider, self.worker.encode())

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh the adverts until `stop`."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.refresh_s)
            if stop.is_set():
                break
            try:
                await self.publish()
            except nats.errors.Error as exc:
                log.warning(
                    "Could not refresh the providers {worker} advertises: {error}",
                    worker=self.worker,
                    error=repr(exc),
                )
