"""Settings, read from the environment once.

Each field names its environment variable and says what it does; the README's settings
table is generated from this class (`kiln settings --markdown`), and a test fails when
the two differ.

It stays one module, longer than the others: it is one declarative table (a field per
setting, each a few lines), and one table is what keeps every variable's name unique, one
`load_settings` validating them all together, and the README generated from one place;
splitting it by service would only scatter the table.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec


def _setting(env: str, description: str, *, secret: bool = False) -> msgspec.Meta:
    return msgspec.Meta(description=description, extra={"env": env, "secret": secret})


MAX_STORAGE_PARTITIONS = 64


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of every service."""

    nats_url: Annotated[
        str | None,
        _setting(
            "NATS_URL",
            "NATS server(s) to use, comma-separated. Unset: `kiln up` starts an embedded "
            "nats-server; the single services connect to nats://127.0.0.1:4222.",
        ),
    ] = None
    nats_user: Annotated[str | None, _setting("KILN_NATS_USER", "NATS user name.")] = None
    nats_password: Annotated[
        str | None, _setting("KILN_NATS_PASSWORD", "NATS password.", secret=True)
    ] = None
    nats_token: Annotated[
        str | None, _setting("KILN_NATS_TOKEN", "NATS authentication token.", secret=True)
    ] = None
    nats_creds: Annotated[
        str | None, _setting("KILN_NATS_CREDS", "Path of a NATS .creds file (JWT and nkey).")
    ] = None
    nats_nkey_seed: Annotated[
        str | None, _setting("KILN_NATS_NKEY_SEED", "Path of a NATS nkey seed file.")
    ] = None
    nats_tls_ca: Annotated[
        str | None, _setting("KILN_NATS_TLS_CA", "CA certificate (PEM) to verify the NATS server.")
    ] = None
    nats_tls_cert: Annotated[
        str | None, _setting("KILN_NATS_TLS_CERT", "Client certificate (PEM) for NATS TLS.")
    ] = None
    nats_tls_key: Annotated[
        str | None, _setting("KILN_NATS_TLS_KEY", "Client key (PEM) for NATS TLS.")
    ] = None
    stream_replicas: Annotated[
        int, _setting("KILN_STREAM_REPLICAS", "Replicas of each JetStream stream (3 on a cluster).")
    ] = 1
    database_url: Annotated[
        str | None,
        _setting(
            "KILN_DATABASE_URL",
            "SQLAlchemy async URL of the read model. Unset: SQLite in the data directory.",
        ),
    ] = None
    data_dir: Annotated[
        str,
        _setting(
            "KILN_DATA_DIR",
            "Where `kiln up` keeps the embedded broker's store, the SQLite file and the "
            "generated token secret.",
        ),
    ] = ".kiln"
    api_keys: Annotated[
        str | None,
        _setting(
            "KILN_API_KEYS",
            "API keys as `user:key,user:key`. Unset: `kiln up` makes a development key.",
            secret=True,
        ),
    ] = None
    secret: Annotated[
        str | None,
        _setting(
            "KILN_SECRET",
            "HMAC secret for SSE tokens, shared by every gateway. Unset: generated into "
            "the data directory.",
            secret=True,
        ),
    ] = None
    sse_token_ttl_s: Annotated[
        float, _setting("KILN_SSE_TOKEN_TTL", "Lifetime of an SSE token, in seconds.")
    ] = 900.0
    sse_keepalive_s: Annotated[
        float, _setting("KILN_SSE_KEEPALIVE", "Seconds between SSE keepalive comments.")
    ] = 15.0
    host: Annotated[str, _setting("KILN_HOST", "Address the gateway binds.")] = "127.0.0.1"
    port: Annotated[int, _setting("KILN_PORT", "Port the gateway listens on.")] = 8000
    public_url: Annotated[
        str | None,
        _setting("KILN_PUBLIC_URL", "The URL users reach the gateway at, for printed links."),
    ] = None
    max_body_bytes: Annotated[
        int,
        _setting(
            "KILN_MAX_BODY_BYTES",
            "Largest request body the gateway accepts; a larger one answers 413 before any "
            "route sees it.",
        ),
    ] = 1024 * 1024
    generations_per_minute: Annotated[
        float,
        _setting(
            "KILN_GENERATIONS_PER_MINUTE",
            "New generations (creates and iterations) one API key may start per minute; 0 for "
            "no limit.",
        ),
    ] = 60.0
    generation_burst: Annotated[
        int,
        _setting(
            "KILN_GENERATION_BURST", "New generations one API key may start at once, in a burst."
        ),
    ] = 60
    max_header_bytes: Annotated[
        int,
        _setting(
            "KILN_MAX_HEADER_BYTES",
            "Largest request line and headers of one request, in bytes; more answers 431.",
        ),
    ] = 16 * 1024
    max_headers: Annotated[
        int,
        _setting("KILN_MAX_HEADERS", "Most header fields one request may have; more answers 431."),
    ] = 100
    header_timeout_s: Annotated[
        float,
        _setting(
            "KILN_HEADER_TIMEOUT",
            "Seconds a request's headers may take to arrive (from the connection, or from the "
            "request's first byte); then the gateway answers 408 and closes the connection.",
        ),
    ] = 10.0
    body_timeout_s: Annotated[
        float,
        _setting(
            "KILN_BODY_TIMEOUT",
            "Seconds a request's whole body may take to arrive, from the end of its headers; "
            "then the gateway answers 408 (if it has not answered yet) and closes the "
            "connection.",
        ),
    ] = 30.0
    max_streams_per_key: Annotated[
        int,
        _setting(
            "KILN_MAX_STREAMS_PER_KEY",
            "Open SSE streams one user may hold at once on one gateway; 0 for no limit.",
        ),
    ] = 2000
    sse_max_streams: Annotated[
        int,
        _setting(
            "KILN_SSE_MAX_STREAMS",
            "Open SSE streams one gateway serves at once, all users together; more answer "
            "503 with Retry-After. 0 for no limit.",
        ),
    ] = 10_000
    sse_max_unsent_bytes: Annotated[
        int,
        _setting(
            "KILN_SSE_MAX_UNSENT_BYTES",
            "Bytes one gateway's SSE streams may hold for clients that stopped reading (a "
            "write waiting 5 s); above it the longest-waiting of those streams are closed, "
            "and their clients resume with Last-Event-ID. 0 for no limit.",
        ),
    ] = 64 * 1024 * 1024
    sse_max_write_bytes: Annotated[
        int,
        _setting(
            "KILN_SSE_MAX_WRITE_BYTES",
            "Largest write of one SSE stream; a stream whose client does not read holds about "
            "two writes unsent.",
        ),
    ] = 64 * 1024
    sse_write_timeout_s: Annotated[
        float,
        _setting(
            "KILN_SSE_WRITE_TIMEOUT",
            "Seconds an SSE client may leave a write unread before its stream is closed (it "
            "resumes with Last-Event-ID). 0 for no deadline.",
        ),
    ] = 30.0
    command_ack_wait_s: Annotated[
        float,
        _setting(
            "KILN_COMMAND_ACK_WAIT",
            "Seconds before a generate command held by a silent orchestrator is handed to "
            "another (a running one renews it).",
        ),
    ] = 10.0
    command_max_deliver: Annotated[
        int,
        _setting(
            "KILN_COMMAND_MAX_DELIVER", "Attempts at a generate command before it is given up."
        ),
    ] = 5
    stale_run_after_s: Annotated[
        float,
        _setting(
            "KILN_STALE_RUN_AFTER",
            "Seconds without an orchestrator heartbeat after which an unfinished generation is "
            "marked failed by the watchdog.",
        ),
    ] = 120.0
    orchestrator_concurrency: Annotated[
        int,
        _setting(
            "KILN_ORCHESTRATOR_CONCURRENCY",
            "Generations one orchestrator runs at once (most of a generation's time is spent "
            "waiting on the LLM and the verifier, not on a core).",
        ),
    ] = 16
    shutdown_grace_s: Annotated[
        float,
        _setting(
            "KILN_SHUTDOWN_GRACE",
            "Seconds a stopping orchestrator lets its running generations go on; then it hands "
            "them back to the work queue and another orchestrator resumes each at its "
            "unfinished phase.",
        ),
    ] = 5.0
    offline_phase_delay_s: Annotated[
        float,
        _setting(
            "KILN_OFFLINE_PHASE_DELAY",
            "Seconds the offline provider waits in each phase (for demos and tests).",
        ),
    ] = 0.0
    gemini_api_key: Annotated[
        str | None,
        _setting("GEMINI_API_KEY", "Gemini API key (GOOGLE_API_KEY also works).", secret=True),
    ] = None
    google_api_key: Annotated[
        str | None,
        _setting("GOOGLE_API_KEY", "Gemini API key, if GEMINI_API_KEY is unset.", secret=True),
    ] = None
    gemini_model: Annotated[
        str, _setting("KILN_GEMINI_MODEL", "Gemini model used when a request names none.")
    ] = "gemini-2.5-flash"
    gemini_base_url: Annotated[
        str | None,
        _setting("KILN_GEMINI_BASE_URL", "Base URL of the Gemini API (proxies and tests)."),
    ] = None
    openai_base_url: Annotated[
        str | None,
        _setting(
            "KILN_OPENAI_BASE_URL",
            "Base URL of an OpenAI-compatible chat-completions API for the `openai` provider "
            "(OpenAI, Ollama `http://127.0.0.1:11434/v1`, vLLM, LM Studio, llama.cpp server). "
            "Unset: the provider is off.",
        ),
    ] = None
    openai_api_key: Annotated[
        str | None,
        _setting(
            "KILN_OPENAI_API_KEY",
            "API key for that endpoint, sent as a bearer token (local servers need none).",
            secret=True,
        ),
    ] = None
    openai_model: Annotated[
        str,
        _setting("KILN_OPENAI_MODEL", "Model of the `openai` provider when a request names none."),
    ] = "gpt-4o-mini"
    llm_timeout_s: Annotated[
        float,
        _setting(
            "KILN_LLM_TIMEOUT",
            "Seconds an LLM call may wait for the next bytes before it is retried as a timeout.",
        ),
    ] = 120.0
    llm_max_retries: Annotated[
        int,
        _setting(
            "KILN_LLM_MAX_RETRIES",
            "Retries of one LLM call after a rate limit, a server error or a timeout.",
        ),
    ] = 4
    llm_retry_delay_s: Annotated[
        float,
        _setting(
            "KILN_LLM_RETRY_DELAY",
            "First backoff in seconds after a server error or timeout; it doubles each retry.",
        ),
    ] = 1.0
    llm_max_retry_delay_s: Annotated[
        float,
        _setting(
            "KILN_LLM_MAX_RETRY_DELAY",
            "Longest wait in seconds for a rate limit; a provider asking for longer fails the "
            "phase with a message saying so.",
        ),
    ] = 300.0
    llm_max_output_tokens: Annotated[
        int | None,
        _setting(
            "KILN_LLM_MAX_OUTPUT_TOKENS",
            "Cap on the output tokens of one LLM call. Unset: the model's own limit.",
        ),
    ] = None
    llm_context_chars: Annotated[
        int,
        _setting(
            "KILN_LLM_CONTEXT_CHARS",
            "Characters of existing files one phase prompt may quote; beyond it (and for "
            "large files) files are summarised.",
        ),
    ] = 200_000
    storage_partitions: Annotated[
        int,
        _setting(
            "KILN_STORAGE_PARTITIONS",
            "Storage projectors sharing the database, each projecting the projects of its "
            "partition (the same on every projector; see docs/operations.md).",
        ),
    ] = 1
    storage_partition: Annotated[
        int,
        _setting(
            "KILN_STORAGE_PARTITION",
            "This projector's partition, 0 to KILN_STORAGE_PARTITIONS - 1.",
        ),
    ] = 0
    verify_runtime: Annotated[
        str | None,
        _setting(
            "KILN_VERIFY_RUNTIME",
            "The verify runtime: the virtual environment (pinned in "
            "services/verifier/runtime-requirements.txt) every sandboxed run uses, read-only. "
            "Unset: `.venv-verify` beside Kiln's code, as `./kiln` makes it.",
        ),
    ] = None
    verify_bwrap: Annotated[
        str | None,
        _setting(
            "KILN_VERIFY_BWRAP",
            "Path of bubblewrap, the verifier's sandbox. Unset: `bwrap` on PATH, else "
            "/usr/bin/bwrap. Where it cannot run, every version is unverified, saying why.",
        ),
    ] = None
    verify_concurrency: Annotated[
        int, _setting("KILN_VERIFY_CONCURRENCY", "Versions one verifier verifies at once.")
    ] = 2
    verify_timeout_s: Annotated[
        float,
        _setting(
            "KILN_VERIFY_TIMEOUT",
            "Seconds a version's test run may take (wall clock); then every process of the "
            "run is killed and the result says it timed out.",
        ),
    ] = 120.0
    verify_cpu_s: Annotated[
        int, _setting("KILN_VERIFY_CPU_SECONDS", "CPU seconds each process of a run may use.")
    ] = 120
    verify_memory_mb: Annotated[
        int,
        _setting("KILN_VERIFY_MEMORY_MB", "Address space of each process of a run, in MiB."),
    ] = 2048
    verify_max_processes: Annotated[
        int,
        _setting("KILN_VERIFY_MAX_PROCESSES", "Processes and threads a run may have at once."),
    ] = 64
    verify_disk_mb: Annotated[
        int,
        _setting(
            "KILN_VERIFY_DISK_MB",
            "Size of a run's one writable place (a tmpfs: its copy of the project, its "
            "temporary directory and home), and the largest file it may write, in MiB.",
        ),
    ] = 256
    verify_uid_base: Annotated[
        int,
        _setting(
            "KILN_VERIFY_UID_BASE",
            "When the verifier runs as root, each sandbox runs as an unprivileged uid from "
            "this one up (one per verifier process and slot), so the process limit counts "
            "only that run.",
        ),
    ] = 61000
    verify_ack_wait_s: Annotated[
        float,
        _setting(
            "KILN_VERIFY_ACK_WAIT",
            "Seconds before a verify command held by a silent verifier is handed to another "
            "(a running one renews it).",
        ),
    ] = 10.0
    verify_max_deliver: Annotated[
        int,
        _setting("KILN_VERIFY_MAX_DELIVER", "Attempts at a verify command before it is given up."),
    ] = 5
    verify_enabled: Annotated[
        bool,
        _setting(
            "KILN_VERIFY",
            "Whether the orchestrator has each version's own tests run by a verifier; "
            "false marks every version unverified, saying so.",
        ),
    ] = True
    verify_pickup_s: Annotated[
        float,
        _setting(
            "KILN_VERIFY_PICKUP",
            "Seconds the orchestrator waits for any sign of a running verifier before it "
            "calls a version unverified (a busy verifier counts as running).",
        ),
    ] = 15.0
    verify_wait_s: Annotated[
        float,
        _setting(
            "KILN_VERIFY_WAIT",
            "Seconds the orchestrator waits for a verifier's answer (queueing included) "
            "before it calls a version unverified.",
        ),
    ] = 900.0
    repair_rounds: Annotated[
        int,
        _setting(
            "KILN_REPAIR_ROUNDS",
            "Repair rounds at most when an LLM version's own tests fail: its failing tests go "
            "back to the model, and the version is verified again (0 turns repair off).",
        ),
    ] = 2
    verify_unsandboxed_dev_only: Annotated[
        bool,
        _setting(
            "KILN_VERIFY_UNSANDBOXED_DEV_ONLY",
            "DEVELOPMENT ONLY: where bubblewrap cannot run, run generated code WITHOUT a "
            "sandbox (resource limits and an empty environment only). Never set it where "
            "generated code is not trusted.",
        ),
    ] = False
    health_host: Annotated[
        str,
        _setting(
            "KILN_HEALTH_HOST",
            "Address the orchestrator's, storage's and verifier's health server binds.",
        ),
    ] = "127.0.0.1"
    health_port: Annotated[
        int,
        _setting(
            "KILN_HEALTH_PORT",
            "Port of the orchestrator's, storage's or verifier's /healthz, /readyz and /metrics "
            "(0: off); the gateway's too with KILN_METRICS_ACCESS=health-port.",
        ),
    ] = 0
    metrics_access: Annotated[
        Literal["public", "key", "health-port"],
        _setting(
            "KILN_METRICS_ACCESS",
            "Who may read the gateway's /metrics: `public` (anyone who reaches its port), "
            "`key` (`Authorization: Bearer <an API key>`, like the API), or `health-port` "
            "(served only on KILN_HEALTH_HOST:KILN_HEALTH_PORT, 404 on the API port).",
        ),
    ] = "public"
    log_format: Annotated[
        Literal["text", "json"],
        _setting("KILN_LOG_FORMAT", "`text` for people, `json` for log collectors."),
    ] = "text"
    log_level: Annotated[str, _setting("KILN_LOG_LEVEL", "Log level.")] = "INFO"

    def storage_partitioning(self) -> tuple[int, int]:
        """(partition, partitions) of this storage projector; SettingsError when out of range."""
        partitions, partition = self.storage_partitions, self.storage_partition
        if not 1 <= partitions <= MAX_STORAGE_PARTITIONS:
            raise SettingsError(
                f"KILN_STORAGE_PARTITIONS must be between 1 and {MAX_STORAGE_PARTITIONS}, "
                f"not {partitions}"
            )
        if not 0 <= partition < partitions:
            raise SettingsError(
                f"KILN_STORAGE_PARTITION must be between 0 and {partitions - 1} "
                f"(KILN_STORAGE_PARTITIONS is {partitions}), not {partition}"
            )
        return partition, partitions

    @property
    def nats_servers(self) -> list[str]:
        """The NATS URLs to connect to."""
        return [
            u.strip() for u in (self.nats_url or "nats://127.0.0.1:4222").split(",") if u.strip()
        ]

    @property
    def data_path(self) -> Path:
        """The data directory as a path."""
        return Path(self.data_dir)

    @property
    def effective_database_url(self) -> str:
        """The read model's URL: the setting, or SQLite in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_path / 'kiln.db').resolve()}"

    @property
    def effective_gemini_key(self) -> str | None:
        """The Gemini key from GEMINI_API_KEY or GOOGLE_API_KEY."""
        return self.gemini_api_key or self.google_api_key

    def secret_values(self) -> list[str]:
        """Every secret setting that is set: what logs and errors must never show."""
        values: list[str] = []
        for info in setting_fields():
            value = getattr(self, info.name)
            if info.secret and value:
                values.append(str(value))
        if self.api_keys:
            values.extend(key for _, key in parse_api_keys(self.api_keys).items())
        return values


class SettingInfo(msgspec.Struct, frozen=True):
    """One setting as the README documents it."""

    name: str
    env: str
    default: Any
    description: str
    secret: bool


def setting_fields() -> list[SettingInfo]:
    """Every setting with its environment variable, default and description."""
    info = msgspec.inspect.type_info(Settings)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = []
    for f in info.fields:
        meta = _meta_of(f.type)
        extra = meta.extra or {}
        fields.append(
            SettingInfo(
                name=f.name,
                env=extra["env"],
                default=f.default if f.default is not msgspec.NODEFAULT else None,
                description=meta.description or "",
                secret=bool(extra.get("secret")),
            )
        )
    return fields


def _meta_of(t: msgspec.inspect.Type) -> msgspec.Meta:
    assert isinstance(t, msgspec.inspect.Metadata), "every setting is Annotated with _setting()"
    description = (t.extra_json_schema or {}).get("description", "")
    return msgspec.Meta(description=description, extra=t.extra or {})


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the environment (and explicit overrides, which win)."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for info in setting_fields():
        value = env.get(info.env)
        if value is not None and value != "":
            raw[info.name] = value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_named(str(exc), raw)) from None


def _named(problem: str, raw: Mapping[str, Any]) -> str:
    """msgspec's `Expected int, got str - at $.port` as `KILN_PORT='x': Expected int, got str`."""
    message, _, where = problem.rpartition(" - at `$.")
    field = where.rstrip("`")
    envs = {info.name: info.env for info in setting_fields()}
    if not message or field not in envs:
        return f"invalid setting: {problem}"
    return f"invalid setting {envs[field]}={str(raw.get(field, ''))!r}: {message}"


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it."""


def parse_api_keys(value: str) -> dict[str, str]:
    """`user:key,user:key` → {user: key}; SettingsError when malformed."""
    keys: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, key = item.partition(":")
        if not sep or not user.strip() or len(key.strip()) < 8:
            raise SettingsError(
                "KILN_API_KEYS must look like 'user:key,user:key' with keys of 8 or more characters"
            )
        keys[user.strip()] = key.strip()
    return keys


def token_secret(settings: Settings) -> bytes:
    """The SSE-token secret: KILN_SECRET, or one generated once into the data directory."""
    if settings.secret:
        return settings.secret.encode()
    path = settings.data_path / "secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()
