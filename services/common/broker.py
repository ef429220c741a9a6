"""The NATS connection every service uses, and the streams it needs.

Reconnects are tuned for a broker restart: a short wait between attempts and no limit on
their number, so a service is back within a second or two of the server, not 18 s later.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
from nats import errors as nats_errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import (
    BadRequestError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)

from contracts import streams
from contracts.providers import ADVERT_TTL_S
from services.common.logs import get_logger
from services.common.natsclient import KilnClient
from services.common.settings import Settings

log = get_logger(__name__)

# JetStream saying "not now": the broker is restarting, reconnecting, electing a leader
# (ServiceUnavailableError is its 503, error 10008) or slow. Retrying shortly succeeds; none
# of these is a bug of the caller or of Kiln.
NOT_NOW: tuple[type[Exception], ...] = (
    nats_errors.TimeoutError,
    nats_errors.FlushTimeoutError,
    nats_errors.NoRespondersError,
    nats_errors.NoServersError,
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionDrainingError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.StaleConnectionError,
    nats_errors.OutboundBufferLimitError,
    nats_errors.UnexpectedEOF,
    ServiceUnavailableError,
    NoStreamResponseError,
)

# "Duplicate message id is in process": a publish repeated while the broker is still
# storing the first one with its Nats-Msg-Id (a cluster's proposal in flight).
MSG_ID_IN_PROCESS = 10158
# JetStream's 503s that pass: "temporarily unavailable" (no leader yet) and "expected last
# sequence per subject temporarily unavailable". Its other 503s are refusals that asking
# again does not change ("store failed": a subject or the stream full, "insufficient
# resources", "JetStream not enabled", …).
TEMPORARY_503 = frozenset({None, 0, 10008, 10163})


def says_not_now(exc: BaseException) -> bool:
    """Whether `exc` is the broker saying "not now" (`NOT_NOW` but a lasting 503, or a
    repeated publish whose first is still being stored): asking again shortly succeeds."""
    if isinstance(exc, ServiceUnavailableError):
        return exc.err_code in TEMPORARY_503
    return isinstance(exc, NOT_NOW) or (
        isinstance(exc, nats.js.errors.APIError) and exc.err_code == MSG_ID_IN_PROCESS
    )


# A cluster just started: no meta leader yet (an API error), or not answering yet.
NOT_YET: tuple[type[Exception], ...] = (nats.js.errors.APIError, *NOT_NOW)

# How long a service waits out "not now" before calling the broker unavailable: longer
# than a cluster's leader election (seconds), and a broker restart with its reconnect.
NOT_NOW_WAIT_S = 60.0

T = TypeVar("T")


class BrokerUnavailable(RuntimeError):
    """The broker kept saying "not now" for longer than a caller waits."""


async def when_available(
    call: Callable[[], Awaitable[T]], *, what: str, wait_s: float = NOT_NOW_WAIT_S
) -> T:
    """`call()`, called again while the broker says "not now" (`says_not_now`: a leader
    election, a reconnect), for up to `wait_s`; then `BrokerUnavailable` saying what could
    not be done.

    Only for calls that are safe to repeat (reads, and publishes with a `Nats-Msg-Id`).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    delay = 0.1
    waited = False
    while True:
        try:
            return await call()
        except Exception as exc:
            if not says_not_now(exc):
                raise
            if loop.time() + delay > deadline:
                raise BrokerUnavailable(f"could not {what}: {exc!r}") from None
            if not waited:
                log.info("Waiting for the broker to {what}", what=what, error=repr(exc))
                waited = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


RECONNECT_WAIT_S = 0.25
PING_INTERVAL_S = 5


def connect_options(settings: Settings, name: str) -> dict[str, Any]:
    """nats.connect keyword arguments from the settings (servers, credentials, TLS)."""
    options: dict[str, Any] = {
        "servers": settings.nats_servers,
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": RECONNECT_WAIT_S,
        "connect_timeout": 2,
        "ping_interval": PING_INTERVAL_S,
        "max_outstanding_pings": 2,
        "pending_size": 64 * 1024 * 1024,
    }
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password or ""
    if settings.nats_token:
        options["token"] = settings.nats_token
    if settings.nats_creds:
        options["user_credentials"] = settings.nats_creds
    if settings.nats_nkey_seed:
        options["nkeys_seed"] = settings.nats_nkey_seed
    if settings.nats_tls_ca or settings.nats_tls_cert:
        context = ssl.create_default_context(cafile=settings.nats_tls_ca)
        if settings.nats_tls_cert:
            context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
        options["tls"] = context
    return options


async def connect(settings: Settings, name: str) -> Client:
    """A connected NATS client (`KilnClient`: faster header parsing and writing) that logs its disconnects
    and reconnects."""

    async def disconnected() -> None:
        log.warning("NATS connection lost; reconnecting", client=name)

    async def reconnected() -> None:
        log.info("NATS connection re-established", client=name, server=str(nc.connected_url))

    async def error(exc: Exception) -> None:
        log.warning("NATS client error: {error}", client=name, error=repr(exc))

    nc = KilnClient()
    await nc.connect(
        **connect_options(settings, name),
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
    )
    return nc


# Atomic batch publish came with nats-server 2.12 (`allow_atomic` on a stream).
ATOMIC_BATCHES_SINCE = (2, 12)


def takes_atomic_batches(nc: Client) -> bool:
    """Whether the connected nats-server has atomic batch publish."""
    version = nc.connected_server_version
    try:
        return (version.major, version.minor) >= ATOMIC_BATCHES_SINCE
    except (TypeError, ValueError, AttributeError):
        return False


async def ensure_streams_when_ready(
    js: JetStreamContext, replicas: int, timeout_s: float = 60.0
) -> None:
    """`ensure_streams` on a cluster just started: retried until JetStream has a meta
    leader and enough peers for `replicas`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            await ensure_streams(js, replicas)
            return
        except NOT_YET:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> None:
    """Create Kiln's streams and buckets, or bring their configuration up to date.

    The events stream allows atomic batches where the server has them."""
    atomic = takes_atomic_batches(js._nc)
    for make in streams.ALL_STREAMS:
        config = (
            streams.events_stream(replicas, atomic=atomic)
            if make is streams.events_stream
            else make(replicas)
        )
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != 10058:  # stream name already in use with a different configuration
                raise
            await js.update_stream(config)
    for bucket, description, ttl in _BUCKETS:
        try:
            await js.key_value(bucket)
        except (NotFoundError, nats.js.errors.BucketNotFoundError):
            await js.create_key_value(
                bucket=bucket, description=description, history=1, ttl=ttl, replicas=replicas
            )


_BUCKETS: tuple[tuple[str, str, float | None], ...] = (
    (streams.VERSIONS_BUCKET, "Latest version number of each project", None),
    (
        streams.RUNS_BUCKET,
        "Heartbeats of running generations (generation id → worker and time)",
        None,
    ),
    (
        streams.PROVIDERS_BUCKET,
        "The providers live orchestrators can run (provider → worker)",
        ADVERT_TTL_S,
    ),
)
"""Kiln's key-value buckets: name, description, how long a key lives (None: for ever)."""
