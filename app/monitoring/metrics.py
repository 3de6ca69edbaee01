"""Every Prometheus metric the service defines itself (HTTP metrics come from ``app.monitoring.http``).

Two modes:

* **multiprocess** (``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client`` was imported, as
  ``python -m app`` does): values live in per-process memory-mapped files in that directory, a
  scrape merges every worker's files with a ``MultiProcessCollector``, and every gauge declares how
  workers' values combine.
* **single process** (tests, ``python -m uvicorn``): a private registry per instance, so several
  apps in one process never collide.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from bundle.performance_estimate import CONFIDENCE

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Sub-millisecond resolution: single predictions take well under a millisecond.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
MOST_RECENT = "mostrecent"  # figures every worker computes from the same shared data


def multiprocess_directory() -> str | None:
    """The shared metrics directory when multiprocess mode is really active, else None.

    The client picks its value storage when it is first imported; a directory set later cannot
    be honoured, so that case is logged and the private registry is used instead.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return None
    if values.ValueClass is values.MutexValue:
        logger.warning(
            "%s is set but prometheus_client was imported before it was; metrics stay per process", MULTIPROC_ENV
        )
        return None
    return directory


class Metrics:
    """The metric objects of one monitor, and the exposition of everything."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        # Multiprocess values live in files whatever the registry; a private one keeps names from colliding.
        self.registry = CollectorRegistry(auto_describe=True)
        self._build_predictions()
        self._build_model()
        self._build_drift()
        self._build_prediction_log()
        self._build_performance()
        self._build_estimate()
        self._build_challenger()
        self._build_process()
        self._initialise_known_series()

    def _counter(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(name, documentation, labelnames=tuple(labels), registry=self.registry)

    def _gauge(self, name: str, documentation: str, mode: str, labels: Iterable[str] = ()) -> Gauge:
        return Gauge(name, documentation, labelnames=tuple(labels), registry=self.registry, multiprocess_mode=mode)

    def _histogram(self, name: str, documentation: str, buckets: Iterable[float], labels: Iterable[str] = ()):
        return Histogram(name, documentation, labelnames=tuple(labels), buckets=tuple(buckets), registry=self.registry)

    def _build_predictions(self) -> None:
        self.predictions = self._counter(
            "churn_predictions_total", "Scored records by risk band and model version", ("risk_band", "model_version")
        )
        self.predicted_churn = self._counter(
            "churn_predicted_churn_total", "Scored records whose decision is churn", ("model_version",)
        )
        self.stage_duration = self._histogram(
            "churn_prediction_stage_duration_seconds", "Time per prediction stage", LATENCY_BUCKETS, ("stage",)
        )
        self.score = self._histogram("churn_prediction_score", "Calibrated churn probability", SCORE_BUCKETS)
        self.feature_warnings = self._counter(
            "churn_feature_warnings_total", "Values imputed or categories unseen in training", ("feature", "kind")
        )
        self.monitoring_errors = self._counter(
            "churn_monitoring_errors_total",
            "Monitoring failures that were contained (never fail a request)",
            ("where",),
        )

    def _build_model(self) -> None:
        # livemax: a version is served while any live worker serves it.
        self.model_info = self._gauge(
            "churn_model_info",
            "The served model (value 1)",
            "livemax",
            ("version", "family", "framework", "trained_at"),
        )
        # livemin: the service is ready only when every live worker has a model.
        self.model_ready = self._gauge("churn_model_ready", "1 when a model is loaded and serving", "livemin")
        self.model_reloads = self._counter("churn_model_reloads_total", "Model reload attempts", ("outcome",))

    def _build_drift(self) -> None:
        recent, feature = MOST_RECENT, ("feature",)
        self.drift_psi = self._gauge("churn_feature_drift_psi", "PSI of live vs reference bins", recent, feature)
        self.drift_js = self._gauge(
            "churn_feature_drift_js", "Jensen-Shannon distance (base 2) of live vs reference bins", recent, feature
        )
        self.drift_threshold = self._gauge(
            "churn_feature_drift_threshold", "PSI threshold in force for the current window size", recent, feature
        )
        self.drifting = self._gauge(
            "churn_feature_drifting", "1 when the feature's PSI exceeds its threshold", recent, feature
        )
        self.score_psi = self._gauge("churn_score_drift_psi", "PSI of the live score distribution", recent)
        self.score_js = self._gauge("churn_score_drift_js", "Jensen-Shannon distance of the score distribution", recent)
        self.score_drifting = self._gauge("churn_score_drifting", "1 when the score PSI exceeds its threshold", recent)
        self.drift_window = self._gauge(
            "churn_drift_window_predictions", "Records in the drift window behind the drift figures", recent
        )
        self.predicted_churn_rate = self._gauge(
            "churn_predicted_churn_rate", "Share of records in the drift window predicted to churn", recent
        )
        self.reference_churn_rate = self._gauge(
            "churn_reference_predicted_churn_rate", "Share predicted to churn on the held-out training data", recent
        )

    def _build_prediction_log(self) -> None:
        self.log_written = self._counter("churn_prediction_log_written_total", "Predictions written to the log")
        self.log_dropped = self._counter(
            "churn_prediction_log_dropped_total", "Predictions not logged, by reason", ("reason",)
        )
        self.log_errors = self._counter(
            "churn_prediction_log_errors_total", "Failed prediction-log database operations"
        )
        self.log_queue = self._gauge(
            "churn_prediction_log_queue_size", "Predictions waiting to be written, all workers", "livesum"
        )
        self.log_spooled = self._counter(
            "churn_prediction_log_spooled_total", "Predictions the database could not take, kept in the local spool"
        )
        self.log_replayed = self._counter(
            "churn_prediction_log_replayed_total", "Spooled predictions written to the log since"
        )
        self.log_truncated = self._counter(
            "churn_prediction_log_truncated_total", "Logged values cut to their column's width"
        )
        # Every worker of a deployment sees the same spool directory.
        self.log_spool_rows = self._gauge(
            "churn_prediction_log_spool_rows", "Predictions waiting in the local spool", MOST_RECENT
        )

    def _build_performance(self) -> None:
        recent = MOST_RECENT
        self.feedback = self._counter("churn_feedback_outcomes_total", "Outcomes received by match status", ("status",))
        self.realized_auc = self._gauge("churn_realized_roc_auc", "ROC-AUC on predictions with known outcomes", recent)
        self.realized_precision = self._gauge("churn_realized_precision", "Precision on labelled predictions", recent)
        self.realized_recall = self._gauge("churn_realized_recall", "Recall on labelled predictions", recent)
        self.realized_f1 = self._gauge("churn_realized_f1", "F1 on labelled predictions", recent)
        self.realized_count = self._gauge(
            "churn_realized_labelled_predictions", "Labelled predictions behind the realized metrics", recent
        )

    def _build_estimate(self) -> None:
        recent, version = MOST_RECENT, ("model_version",)
        self.estimated_auc = self._gauge(
            "churn_estimated_roc_auc", "ROC-AUC estimated from the drift window's scores (CBPE)", recent, version
        )
        self.estimated_precision = self._gauge(
            "churn_estimated_precision", "Precision at the threshold estimated from the scores", recent, version
        )
        self.estimated_recall = self._gauge(
            "churn_estimated_recall", "Recall at the threshold estimated from the scores", recent, version
        )
        self.estimated_f1 = self._gauge(
            "churn_estimated_f1", "F1 at the threshold estimated from the scores", recent, version
        )
        self.estimated_bound = self._gauge(
            "churn_estimated_performance_bound",
            f"Band of the realized metric expected on the window's customers ({CONFIDENCE:.0%})",
            recent,
            ("model_version", "metric", "bound"),
        )
        self.reference_performance = self._gauge(
            "churn_reference_performance",
            "Estimated and realized metrics on the held-out test split at training time",
            recent,
            ("model_version", "metric", "source"),
        )

    def _build_challenger(self) -> None:
        self.role_predictions = self._counter(
            "churn_role_predictions_total",
            "Scored records by model version and role (champion answers; challenger in shadow or canary)",
            ("model_version", "role"),
        )
        self.challenger_errors = self._counter(
            "churn_challenger_errors_total",
            "Calls the challenger did not score: failed (it raised), skipped (its queue was full), refused records",
            ("model_version", "reason"),
        )
        self.challenger_disagreements = self._counter(
            "churn_challenger_disagreements_total",
            "Records the challenger in shadow decided otherwise than the champion",
            ("model_version",),
        )
        self.challenger_duration = self._histogram(
            "churn_challenger_duration_seconds",
            "The challenger's scoring time per call",
            LATENCY_BUCKETS,
            ("model_version",),
        )
        # livemax: a challenger takes part while any live worker has it loaded.
        self.challenger_info = self._gauge(
            "churn_challenger_info", "The loaded challenger and its mode (value 1)", "livemax", ("version", "mode")
        )

    def _build_process(self) -> None:
        # In multiprocess mode "liveall" adds the pid label itself; a single process adds its own.
        labels = () if self.multiprocess_dir else ("pid",)
        self.memory = self._gauge("churn_worker_resident_memory_bytes", "Resident memory per worker", "liveall", labels)
        self._memory = self.memory if self.multiprocess_dir else self.memory.labels(pid=str(os.getpid()))

    def _initialise_known_series(self) -> None:
        # Series that exist from the start read 0 instead of being absent, so rate() and alerts work at once.
        for reason in ("queue_full", "write_error", "invalid", "spool_full", "spool_unreadable", "worker_killed"):
            self.log_dropped.labels(reason=reason)
        for status in ("matched", "unknown", "duplicate"):
            self.feedback.labels(status=status)
        for outcome in ("success", "failure"):
            self.model_reloads.labels(outcome=outcome)

    # ---- operations ----------------------------------------------------------------------------
    def set_memory(self) -> None:
        self._memory.set(resident_memory_bytes())

    def exposition(self) -> bytes:
        """The Prometheus text format of everything, merged across workers in multiprocess mode."""
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def mark_dead(self) -> None:
        """Drop this worker's live gauges (in-flight, memory, readiness) from future scrapes."""
        if self.multiprocess_dir:
            mark_process_dead(os.getpid(), self.multiprocess_dir)

    def sweep_dead_workers(self) -> list[int]:
        """Drop the live gauges of workers that died without :meth:`mark_dead` (killed); their pids.

        A killed worker leaves its gauge files behind, and a ``livesum`` gauge (requests in flight)
        would go on counting it. Counters and histograms keep their files: totals never go backwards.
        """
        if not self.multiprocess_dir:
            return []
        swept = []
        for pid in sorted(live_gauge_pids(self.multiprocess_dir) - {os.getpid()}):
            if not process_exists(pid):
                mark_process_dead(pid, self.multiprocess_dir)
                swept.append(pid)
        return swept

    def retire_series(self, gauge: Gauge, labels: tuple[str, ...]) -> None:
        """Stop exporting one labelled gauge series.

        A single process simply forgets it. Worker files cannot forget a series, so it is set to
        NaN there (for info-style gauges the caller sets 0 first where 0 is meaningful).
        """
        if self.multiprocess_dir:
            gauge.labels(*labels).set(float("nan"))
            return
        try:
            gauge.remove(*labels)
        except KeyError:
            return


def live_gauge_pids(directory: str) -> set[int]:
    """Process ids with live-gauge files (``gauge_live*_<pid>.db``) in a multiprocess directory."""
    pids = set()
    for path in Path(directory).glob("gauge_live*_*.db"):
        suffix = path.stem.rsplit("_", 1)[-1]
        if suffix.isdigit():
            pids.add(int(suffix))
    return pids


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def resident_memory_bytes() -> float:
    """This process's resident set size (Linux /proc; peak RSS elsewhere as the best available)."""
    try:
        with open("/proc/self/statm") as handle:
            return float(int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        import resource

        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
