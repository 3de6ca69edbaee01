"""All service configuration, read once from ``CHURN_*`` environment variables (or a .env file if present)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bundle.redaction import redact_url

DEFAULT_RISK_BANDS = {"low": 0.0, "medium": 0.3, "high": 0.6}
DEFAULT_PLAYBOOK = {
    "low": ["No action needed; include in regular loyalty communications"],
    "medium": [
        "Send a personalised engagement email highlighting unused services",
        "Offer a contract upgrade discount at next billing cycle",
    ],
    "high": [
        "Route to the retention team for a call within 48 hours",
        "Offer a retention discount or a longer contract at a lower rate",
        "Review recent support tickets and resolve open issues",
    ],
}


# Keys that examples and templates use: a service started with one of them has no secret at all.
PLACEHOLDER_KEYS = frozenset({"change-me", "changeme", "change_me", "secret", "password", "api-key", "apikey"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHURN_", env_file=".env", extra="ignore")

    # Where bundles live; ``current`` inside names the one to serve.
    model_dir: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: str = "info"
    # One line per request costs about as much as a prediction; on for debugging only.
    access_log: bool = False
    # FastAPI's own OpenTelemetry spans, metrics and logs per request, sent to the OpenTelemetry
    # providers the process configures. Off, each request skips even the check for a provider.
    opentelemetry: bool = False
    # Where worker processes share Prometheus metrics; wiped at every start. Default: a fresh temp dir
    # with several workers, none (metrics in memory) with one.
    metrics_multiproc_dir: Path | None = None
    # Where the workers of one run announce reloads to each other; ``python -m app`` sets it when it
    # starts several workers. Unset (one process): a reload concerns this process only.
    reload_dir: Path | None = None
    # How often each worker looks for a reload another worker announced (a small file read).
    reload_poll_seconds: float = Field(default=0.5, gt=0)
    # How long POST /admin/reload waits for every worker to report the new version before answering.
    reload_wait_seconds: float = Field(default=30.0, ge=0)
    # How long a background thread (monitoring's recorder, a batch off the event loop) may keep the
    # interpreter while a request waits for it; Python's default of 5 ms shows in tail latency.
    gil_switch_interval_ms: float = Field(default=1.0, gt=0, le=100)

    # On SIGTERM: how long /ready answers 503 while requests are still answered, before the server
    # stops (see app.shutdown). Orchestrators stop routing within a readiness probe period or two.
    shutdown_drain_seconds: float = Field(default=5.0, ge=0, le=300)
    # Connection handling, per worker (docs/deployment.md). Beyond ``limit_concurrency`` open connections
    # or requests in flight, a request gets an immediate 503 instead of a place in an unbounded queue;
    # uvicorn counts idle connections too, so set it only behind a proxy that bounds those (docker-compose's).
    limit_concurrency: int | None = Field(default=None, ge=1)
    # Seconds an idle keep-alive connection stays open after a response; a proxy must drop its own sooner.
    timeout_keep_alive: int = Field(default=5, ge=1)
    # Connections the kernel queues until a worker accepts them (capped by net.core.somaxconn).
    backlog: int = Field(default=2048, ge=1)

    # Required by /admin/reload and /feedback; without it those endpoints refuse every call.
    api_key: SecretStr | None = None

    # Risk bands: name -> lower bound of churn probability; the highest bound not above the score wins.
    risk_bands: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_RISK_BANDS))
    playbook: dict[str, list[str]] = Field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_PLAYBOOK.items()})
    top_reasons: int = Field(default=3, ge=0, le=20)

    max_batch_size: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Batches scored at once per worker; others wait their turn before their body is read. Scoring
    # holds the interpreter, so more at once would only add memory, not speed.
    max_concurrent_batches: int = Field(default=1, ge=1, le=64)
    # POST /feedback bodies (read before the API key is checked) and admin calls are bounded too.
    max_feedback_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    # The challenger (the bundle ``<model_dir>/challenger`` names) beside the champion: "shadow" scores a
    # share of calls with it off the caller's path, "canary" lets it answer a share of customers (by a
    # stable hash of customer_id), "off" does not load it. POST /admin/challenger changes both at run time.
    challenger_mode: Literal["off", "shadow", "canary"] = "off"
    challenger_share: float = Field(default=1.0, ge=0.0, le=1.0)
    # Calls waiting for the challenger in shadow; beyond it they are skipped (counted), never waited for.
    shadow_queue_size: int = Field(default=1_000, ge=1)

    # Monitoring. Off removes metrics, drift and the prediction log from the request path.
    monitoring_enabled: bool = True
    database_url: str = "sqlite:///predictions.sqlite3"
    prediction_log_retention_days: int = Field(default=90, ge=1)
    # Records per insert transaction: each write has a fixed cost, so fewer, larger ones are cheaper.
    prediction_log_batch_size: int = Field(default=2_000, ge=1)
    prediction_log_flush_seconds: float = Field(default=1.0, gt=0)
    prediction_log_queue_size: int = Field(default=100_000, ge=1)
    # Rows the log database cannot take now wait here, on local disk, until it takes them again (any
    # worker of the deployment replays them, after a restart too); one subdirectory per database.
    prediction_log_spool_dir: Path = Path("prediction-log-spool")
    # The spool's budget, all workers together; past it rows are lost (counted). 0 turns the spool off.
    prediction_log_spool_max_bytes: int = Field(default=1024**3, ge=0)
    # "always": every batch is spooled before it is sent, so a killed worker loses only the rows it had
    # not yet taken from its queue (at most CHURN_PREDICTION_LOG_FLUSH_SECONDS of them); "on_failure":
    # only rows the database refused are spooled (one file write less per flush).
    prediction_log_spool_mode: Literal["always", "on_failure"] = "always"
    # "journal": every answered row is also appended to this worker's journal file before the answer
    # leaves, so a worker killed with -9 loses nothing it answered (see app.monitoring.journal); it costs
    # each request a serialisation and a system call. "flush": a kill loses up to one flush interval.
    prediction_log_durability: Literal["flush", "journal"] = "flush"
    # "host": the workers of one host share the drift window through files; "database": every process
    # also keeps its counts in the log database, so replicas on several hosts compute drift as one service.
    drift_sharing: Literal["host", "database"] = "host"
    drift_window_seconds: int = Field(default=3600, ge=10)
    drift_slot_seconds: int = Field(default=60, ge=1)
    drift_min_count: int = Field(default=200, ge=1)
    drift_psi_threshold: float = Field(default=0.2, gt=0)
    drift_update_seconds: float = Field(default=5.0, gt=0)
    performance_window_days: int = Field(default=30, ge=1)
    performance_update_seconds: float = Field(default=30.0, gt=0)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Settings get logged and printed; the database password must not be.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "database_url" else value

    @field_validator("api_key")
    @classmethod
    def _api_key_is_not_a_placeholder(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and key.get_secret_value().strip().lower() in PLACEHOLDER_KEYS:
            raise ValueError("the API key is a well-known placeholder: set a secret one (e.g. openssl rand -hex 32)")
        return key

    @field_validator("risk_bands")
    @classmethod
    def _bands_cover_zero(cls, bands: dict[str, float]) -> dict[str, float]:
        if not bands:
            raise ValueError("at least one risk band is required")
        if any(not 0.0 <= bound <= 1.0 for bound in bands.values()):
            raise ValueError("risk band bounds must lie in [0, 1]")
        if min(bands.values()) != 0.0:
            raise ValueError("one risk band must start at 0.0 so every score has a band")
        return dict(sorted(bands.items(), key=lambda item: item[1]))

    @model_validator(mode="after")
    def _playbook_names_known_bands(self) -> Settings:
        unknown = set(self.playbook) - set(self.risk_bands)
        if unknown:
            raise ValueError(f"playbook names bands that are not defined in risk_bands: {sorted(unknown)}")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
