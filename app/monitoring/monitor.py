"""The monitor the service talks to: a thin facade over metrics, drift, the prediction log and feedback.

The request path pays for the HTTP middlewares (``app.monitoring.http``) and :meth:`Monitor.record`,
an append to a queue. Everything else runs in background threads started by :meth:`Monitor.start`:
the recorder's (prediction metrics, drift counts, the prediction log), and a periodic one (drift
and estimated-performance figures every ``drift_update_seconds``, realized performance every
``performance_update_seconds`` and right after feedback, the memory gauge, dead workers' gauges).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from fastapi import APIRouter, FastAPI

from app.monitoring.challenger_report import Comparisons, compare_window
from app.monitoring.compare import ProfitTerms
from app.monitoring.drift_monitor import DriftMonitor
from app.monitoring.drift_sharing import SharedWindow
from app.monitoring.drift_stats import DriftSnapshot
from app.monitoring.events import PredictionEvent
from app.monitoring.feedback import FeedbackResult, OutcomeIn, apply_outcomes, status_counts
from app.monitoring.http import install_http_metrics, request_started_at
from app.monitoring.log_store import SECONDS_PER_DAY
from app.monitoring.metrics import Metrics, multiprocess_directory
from app.monitoring.performance import PerformanceTracker
from app.monitoring.prediction_log import PredictionLog
from app.monitoring.recorder import EventRecorder
from app.monitoring.report import daily_report
from app.monitoring.routes import build_disabled_router, build_router
from app.monitoring.shadow_log import ShadowLog
from app.monitoring.throttled import ThrottledErrors
from app.settings import Settings
from bundle.manifest import Manifest

logger = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 60.0  # dead workers' gauges, drift tables out of the window, the memory gauge


class Monitor:
    """Monitoring of one service process (one per worker)."""

    enabled = True

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = Metrics(multiprocess_directory())
        # Replicas on several hosts share the drift window through the log database.
        shared = SharedWindow(lambda: self.log.engine) if settings.drift_sharing == "database" else None
        self.drift = DriftMonitor(settings, self.metrics, shared)
        self.log = PredictionLog(
            settings.database_url,
            self.metrics,
            batch_size=settings.prediction_log_batch_size,
            retention_days=settings.prediction_log_retention_days,
            spool_dir=settings.prediction_log_spool_dir,
            spool_max_bytes=settings.prediction_log_spool_max_bytes,
            write_ahead=settings.prediction_log_spool_mode == "always",
            journal=settings.prediction_log_durability == "journal",
            clock=clock,
        )
        self.recorder = EventRecorder(
            self.metrics,
            self.drift,
            self.log,
            queue_size=settings.prediction_log_queue_size,
            batch_size=settings.prediction_log_batch_size,
            flush_seconds=settings.prediction_log_flush_seconds,
        )
        self.shadow = ShadowLog(self.metrics, self.log)
        self.comparisons = Comparisons(settings.model_dir, clock)
        self.performance = PerformanceTracker(self.metrics, self.log, settings.performance_window_days, clock)
        self.router: APIRouter = build_router(self)
        self._model_labels: tuple[str, str, str, str] | None = None
        self._challenger_labels: tuple[str, str] | None = None
        self._stopping = threading.Event()
        self._performance_due = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = ThrottledErrors(logger)
        self.metrics.model_ready.set(0)
        self.metrics.set_memory()

    def install(self, app: FastAPI) -> None:
        """Add the monitoring routes and the HTTP metrics middlewares to ``app``."""
        app.include_router(self.router)
        install_http_metrics(app, self.metrics.registry)

    # ---- lifespan -----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping.clear()
        # A worker restarted after being killed: its predecessor's live gauges go now, not in a minute.
        self.metrics.sweep_dead_workers()
        self.log.start()
        self.recorder.start()
        self._thread = threading.Thread(target=self._periodic, name="monitor-periodic", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop background work, write every recorded prediction, retire this worker's live gauges."""
        self._stopping.set()
        self._performance_due.set()
        await asyncio.to_thread(self._stop_blocking)

    def _stop_blocking(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.recorder.stop()
        self.log.stop()
        self.drift.close()
        self.metrics.mark_dead()

    # ---- model lifecycle -------------------------------------------------------------------------------
    def model_loaded(self, manifest: Manifest) -> None:
        """A model is serving (startup or successful reload): info gauge, ready, drift against its reference."""
        labels = (manifest.version, manifest.model_family, manifest.framework, manifest.created_at)
        previous, self._model_labels = self._model_labels, labels
        if previous is not None and previous != labels:
            self.metrics.model_info.labels(*previous).set(0)
            if not self.metrics.multiprocess_dir:
                self.metrics.retire_series(self.metrics.model_info, previous)
        self.metrics.model_info.labels(*labels).set(1)
        # The share flagged at the threshold on held-out training data, when training recorded it.
        rate = manifest.metrics.get("positive_rate") if isinstance(manifest.metrics, dict) else None
        self.metrics.reference_churn_rate.set(float(rate) if isinstance(rate, int | float) else math.nan)
        for spec in manifest.schema.features:  # every warning series reads 0 from the start
            kinds = {"categorical": ("unseen_category",), "numeric": ("out_of_range",)}.get(spec.kind, ())
            for kind in ("imputed", *kinds):
                self.metrics.feature_warnings.labels(spec.name, kind)
        self.recorder.process()  # what the previous model scored is counted against its own reference
        self.drift.model_loaded(manifest)
        self.metrics.model_ready.set(1)
        self.update_drift()

    def challenger_loaded(self, version: str | None, mode: str) -> None:
        """The challenger taking part changed (None: the champion serves alone)."""
        labels = (version, mode) if version is not None else None
        old, self._challenger_labels = self._challenger_labels, labels
        if old is not None and old != labels:
            self.metrics.challenger_info.labels(*old).set(0)
            self.metrics.retire_series(self.metrics.challenger_info, old)
        if labels is not None:
            self.metrics.challenger_info.labels(*labels).set(1)
            self.metrics.challenger_disagreements.labels(version)  # read 0 from the start, like the errors
            for reason in ("failed", "skipped", "refused"):
                self.metrics.challenger_errors.labels(version, reason)

    def model_unavailable(self, reason: str) -> None:
        logger.warning("model unavailable: %s", reason)
        self.metrics.model_ready.set(0)

    def reload_attempted(self, ok: bool) -> None:
        self.metrics.model_reloads.labels(outcome="success" if ok else "failure").inc()

    # ---- request path ------------------------------------------------------------------------------------
    def record(self, event: PredictionEvent) -> None:
        """Queue a scored event for metrics, drift and the prediction log. Never raises."""
        try:
            if not event.prediction_ids:
                return
            started = request_started_at.get()
            self.recorder.record(event, None if started is None else max(event.timestamp - started, 0.0))
        except Exception as exc:
            self._contained_failure("record", exc)

    # ---- what the routes and the background ask for -----------------------------------------------------
    def exposition(self) -> bytes:
        """The metrics, counting every prediction this worker answered before the scrape."""
        self.recorder.process()
        return self.metrics.exposition()

    def update_drift(self, now: float | None = None) -> DriftSnapshot | None:
        """Recompute the window's drift figures from all workers' counts and export them."""
        self.recorder.process()
        try:
            return self.drift.update(self.clock() if now is None else now)
        except Exception as exc:
            self._contained_failure("drift", exc)
            return None

    def write_log(self) -> int:
        """Write every prediction recorded so far to the log now (feedback and reports read it); rows written."""
        self.recorder.process()
        return self.recorder.write_log()

    def apply_feedback(self, outcomes: list[OutcomeIn]) -> FeedbackResult:
        """Join outcomes to logged predictions and refresh the realized metrics (SQLAlchemyError: 503)."""
        self.write_log()
        result = apply_outcomes(self.log.connection, outcomes, self.clock())
        self.log.statistics_due()  # the planner learns of the outcomes before the next report
        for status, count in status_counts(result).items():
            if count:
                self.metrics.feedback.labels(status=status).inc(count)
        result.performance = self.performance.refresh()
        return result

    def compare(self, days: int, profit: ProfitTerms | None = None) -> dict[str, Any]:
        """Champion against challenger over the last ``days`` (SQLAlchemyError: the log is unavailable)."""
        self.write_log()
        self.shadow.write()
        return self.comparisons.compare(self.log.connection, days, profit)

    def daily_report(self, day: date | None = None) -> dict[str, Any]:
        now = self.clock()
        day = day or datetime.fromtimestamp(now, UTC).date()
        self.write_log()
        self.shadow.write()
        with self.log.connection() as connection:
            report = daily_report(
                connection, day, self.drift.latest, self.performance.latest, now, self.drift.estimate_gauges.reference
            )
            start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
            end = start + SECONDS_PER_DAY
            report["challenger"] = compare_window(connection, start, end, self.comparisons.threshold, None, False)
        return report

    # ---- background --------------------------------------------------------------------------------------
    def _periodic(self) -> None:
        next_drift = next_performance = next_housekeeping = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_drift:
                next_drift = now + self.settings.drift_update_seconds
                self.update_drift()
            if now >= next_performance or self._performance_due.is_set():
                self._performance_due.clear()
                next_performance = now + self.settings.performance_update_seconds
                self._refresh_performance()
            if now >= next_housekeeping:
                next_housekeeping = now + HOUSEKEEPING_SECONDS
                self._housekeeping()
            wait = min(next_drift, next_performance, next_housekeeping) - time.monotonic()
            self._performance_due.wait(max(wait, 0.0))

    def _refresh_performance(self) -> None:
        try:
            self.performance.refresh()
        except Exception as exc:  # database down: counted, tried again next period
            self.metrics.log_errors.inc()
            self._contained_failure("performance", exc)

    def _housekeeping(self) -> None:
        try:
            self.metrics.sweep_dead_workers()
            self.log.settle_ledgers()
            self.drift.remove_stale(self.clock())
            self.metrics.set_memory()
        except Exception as exc:
            self._contained_failure("housekeeping", exc)

    def _contained_failure(self, where: str, exc: Exception) -> None:
        try:
            self.metrics.monitoring_errors.labels(where=where).inc()
        finally:
            self._errors.error("monitoring %s failed (the request is unaffected): %s", where, exc, exc_info=exc)


class NullMonitor:
    """Monitoring switched off: the same interface, doing nothing; its routes answer 404 with the reason."""

    enabled = False

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings
        self.router: APIRouter = build_disabled_router()

    def install(self, app: FastAPI) -> None:
        app.include_router(self.router)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def model_loaded(self, manifest: Manifest) -> None:
        return None

    def model_unavailable(self, reason: str) -> None:
        return None

    def reload_attempted(self, ok: bool) -> None:
        return None

    def challenger_loaded(self, version: str | None, mode: str) -> None:
        return None

    def record(self, event: PredictionEvent) -> None:
        return None


def create_monitor(settings: Settings) -> Monitor | NullMonitor:
    return Monitor(settings) if settings.monitoring_enabled else NullMonitor(settings)
