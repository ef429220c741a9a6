"""JetStream streams, key-value buckets and durable consumers, as configuration values."""

from __future__ import annotations

from typing import Any

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StoreCompression,
    StreamConfig,
)

from contracts import subjects
from contracts.limits import MAX_FILE_BYTES

EVENTS_STREAM = "KILN_EVENTS"
COMMANDS_STREAM = "KILN_CMDS"
CONTROL_STREAM = "KILN_CONTROL"
DLQ_STREAM = "KILN_DLQ"
VERIFY_STREAM = "KILN_VERIFY"
VERIFY_RESULTS_STREAM = "KILN_VERIFY_RESULTS"
BLOBS_STREAM = "KILN_BLOBS"
VERSIONS_BUCKET = "KILN_VERSIONS"
RUNS_BUCKET = "KILN_RUNS"
PROVIDERS_BUCKET = "KILN_PROVIDERS"

ORCHESTRATOR_CONSUMER = "orchestrator"
STORAGE_CONSUMER = "storage"
VERIFIER_CONSUMER = "verifier"

DUPLICATE_WINDOW_S = 120.0
# nats-server 2.15 caps consumers per stream at 1,000 unless a positive number is set.
MAX_CONSUMERS = 100_000
MAX_EVENT_BYTES = 1024 * 1024
MAX_BLOB_BYTES = MAX_FILE_BYTES
DAY_S = 24 * 3600.0


def _stream(
    name: str, description: str, subject: str, replicas: int, **options: Any
) -> StreamConfig:
    """A Kiln stream: the subjects under `subject`, stored on file in `replicas` copies,
    kept by limits unless `options` say otherwise (they hold what sets each stream apart)."""
    return StreamConfig(
        name=name,
        description=description,
        subjects=[subject],
        storage=StorageType.FILE,
        num_replicas=replicas,
        **{"retention": RetentionPolicy.LIMITS, **options},
    )


def events_stream(replicas: int = 1, *, atomic: bool = True) -> StreamConfig:
    """Every generation's events, kept until deleted: the source of truth.

    `atomic` lets a writer append a phase as one atomic batch (nats-server >= 2.12; an
    older server refuses a configuration that names the field, so it is left out there).
    Stored S2-compressed: a log of source code shrinks several times on disk.
    """
    return _stream(
        EVENTS_STREAM,
        "Kiln generation events, one subject per generation",
        subjects.ALL_EVENTS,
        replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_consumers=MAX_CONSUMERS,
        max_msg_size=MAX_EVENT_BYTES,
        discard=DiscardPolicy.NEW,
        allow_direct=True,
        allow_atomic=True if atomic else None,
        compression=StoreCompression.S2,
    )


def blobs_stream(replicas: int = 1) -> StreamConfig:
    """File contents, once per sha256: the content a `version.based_on` manifest names.

    One subject per sha256 keeping its first message only (a second publish of the same
    content is refused, and nothing is stored twice), kept until deleted like the log
    that refers to it, S2-compressed.
    """
    return _stream(
        BLOBS_STREAM,
        "Kiln file contents, one subject per sha256",
        subjects.ALL_BLOBS,
        replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_msg_size=MAX_BLOB_BYTES,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        allow_direct=True,
        compression=StoreCompression.S2,
    )


