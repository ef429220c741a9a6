"""Every Prometheus metric Kiln exports, defined in one place.

Each service process exports the ones it moves: the gateway on its own `/metrics`, the
orchestrator and storage on their small health server (`KILN_HEALTH_PORT`).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

FAST = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW = (0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# gateway
http_requests = Counter(
    "kiln_gateway_requests_total",
    "HTTP requests answered by the gateway",
    ["method", "route", "status"],
)
sse_open = Gauge("kiln_gateway_sse_connections", "SSE streams open now")
sse_events = Counter("kiln_gateway_sse_events_delivered_total", "Events written to SSE clients")
replay_seconds = Histogram(
    "kiln_gateway_replay_seconds",
    "Time to replay a generation's history into the shared log",
    buckets=FAST,
)

# orchestrator
phase_seconds = Histogram(
    "kiln_orchestrator_phase_seconds", "Duration of a phase", ["phase", "provider"], buckets=SLOW
)
llm_latency = Histogram(
    "kiln_orchestrator_llm_latency_seconds",
    "Latency of one LLM call",
    ["provider", "model"],
    buckets=SLOW,
)
llm_tokens = Counter(
    "kiln_orchestrator_llm_tokens_total",
    "Tokens sent to and received from LLMs",
    ["provider", "direction"],
)
generations_finished = Counter(
    "kiln_orchestrator_generations_total", "Generations that reached a terminal event", ["status"]
)
failures = Counter("kiln_orchestrator_failures_total", "Failed generations by kind", ["kind"])
generations_running = Gauge(
    "kiln_orchestrator_generations_running", "Generations this orchestrator runs now"
)

# storage
storage_lag = Gauge(
    "kiln_storage_lag_events", "Stream sequence of the newest event minus the last applied one"
)
storage_applied_seq = Gauge(
    "kiln_storage_applied_stream_seq", "Last stream sequence applied to SQL"
)
storage_batch_size = Histogram(
    "kiln_storage_batch_size",
    "Events per applied batch",
    buckets=(1, 2, 5, 10, 25, 50, 100, 256, 512, 1000),
)
storage_apply_seconds = Histogram(
    "kiln_storage_apply_seconds", "Time to apply and commit one batch", buckets=FAST
)
storage_events = Counter("kiln_storage_events_applied_total", "Events applied to SQL")
storage_checkpoint_seconds = Histogram(
    "kiln_storage_wal_checkpoint_seconds",
    "Time of one SQLite WAL checkpoint (off the projector's path)",
    buckets=FAST,
)


def exposition() -> tuple[bytes, str]:
    """The current metrics in Prometheus text format, and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
