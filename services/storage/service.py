"""The storage service: one durable pull consumer on every event, feeding the projector."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from contracts.streams import EVENTS_STREAM, storage_consumer, storage_consumer_name
from services.common import metrics
from services.common.consumer import PullWorker
from services.common.heap import BATCH_YOUNG_THRESHOLD, freeze_startup_heap
from services.common.host import broker_session, health_endpoint
from services.common.logs import get_logger
from services.common.settings import Settings
from services.storage.checkpoint import WalCheckpointer, sqlite_file
from services.storage.db import check_migrated, create_engine, shown_url
from services.storage.projector import Projector
from services.storage.queries import ReadModel

log = get_logger(__name__)

ACK_WAIT_S = 30.0
BATCH = 1000
# Events are the source of truth: a database outage, however long, must make the
# projector wait and retry, never dead-letter an event it could not store.
MAX_DELIVERIES = 1_000_000
LAG_INTERVAL_S = 1.0


class StorageService:
    """Projects every generation's events into the read model until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.projector: Projector | None = None
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and project until `stop` is set; then close the NATS connection and the database."""
        metrics.export("storage")
        partition, partitions = self.settings.storage_partitioning()
        url = self.settings.effective_database_url
        engine = create_engine(url, writer=True)
        try:
            await check_migrated(engine)
            async with broker_session(self.settings, "kiln-storage") as (nc, js):
                name = storage_consumer_name(partition, partitions)
                config = storage_consumer(ack_wait_s=ACK_WAIT_S, name=name)
                projector = Projector(
                    engine,
                    consumer=name,
                    js=js,
                    stream=EVENTS_STREAM,
                    partition=partition,
                    partitions=partitions,
                )
                self.projector = projector
                position = await projector.position()
                projector.last_applied_stream_seq = position
                await _resume_at(js, config, position)
                worker = PullWorker(
                    js,
                    service="storage",
                    stream=EVENTS_STREAM,
                    config=config,
                    max_deliveries=MAX_DELIVERIES,
                    # The projector reads an event from its JSON and its stream sequence
                    # from the reply subject: the ~10 headers of each are not parsed.
                    headers=False,
                )
                read_model = ReadModel(engine)

                async def readiness() -> dict[str, str]:
                    try:
                        await asyncio.wait_for(read_model.ping(), 2.0)
                        database = "ok"
                    except Exception as exc:
                        database = f"unavailable: {exc!r}"[:200]
                    return {
                        "nats": "ok" if nc.is_connected else "disconnected",
                        "database": database,
                    }

                async with health_endpoint(self.settings, readiness):
                    log.info(
                        "Storage projecting {stream} into {database} after stream seq {position}"
                        + (" (partition {partition} of {partitions})" if partitions > 1 else ""),
                        stream=EVENTS_STREAM,
                        database=shown_url(engine.url),
                        position=position,
                        partition=partition,
                        partitions=partitions,
                        consumer=name,
                    )
                    freeze_startup_heap(BATCH_YOUNG_THRESHOLD)
                    self.ready.set()
                    background = [asyncio.create_task(_report_lag(js, projector, stop))]
                    database_file = sqlite_file(engine.url)
                    if database_file is not None:
                        checkpointer = WalCheckpointer(database_file)
                        background.append(asyncio.create_task(checkpointer.run(stop)))
                    try:
                        await worker.run_batches(
                            projector.handle, stop, prepare=projector.prepare, batch=BATCH
                        )
                    finally:
                        for task in background:
                            task.cancel()
                        await asyncio.gather(*background, return_exceptions=True)
        finally:
            await engine.dispose()
            log.info("Storage stopped")


async def _report_lag(js: JetStreamContext, projector: Projector, stop: asyncio.Event) -> None:
    """Set the lag gauge (the stream's last sequence minus the applied one) every second."""
    while not stop.is_set():
        with contextlib.suppress(Exception):
            info = await js.stream_info(EVENTS_STREAM)
            last = int(info.state.last_seq)
            metrics.storage_lag.set(max(last - projector.last_applied_stream_seq, 0))
            metrics.storage_applied_seq.set(projector.last_applied_stream_seq)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LAG_INTERVAL_S)


async def _resume_at(js: JetStreamContext, config: ConsumerConfig, position: int) -> None:
    """Make the durable consumer deliver from `position + 1` when it would not.

    After a crash, messages delivered but never applied wait out their ack wait before
    they are redelivered, while newer ones flow at once; the projector would hold those
    back until the old ones return. Starting the consumer at the position avoids the wait.
    It also keeps a lost consumer from replaying the whole stream.
    """
    name = config.durable_name
    assert name, "the storage consumer is durable"
    try:
        info = await js.consumer_info(EVENTS_STREAM, name)
    except NotFoundError:
        info = None
    stream = await js.stream_info(EVENTS_STREAM)
    last = int(stream.state.last_seq)
    if position > last:
        log.error(
            "The database has applied stream seq {position} but {stream} ends at {last}: "
            "the stream was recreated or the database belongs to another one; "
            "events up to seq {position} will be skipped",
            position=position,
            stream=EVENTS_STREAM,
            last=last,
        )
        return
    if info is None and position == 0:
        return
    if info is not None and int(info.delivered.stream_seq or 0) <= position:
        return
    if info is not None:
        await js.delete_consumer(EVENTS_STREAM, name)
    await js.add_consumer(
        EVENTS_STREAM,
        dataclasses.replace(
            config, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=position + 1
        ),
    )
    log.info(
        "Consumer {consumer} restarts after stream seq {position}",
        consumer=name,
        position=position,
    )