def _work_queue(name: str, description: str, subject: str, replicas: int) -> StreamConfig:
    """A work-queue stream: each message is taken by one consumer, then removed."""
    return _stream(
        name,
        description,
        subject,
        replicas,
        retention=RetentionPolicy.WORK_QUEUE,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


def commands_stream(replicas: int = 1) -> StreamConfig:
    """The work queue of generate commands: each is taken by one orchestrator."""
    return _work_queue(
        COMMANDS_STREAM,
        "Kiln commands for the orchestrators (work queue)",
        subjects.ALL_COMMANDS,
        replicas,
    )


def control_stream(replicas: int = 1) -> StreamConfig:
    """Cancel requests, kept a day so a late orchestrator still sees them."""
    return _stream(
        CONTROL_STREAM,
        "Kiln control messages (cancel requests)",
        subjects.ALL_CONTROL,
        replicas,
        max_age=DAY_S,
        max_msgs_per_subject=1,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


def dlq_stream(replicas: int = 1) -> StreamConfig:
    """Dead letters: messages a service could not take, with the reason, kept a week."""
    return _stream(
        DLQ_STREAM,
        "Kiln dead letters, one subject per service",
        subjects.ALL_DLQ,
        replicas,
        max_age=7 * DAY_S,
    )


def verify_stream(replicas: int = 1) -> StreamConfig:
    """The work queue of verify commands: each is taken by one verifier."""
    return _work_queue(
        VERIFY_STREAM,
        "Kiln verify commands for the verifiers (work queue)",
        subjects.VERIFY_REQUESTS,
        replicas,
    )


def verify_results_stream(replicas: int = 1) -> StreamConfig:
    """Verify results, one subject per generation and round, kept a week.

    The duplicate window makes a result published twice (a verifier redelivered the
    command after a crash, or retried a publish) one stored message: its `Nats-Msg-Id`
    is `<generation_id>:<round>`. Past that window, the subject still keeps only the
    first (one message per subject, new ones refused): a second verifier that ran the same
    round later adds nothing.
    """
    return _stream(
        VERIFY_RESULTS_STREAM,
        "Kiln verify results, one subject per generation and round",
        subjects.ALL_VERIFY_RESULTS,
        replicas,
        max_age=7 * DAY_S,
        max_msg_size=MAX_EVENT_BYTES,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_direct=True,
    )


ALL_STREAMS = (
    events_stream,
    blobs_stream,
    commands_stream,
    control_stream,
    dlq_stream,
    verify_stream,
    verify_results_stream,
)


def _pull_consumer(
    name: str,
    description: str,
    subject: str,
    ack_wait_s: float,
    max_deliver: int,
    max_ack_pending: int = 10_000,
) -> ConsumerConfig:
    """A durable pull consumer from the start of `subject`, each message acked explicitly.

    Workers that share one on a work queue each take what they ack."""
    return ConsumerConfig(
        durable_name=name,
        description=description,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait_s,
        max_deliver=max_deliver,
        max_ack_pending=max_ack_pending,
    )


def orchestrator_consumer(ack_wait_s: float, max_deliver: int) -> ConsumerConfig:
    """The orchestrators' shared durable pull consumer on the generate commands."""
    return _pull_consumer(
        ORCHESTRATOR_CONSUMER,
        "Kiln orchestrators take generate commands",
        subjects.GENERATE_COMMANDS,
        ack_wait_s,
        max_deliver,
    )


def storage_consumer_name(partition: int = 0, partitions: int = 1) -> str:
    """The durable consumer of one storage partition: `storage`, or `storage-<i>-of-<n>`.

    The name holds the partition count, so a new partitioning starts new consumers (and
    positions) instead of inheriting ones that skipped other partitions' events.
    """
    if partitions <= 1:
        return STORAGE_CONSUMER
    return f"{STORAGE_CONSUMER}-{partition}-of-{partitions}"


def storage_consumer(ack_wait_s: float, name: str = STORAGE_CONSUMER) -> ConsumerConfig:
    """A projector's durable pull consumer on every event (each partition reads them all)."""
    return _pull_consumer(
        name,
        "Kiln storage projects events into SQL",
        subjects.ALL_EVENTS,
        ack_wait_s,
        max_deliver=-1,
        max_ack_pending=20_000,
    )


def verifier_consumer(ack_wait_s: float, max_deliver: int) -> ConsumerConfig:
    """The verifiers' shared durable pull consumer on the verify commands."""
    return _pull_consumer(
        VERIFIER_CONSUMER,
        "Kiln verifiers take verify commands",
        subjects.VERIFY_REQUESTS,
        ack_wait_s,
        max_deliver,
    )
