"""Every Prometheus metric the service exports, created once per :class:`~app.monitoring.monitor.Monitor`.

Two modes:

* **multiprocess** (``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client`` was imported, as
  ``python -m app`` does for several workers): values live in per-process memory-mapped files in
  that directory, a scrape merges every worker's files, and every gauge declares how workers'
  values combine. Metrics are not registered anywhere; :meth:`Metrics.exposition` builds a fresh
  registry with a ``MultiProcessCollector`` per scrape.
* **single process** (tests, ``python -m uvicorn`` with one worker): a private registry per instance,
  so several apps in one process never collide.
"""

from __future__ import annotations

import logging
import os
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Sub-millisecond resolution: the service answers single predictions in well under a millisecond of CPU.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
PREDICTION_STAGES = ("validation", "features", "inference", "explanation")


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
    """The metric objects, plus cached label children for the request path."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry: CollectorRegistry | None = None if multiprocess_dir else CollectorRegistry(auto_describe=True)
        self._deferred_lock = threading.Lock()  # guards the pending amounts; held for a few dict operations
        self._flush_lock = threading.Lock()  # a scrape waits for a flush in progress, so it misses nothing
        self._deferred: list[DeferredCounter | DeferredHistogram] = []
        # Work that produces deferred updates (the monitor's recorded predictions), run before each flush.
        self._flush_sources: list[Callable[[], object]] = []
        # Requests being served by this worker: kept by the event loop's middleware as a plain int and
        # written to the gauge at every flush (each scrape this worker serves is exact; the other
        # workers' figures are at most one flush period old).
        self.requests_in_flight = 0
        self._build_http()
        self._build_predictions()
        self._build_model()
        self._build_drift()
        self._build_prediction_log()
        self._build_performance()
        self._build_process()
        self._initialise_known_series()

    # ---- construction ------------------------------------------------------------------------
    def _counter(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(name, documentation, labelnames=tuple(labels), registry=self.registry)

    def _gauge(self, name: str, documentation: str, mode: str, labels: Iterable[str] = ()) -> Gauge:
        return Gauge(name, documentation, labelnames=tuple(labels), registry=self.registry, multiprocess_mode=mode)

    def _histogram(self, name: str, documentation: str, buckets: Iterable[float], labels: Iterable[str] = ()):
        return Histogram(name, documentation, labelnames=tuple(labels), buckets=tuple(buckets), registry=self.registry)

    def _build_http(self) -> None:
        self.http_requests = self._counter(
            "churn_http_requests_total",
            "HTTP requests by route template, method and status",
            ("route", "method", "status"),
        )
        self.http_duration = self._histogram(
            "churn_http_request_duration_seconds", "HTTP request duration", LATENCY_BUCKETS, ("route", "method")
        )
        # One set of stand-ins per series, shared by every middleware instance of this worker.
        self.http_request_series = self.deferred_series(self.http_requests)
        self.http_duration_series = self.deferred_series(self.http_duration)
        self.http_in_flight = self._gauge(
            "churn_http_requests_in_flight", "HTTP requests being served, all workers together", "livesum"
        )

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
        # Every worker computes these from the same shared bin counts: the most recent value is the answer.
        recent = "mostrecent"
        self.drift_psi = self._gauge("churn_feature_drift_psi", "PSI of live vs reference bins", recent, ("feature",))
        self.drift_js = self._gauge(
            "churn_feature_drift_js", "Jensen-Shannon distance (base 2) of live vs reference bins", recent, ("feature",)
        )
        self.drift_threshold = self._gauge(
            "churn_feature_drift_threshold", "PSI threshold in force for the current window size", recent, ("feature",)
        )
        self.drifting = self._gauge(
            "churn_feature_drifting", "1 when the feature's PSI exceeds its threshold", recent, ("feature",)
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

    def _build_performance(self) -> None:
        recent = "mostrecent"
        self.feedback = self._counter("churn_feedback_outcomes_total", "Outcomes received by match status", ("status",))
        self.realized_auc = self._gauge("churn_realized_roc_auc", "ROC-AUC on predictions with known outcomes", recent)
        self.realized_precision = self._gauge("churn_realized_precision", "Precision on labelled predictions", recent)
        self.realized_recall = self._gauge("churn_realized_recall", "Recall on labelled predictions", recent)
        self.realized_f1 = self._gauge("churn_realized_f1", "F1 on labelled predictions", recent)
        self.realized_count = self._gauge(
            "churn_realized_labelled_predictions", "Labelled predictions behind the realized metrics", recent
        )

    def _build_process(self) -> None:
        # In multiprocess mode "liveall" adds the pid label itself; a single process adds its own.
        if self.multiprocess_dir:
            self.memory = self._gauge("churn_worker_resident_memory_bytes", "Resident memory per worker", "liveall")
            self._memory_child = self.memory
        else:
            self.memory = self._gauge(
                "churn_worker_resident_memory_bytes", "Resident memory per worker", "liveall", ("pid",)
            )
            self._memory_child = self.memory.labels(pid=str(os.getpid()))

    def _initialise_known_series(self) -> None:
        # Series that exist from the start read 0 instead of being absent, so rate() and alerts work at once.
        for reason in ("queue_full", "write_error", "invalid"):
            self.log_dropped.labels(reason=reason)
        for status in ("matched", "unknown", "duplicate"):
            self.feedback.labels(status=status)
        for outcome in ("success", "failure"):
            self.model_reloads.labels(outcome=outcome)

    # ---- operations ----------------------------------------------------------------------------
    def set_memory(self, resident_bytes: float) -> None:
        self._memory_child.set(resident_bytes)

    def deferred_counter(self, child: Any) -> DeferredCounter:
        """A request-path stand-in for one counter series whose increments reach it at the next flush."""
        deferred = DeferredCounter(child, self._deferred_lock)
        with self._deferred_lock:
            self._deferred.append(deferred)
        return deferred

    def deferred_series(self, metric: Any) -> DeferredSeries:
        """``metric``'s labelled series, each a deferred stand-in made the first time its labels are used."""
        make = self.deferred_histogram if isinstance(metric, Histogram) else self.deferred_counter
        return DeferredSeries(metric, make)

    def deferred_histogram(self, child: Any) -> DeferredHistogram | Any:
        """A request-path stand-in for one histogram series (the series itself where its buckets are unknown)."""
        if not has_bucket_internals(child):
            return child
        deferred = DeferredHistogram(child, self._deferred_lock)
        with self._deferred_lock:
            self._deferred.append(deferred)
        return deferred

    def add_flush_source(self, source: Callable[[], object]) -> None:
        """Run ``source`` at the start of every flush (it turns queued work into deferred updates)."""
        self._flush_sources.append(source)

    def flush_pending(self, run_sources: bool = True) -> None:
        """Apply every deferred increment and observation to the metrics. Safe from any thread.

        Amounts are taken under the lock (plain Python, fast) and written to the metrics outside it,
        so the request path never waits for the metric writes. ``run_sources=False``: apply only
        what is already deferred (the caller has drained what it needed).
        """
        for source in self._flush_sources if run_sources else ():
            source()
        with self._flush_lock:
            self.http_in_flight.set(self.requests_in_flight)
            with self._deferred_lock:
                taken = [(deferred, deferred.take()) for deferred in self._deferred if deferred.pending]
            for deferred, amounts in taken:
                deferred.apply(amounts)

    def exposition(self) -> bytes:
        """The Prometheus text format of everything, merged across workers in multiprocess mode.

        This worker's deferred updates are applied first, so a scrape it serves is up to date.
        """
        self.flush_pending()
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
            return generate_latest(registry)
        assert self.registry is not None
        return generate_latest(self.registry)

    def mark_dead(self) -> None:
        """Drop this worker's live gauges (in-flight, memory, readiness) from future scrapes."""
        if self.multiprocess_dir:
            mark_process_dead(os.getpid(), self.multiprocess_dir)

    def sweep_dead_workers(self) -> list[int]:
        """Drop the live gauges of workers that died without :meth:`mark_dead` (killed); their pids.

        A worker killed by a signal leaves its gauge files behind, and a ``livesum`` gauge (requests
        in flight) would go on counting it. Counters and histograms keep their files: their totals
        must never go backwards.
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


class DeferredSeries:
    """A labelled metric's deferred stand-ins by label values, each made once.

    ``labels()`` costs a lock and validation on every call; looking the stand-in up here is one
    dictionary hit.
    """

    __slots__ = ("_children", "_make", "_metric")

    def __init__(self, metric: Any, make: Callable[[Any], Any]) -> None:
        self._metric = metric
        self._make = make
        self._children: dict[tuple[Any, ...], Any] = {}

    def __call__(self, *labels: Any) -> Any:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._make(self._metric.labels(*labels))
        return child


class DeferredCounter:
    """Increments of one counter series, held in plain Python until :meth:`Metrics.flush_pending`.

    A counter write in multiprocess mode costs a lock and a memory-mapped file write (microseconds);
    adding to an attribute under a shared uncontended lock costs a tenth of that. Prometheus scrapes
    every few seconds, and every scrape served by this worker flushes first, so the short lag is
    invisible and the exported counter stays monotonic.
    """

    __slots__ = ("_amount", "_lock", "child", "pending")

    def __init__(self, child: Any, lock: threading.Lock) -> None:
        self.child = child
        self._lock = lock
        self._amount = 0.0
        self.pending = False

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        with self._lock:
            self._amount += amount
            self.pending = True

    def take(self) -> float:  # called with the lock held
        amount, self._amount, self.pending = self._amount, 0.0, False
        return amount

    def apply(self, amount: float) -> None:
        self.child.inc(amount)


class DeferredHistogram:
    """Observations of one histogram series, kept as per-bucket counts and a sum until the next flush.

    Bucketing is the client's own: an amount counts in the first bucket whose upper bound is at least
    the amount, and NaN only adds to the sum, so the exposition equals that of direct observations.
    """

    __slots__ = ("_bounds", "_counts", "_edges", "_lock", "_sum", "child", "pending")

    def __init__(self, child: Any, lock: threading.Lock) -> None:
        self.child = child
        self._lock = lock
        self._bounds = [float(bound) for bound in child._upper_bounds]
        self._edges = np.asarray(self._bounds, dtype=np.float64)  # for observe_many, made once
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self.pending = False

    def observe(self, amount: float) -> None:
        amount = float(amount)
        index = bisect_left(self._bounds, amount) if amount == amount else -1
        with self._lock:
            if index >= 0:
                self._counts[index] += 1
            self._sum += amount
            self.pending = True

    def observe_many(self, amounts: np.ndarray) -> None:
        """Like :func:`observe_many` on the series itself."""
        counts, total = bucket_counts(self._edges, amounts)
        if not counts.any():
            return
        with self._lock:
            for position in np.flatnonzero(counts).tolist():
                self._counts[position] += int(counts[position])
            self._sum += total
            self.pending = True

    def take(self) -> tuple[list[int], float]:  # called with the lock held
        taken = (self._counts, self._sum)
        self._counts, self._sum, self.pending = [0] * len(self._bounds), 0.0, False
        return taken

    def apply(self, taken: tuple[list[int], float]) -> None:
        counts, total = taken
        add_to_histogram(self.child, counts, total)


def has_bucket_internals(histogram: Any) -> bool:
    return getattr(histogram, "_buckets", None) is not None and getattr(histogram, "_upper_bounds", None) is not None


def add_to_histogram(histogram: Any, counts: Iterable[int], total: float) -> None:
    """Add per-bucket counts (non-cumulative, in bound order) and their sum to one histogram series.

    prometheus_client has no bulk observe; its ``Histogram`` keeps one value per bucket
    (``_buckets``, non-cumulative, cumulated at exposition) and ``_sum``, in memory or in the
    multiprocess files. Incrementing those directly is exactly what ``observe`` does per value.
    The only place that writes these private attributes; a test checks the exposition against
    direct observations.
    """
    histogram._sum.inc(total)
    buckets = histogram._buckets
    for position, count in enumerate(counts):
        if count:
            buckets[position].inc(count)


def bucket_counts(bounds: Iterable[float] | np.ndarray, amounts: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-bucket counts and the NaN-ignoring sum of many amounts (NaN counts in the last bucket).

    ``bounds``: the upper bounds in order, best as a float64 array made once by the caller.
    """
    amounts = np.asarray(amounts, dtype=np.float64)
    edges = bounds if isinstance(bounds, np.ndarray) else np.asarray(list(bounds), dtype=np.float64)
    if amounts.size == 0:
        return np.zeros(len(edges), dtype=np.int64), 0.0
    index = np.searchsorted(edges, amounts, side="left")
    np.minimum(index, len(edges) - 1, out=index)  # NaN sorts past +Inf
    with np.errstate(invalid="ignore"):  # infinities of both signs sum to NaN: no warning for it
        total = float(amounts.sum())
        if total != total:  # NaN among the amounts (or those infinities): the slower NaN-ignoring sum
            total = float(np.nansum(amounts))
    return np.bincount(index, minlength=len(edges)), total


def observe_many(histogram: Any, amounts: np.ndarray) -> None:
    """Observe many values with one increment per bucket instead of one call per value.

    Equivalent to ``for a in amounts: histogram.observe(a)`` (prometheus_client keeps
    non-cumulative bucket values and a sum), but costs microseconds for ten thousand values.
    """
    if isinstance(histogram, DeferredHistogram):
        histogram.observe_many(amounts)
        return
    amounts = np.asarray(amounts, dtype=np.float64)
    if amounts.size == 0:
        return
    if not has_bucket_internals(histogram):  # a client version without these internals: the slow, sure way
        for amount in amounts.tolist():
            histogram.observe(amount)
        return
    counts, total = bucket_counts(histogram._upper_bounds, amounts)
    add_to_histogram(histogram, counts.tolist(), total)
