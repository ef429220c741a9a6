"""Every Prometheus metric Kiln exports, defined in one place.

Each metric belongs to one service, and a process exports only the services it runs
(`export("gateway")` when the gateway starts): a gateway never shows storage's counters as
zeros. The gateway serves them on its own `/metrics`, the other services on their small
health server (`KILN_HEALTH_PORT`).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import Collector

Service = Literal["gateway", "orchestrator", "storage", "verifier"]
MEDIA_TYPE = "text/plain; version=0.0.4"
CONTENT_TYPE = f"{MEDIA_TYPE}; charset=utf-8"
"""The one content type of every `/metrics` answer (Litestar adds the charset itself)."""

M = TypeVar("M", Counter, Gauge, Histogram)
_GROUPS: dict[str, list[Collector]] = {}
_exported: set[str] = set()


def _of(service: Service, metric_type: type[M], *args: Any, **kwargs: Any) -> M:
    kwargs["registry"] = None  # registered by `export`, in the processes that run `service`
    metric = metric_type(*args, **kwargs)
    _GROUPS.setdefault(service, []).append(metric)
    return metric


def export(service: Service) -> None:
    """Make this process export `service`'s metrics (once; a no-op after)."""
    if service in _exported:
        return
    _exported.add(service)
    for metric in _GROUPS.get(service, []):
        REGISTRY.register(metric)


FAST = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW = (0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# gateway
http_requests = _of(
    "gateway",
    Counter,
    "kiln_gateway_requests_total",
    "HTTP requests answered by the gateway (route `unmatched` for a 404/405 without a route; "
    "status 499 for a client that closed the connection before its answer)",
    ["method", "route", "status"],
)
http_seconds = _of(
    "gateway",
    Histogram,
    "kiln_gateway_request_seconds",
    "Time to answer an HTTP request (an SSE stream: until its response starts)",
    ["method", "route"],
    buckets=FAST,
)
sse_open = _of("gateway", Gauge, "kiln_gateway_sse_connections", "SSE streams open now")
sse_events = _of(
    "gateway", Counter, "kiln_gateway_sse_events_delivered_total", "Events written to SSE clients"
)
sse_cut = _of(
    "gateway",
    Counter,
    "kiln_gateway_sse_streams_cut_total",
    "SSE streams closed because their client did not read (`stalled`: past the write "
    "deadline; `shed`: the gateway's unsent bytes were over their cap)",
    ["reason"],
)
sse_refused = _of(
    "gateway",
    Counter,
    "kiln_gateway_sse_streams_refused_total",
    "SSE streams refused with 503 at the gateway-wide cap of open streams (`streams`)",
    ["reason"],
)
sse_unsent_bytes = _of(
    "gateway",
    Gauge,
    "kiln_gateway_sse_unsent_bytes",
    "Bytes held by SSE streams whose clients stopped reading (a write waiting 5 s or more)",
)
http_refused = _of(
    "gateway",
    Counter,
    "kiln_gateway_http_refused_total",
    "Requests refused by the HTTP protocol, before or without a route (`headers_too_large`: "
    "431; `header_timeout`: 408 or closed; `body_too_large`: 413, or closed once answered; "
    "`body_timeout`: 408, or closed once answered)",
    ["reason"],
)
replay_seconds = _of(
    "gateway",
    Histogram,
    "kiln_gateway_replay_seconds",
    "Time to replay a generation's history into the shared log",
    buckets=FAST,
)

# orchestrator
phase_seconds = _of(
    "orchestrator",
    Histogram,
    "kiln_orchestrator_phase_seconds",
    "Duration of a phase",
    ["phase", "provider"],
    buckets=SLOW,
)
llm_latency = _of(
    "orchestrator",
    Histogram,
    "kiln_orchestrator_llm_latency_seconds",
    "Latency of one LLM call",
    ["provider", "model"],
    buckets=SLOW,
)
llm_tokens = _of(
    "orchestrator",
    Counter,
    "kiln_orchestrator_llm_tokens_total",
    "Tokens sent to and received from LLMs",
    ["provider", "direction"],
)
generations_finished = _of(
    "orchestrator",
    Counter,
    "kiln_orchestrator_generations_total",
    "Generations that reached a terminal event",
    ["status"],
)
failures = _of(
    "orchestrator",
    Counter,
    "kiln_orchestrator_failures_total",
    "Failed generations by kind",
    ["kind"],
)
generations_running = _of(
    "orchestrator",
    Gauge,
    "kiln_orchestrator_generations_running",
    "Generations this orchestrator runs now",
)

# storage
storage_lag = _of(
    "storage",
    Gauge,
    "kiln_storage_lag_events",
    "Stream sequence of the newest event minus the last applied one",
)
storage_applied_seq = _of(
    "storage", Gauge, "kiln_storage_applied_stream_seq", "Last stream sequence applied to SQL"
)
storage_batch_size = _of(
    "storage",
    Histogram,
    "kiln_storage_batch_size",
    "Events per applied batch",
    buckets=(1, 2, 5, 10, 25, 50, 100, 256, 512, 1000),
)
storage_apply_seconds = _of(
    "storage",
    Histogram,
    "kiln_storage_apply_seconds",
    "Time to apply and commit one batch",
    buckets=FAST,
)
storage_events = _of(
    "storage", Counter, "kiln_storage_events_applied_total", "Events applied to SQL"
)
storage_checkpoint_seconds = _of(
    "storage",
    Histogram,
    "kiln_storage_wal_checkpoint_seconds",
    "Time of one SQLite WAL checkpoint (off the projector's path)",
    buckets=FAST,
)


def exposition() -> tuple[bytes, str]:
    """The current metrics in Prometheus text format, and its content type."""
    return generate_latest(), CONTENT_TYPE
