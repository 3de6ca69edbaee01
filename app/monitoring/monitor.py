"""The monitor the service talks to: metrics, drift, prediction log and realized performance in one object.

The request path does two things: the middleware (or the fast lane's :class:`RequestMeter`) adds
to plain Python counters (requests in flight, requests and durations by route) and
:meth:`Monitor.record` appends the scored event to an in-memory inbox, a ``/predict`` record reduced
to plain values (:class:`~app.monitoring.events.SingleRecord`). Everything else happens in
:meth:`Monitor.drain`, vectorised over everything queued since the last drain (single records
gathered into one batch per model version): the prediction counters and histograms, feature
warnings, drift binning and the prediction log queue. Under ``/predict`` traffic the event loop
drains between two requests once ``LOOP_DRAIN_RECORDS`` wait; a batch is drained by the prediction
log's thread, which also drains what the loop leaves waiting (see :meth:`Monitor.drain_if_due`);
every scrape this worker serves, every
drift update, feedback call, report and the stop drain first, so what they show includes every
prediction answered before them. Everything that reads files or databases runs in
background threads started by :meth:`Monitor.start`: drift figures every ``drift_update_seconds``,
realized performance every ``performance_update_seconds`` (and right after feedback), the memory
gauge, and the prediction log writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from itertools import repeat
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter

from app.monitoring.drift import DriftLayout, DriftSnapshot, DriftTracker
from app.monitoring.events import (
    GatheredSingles,
    PredictionEvent,
    SingleRecord,
    gather_records,
    single_record,
    transpose,
)
from app.monitoring.http import MonitoringMiddleware, PassThroughMiddleware, RequestMeter, request_started_at
from app.monitoring.log_store import SECONDS_PER_DAY
from app.monitoring.metrics import Metrics, multiprocess_directory, observe_many
from app.monitoring.performance import (
    FeedbackResult,
    OutcomeIn,
    RealizedPerformance,
    apply_outcomes,
    labelled_predictions,
    realized_performance,
    status_counts,
)
from app.monitoring.prediction_log import PredictionLog
from app.monitoring.report import daily_report
from app.monitoring.routes import build_disabled_router, build_router
from app.monitoring.throttled import ThrottledErrors
from app.settings import Settings
from bundle.manifest import Manifest

logger = logging.getLogger(__name__)

MEMORY_UPDATE_SECONDS = 10.0
STALE_TABLE_CHECK_SECONDS = 60.0
# /predict traffic is drained on the event loop once this many records wait (about 0.7 ms of
# work at a time, 5-6 us a record; smaller steps cost more per record (64: 6-7 us, and 8 us more
# CPU per request under load), larger ones stall the requests waiting behind them longer).
LOOP_DRAIN_RECORDS = 128
# A longer backlog (a batch) is left to the background thread, so the loop never stalls for long.
LOOP_DRAIN_MAX_RECORDS = 1_024
# Records the loop has left waiting this long (too few to fill a step: light traffic) are drained by
# the log's thread at its next wake-up; younger ones are the loop's, so the two do not contend.
LOOP_DRAIN_GRACE_SECONDS = 0.1
_STAGE_SECONDS = attrgetter("stage_seconds")


def resident_memory_bytes() -> float:
    """This process's resident set size (Linux /proc; peak RSS elsewhere as the best available)."""
    try:
        with open("/proc/self/statm") as handle:
            return float(int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        import resource

        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


class Monitor:
    """Monitoring of one service process (one per worker)."""

    middleware_class = MonitoringMiddleware
    enabled = True

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.multiprocess_dir = multiprocess_directory()
        self.metrics = Metrics(self.multiprocess_dir)
        self.log = PredictionLog(
            settings.database_url,
            self.metrics,
            batch_size=settings.prediction_log_batch_size,
            flush_seconds=settings.prediction_log_flush_seconds,
            queue_size=settings.prediction_log_queue_size,
            retention_days=settings.prediction_log_retention_days,
            writer=settings.prediction_log_writer,
            clock=clock,
        )
        self.router: APIRouter = build_router(self)
        self.drift: DriftTracker | None = None
        self.latest_drift: DriftSnapshot | None = None
        self.latest_performance: RealizedPerformance | None = None
        self._drift_dir = self._choose_drift_directory()
        self._model_lock = threading.Lock()
        self._model_labels: tuple[str, str, str, str] | None = None
        self._drift_features: set[str] = set()
        self._band_child = self.metrics.deferred_series(self.metrics.predictions)
        self._churn_child = self.metrics.deferred_series(self.metrics.predicted_churn)
        self._stage_child = self.metrics.deferred_series(self.metrics.stage_duration)
        self._warning_child = self.metrics.deferred_series(self.metrics.feature_warnings)
        self._score = self.metrics.deferred_histogram(self.metrics.score)
        # Recorded predictions awaiting drain(): /predict records reduced to plain values, other
        # events whole (with their request latencies), and their record count (bounded by the log
        # queue size).
        self._singles: list[SingleRecord] = []
        self._inbox: list[tuple[PredictionEvent, float | None]] = []
        self._feature_names: dict[str, tuple[str, ...]] = {}  # by model version, one shared tuple each
        self._inbox_records = 0
        self._inbox_limit = settings.prediction_log_queue_size
        self._inbox_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._loop_drain_scheduled = False  # only the event loop's thread reads and sets it
        self._background_drain_due = False  # records handed to the log's thread (recorded off the loop)
        self.metrics.add_flush_source(self.drain)
        self.log.before_flush = self.drain_if_due
        self._stopping = threading.Event()
        self._performance_due = threading.Event()
        self._threads: list[threading.Thread] = []
        self._errors = ThrottledErrors(logger)
        self.metrics.model_ready.set(0)
        self.metrics.set_memory(resident_memory_bytes())

    def _choose_drift_directory(self) -> Path:
        # Shared with the other workers through the multiprocess directory; private otherwise.
        if self.multiprocess_dir:
            directory = Path(self.multiprocess_dir) / "drift"
            directory.mkdir(parents=True, exist_ok=True)
            self._owns_drift_dir = False
            return directory
        self._owns_drift_dir = True
        directory = Path(tempfile.mkdtemp(prefix="churn-drift-"))
        weakref.finalize(self, shutil.rmtree, directory, True)  # also gone if stop() is never called
        return directory

    # ---- lifespan -----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping.clear()
        # A worker restarted after being killed: its predecessor's live gauges go now, not in a minute.
        self.metrics.sweep_dead_workers()
        self.log.start()
        self.metrics.set_memory(resident_memory_bytes())
        self._start_thread("monitor-drift", self._drift_loop)
        self._start_thread("monitor-performance", self._performance_loop)

    async def stop(self) -> None:
        """Stop background work, write every queued prediction, retire this worker's live gauges."""
        self._stopping.set()
        self._performance_due.set()
        await asyncio.to_thread(self._stop_blocking)

    def _stop_blocking(self) -> None:
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        self.flush_metrics()  # drains the last recorded events into the log queue
        self.log.stop()
        self.flush_metrics()
        with self._model_lock:
            if self.drift is not None:
                self.drift.close()  # the table stays for the other workers until it leaves the window
                self.drift = None
        self.metrics.mark_dead()
        if self._owns_drift_dir:
            shutil.rmtree(self._drift_dir, ignore_errors=True)

    def _start_thread(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # ---- model lifecycle -------------------------------------------------------------------------------
    def model_loaded(self, manifest: Manifest) -> None:
        """A model is serving (startup or successful reload): info gauge, ready, drift against its reference."""
        labels = (manifest.version, manifest.model_family, manifest.framework, manifest.created_at)
        with self._model_lock:
            self._set_model_info(labels)
            self._set_reference_rate(manifest)
            self._switch_drift(manifest)
            self._initialise_warning_series(manifest)
        self.metrics.model_ready.set(1)
        self.update_drift()

    def _set_model_info(self, labels: tuple[str, str, str, str]) -> None:
        previous = self._model_labels
        if previous is not None and previous != labels:
            self.metrics.model_info.labels(*previous).set(0)
            if not self.multiprocess_dir:
                self.metrics.retire_series(self.metrics.model_info, previous)
        self.metrics.model_info.labels(*labels).set(1)
        self._model_labels = labels

    def _initialise_warning_series(self, manifest: Manifest) -> None:
        for spec in manifest.schema.features:
            self._warning_child(spec.name, "imputed")
            if spec.kind == "categorical":
                self._warning_child(spec.name, "unseen_category")
            elif spec.kind == "numeric":
                self._warning_child(spec.name, "out_of_range")

    def _set_reference_rate(self, manifest: Manifest) -> None:
        # The share flagged at the threshold on held-out training data, when training recorded it.
        rate = manifest.metrics.get("positive_rate") if isinstance(manifest.metrics, dict) else None
        self.metrics.reference_churn_rate.set(float(rate) if isinstance(rate, int | float) else math.nan)

    def _switch_drift(self, manifest: Manifest) -> None:
        current = self.drift
        key = DriftLayout.from_reference(manifest.version, manifest.drift_reference).key
        if current is not None and current.layout.key == key:
            return  # the same bundle again: keep counting in the same window
        tracker = DriftTracker(
            self._drift_dir,
            manifest.version,
            manifest.drift_reference,
            slot_seconds=self.settings.drift_slot_seconds,
            window_seconds=self.settings.drift_window_seconds,
            psi_threshold=self.settings.drift_psi_threshold,
            min_count=self.settings.drift_min_count,
        )
        self.drift = tracker
        if current is not None:
            current.close(remove=True)  # this worker never writes that version again
        new_features = {binner.name for binner in tracker.layout.features}
        for feature in self._drift_features - new_features:
            for gauge in (
                self.metrics.drift_psi,
                self.metrics.drift_js,
                self.metrics.drift_threshold,
                self.metrics.drifting,
            ):
                self.metrics.retire_series(gauge, (feature,))
        self._drift_features = new_features

    def model_unavailable(self, reason: str) -> None:
        logger.warning("model unavailable: %s", reason)
        self.metrics.model_ready.set(0)

    def reload_attempted(self, ok: bool) -> None:
        self.metrics.model_reloads.labels(outcome="success" if ok else "failure").inc()

    # ---- request path ------------------------------------------------------------------------------------
    def request_meter(self, route: str) -> RequestMeter:
        """What a fast lane serving ``route`` (a path template) reports its requests to."""
        return RequestMeter(self.metrics, route)

    def record(self, event: PredictionEvent) -> None:
        """Queue a scored batch for monitoring: one list append under an uncontended lock. Never raises.

        A single record with its row is appended as a :class:`SingleRecord` (plain values), so the
        event itself is freed with its request; anything else is appended whole.

        Everything else (counters, histograms, warnings, drift binning, the prediction log) happens
        in :meth:`drain`, after the response and vectorised over every event queued since the last
        drain: on the event loop between requests for single records, in the log's thread for
        batches and for what the loop leaves waiting, and before every scrape, drift update,
        feedback and report.
        """
        try:
            size = len(event.prediction_ids)
            if size == 0:
                return
            started = request_started_at.get()
            latency = max(event.timestamp - started, 0.0) if started is not None else None
            single = self._single_record(event, latency) if size == 1 else None
            with self._inbox_lock:
                if single is not None:
                    self._singles.append(single)
                else:
                    self._inbox.append((event, latency))
                self._inbox_records = backlog = self._inbox_records + size
            if backlog >= self._inbox_limit:
                self.drain()  # the background writer is not keeping up: keep memory bounded here
            elif backlog > LOOP_DRAIN_MAX_RECORDS:
                self.log.wake()  # a batch: drained by the background thread, not between requests
            elif backlog >= LOOP_DRAIN_RECORDS:
                self._drain_between_requests()
        except Exception as exc:
            self._contained_failure("record", exc)

    def _single_record(self, event: PredictionEvent, latency: float | None) -> SingleRecord | None:
        """A /predict event reduced to plain values (see :class:`SingleRecord`); None: keep it whole."""
        names = self._feature_names.get(event.model_version)
        if names is None:
            names = self._feature_names[event.model_version] = tuple(event.columns)
        try:
            return single_record(event, latency, names)
        except (AttributeError, IndexError, TypeError, ValueError):  # not shaped like one: drained as an event
            return None

    def _drain_between_requests(self) -> None:
        """Have the event loop drain the inbox once it has finished the work queued before this call.

        Why on the loop and not in the background thread: the drain is a few microseconds per
        record, but a background thread that wants the interpreter lock takes it at every point
        where the request path lets it go (a socket wait, a numpy call), and the request path then
        waits up to the switch interval to get it back. Drained on the loop, ``LOOP_DRAIN_RECORDS``
        at a time, it costs the requests only its own time, spread evenly over them.
        """
        if self._loop_drain_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # recorded outside the event loop (a thread): the background thread drains
            self._background_drain_due = True
            self.log.wake()
            return
        self._loop_drain_scheduled = True
        loop.call_soon(self._drain_on_loop)

    def _drain_on_loop(self) -> None:
        self._loop_drain_scheduled = False
        if self._inbox_records > LOOP_DRAIN_MAX_RECORDS:  # a batch came in meanwhile
            self.log.wake()
            return
        # Never wait on the loop: another thread is draining (a scrape, a drift update). What it did
        # not take stays for the next drain here, which the next record schedules; waking the log's
        # thread instead would have it drain in competition with the loop, again and again.
        if not self._drain_lock.acquire(blocking=False):
            return
        try:
            self._drain_locked(wait_for_drift=False)
        finally:
            self._drain_lock.release()

    def drain_if_due(self) -> int:
        """The log thread's drain at each wake-up: only what the event loop will not drain soon.

        That is a batch (a backlog over ``LOOP_DRAIN_MAX_RECORDS``), records from other threads,
        and records left waiting ``LOOP_DRAIN_GRACE_SECONDS`` or more (light traffic: too few to fill
        a loop step). Under steady /predict traffic the loop drains everything itself.
        """
        singles, inbox = self._singles, self._inbox
        if not singles and not inbox:
            return 0
        try:
            oldest = min(singles[0].timestamp if singles else math.inf, inbox[0][0].timestamp if inbox else math.inf)
        except (IndexError, AttributeError, TypeError):  # drained meanwhile, or a malformed event: drain to be sure
            oldest = -math.inf
        due = (
            self._background_drain_due
            or self._inbox_records > LOOP_DRAIN_MAX_RECORDS
            or self.clock() - oldest >= LOOP_DRAIN_GRACE_SECONDS
        )
        if not due:
            return 0
        self._background_drain_due = False
        return self.drain()

    def drain(self) -> int:
        """Account for every queued event: metrics, drift counts and the log queue. Any thread; returns records."""
        with self._drain_lock:
            return self._drain_locked(wait_for_drift=True)

    def _drain_locked(self, wait_for_drift: bool) -> int:
        with self._inbox_lock:
            singles, self._singles = self._singles, []
            rest, self._inbox = self._inbox, []
            records, self._inbox_records = self._inbox_records, 0
        if not singles and not rest:
            return 0
        groups: list[GatheredSingles] = []
        if singles:
            try:
                groups = gather_records(singles)
            except Exception as exc:  # not expected (records are checked as they are recorded)
                self._contained_failure("record", exc)
                self.metrics.log_dropped.labels(reason="invalid").inc(len(singles))
        try:
            self._count_events(groups, singles, rest)
        except Exception as exc:
            self._contained_failure("record", exc)
        drift = self.drift
        version = drift.layout.model_version if drift is not None else None
        for group in groups:
            try:
                if drift is not None and group.model_version == version:
                    drift.count_gathered(group)
            except Exception as exc:
                self._contained_failure("record", exc)
        for event, _ in rest:
            try:
                if drift is not None and event.model_version == version:
                    drift.count(event.timestamp, event.columns, event.scores, event.decisions, event.row)
            except Exception as exc:
                self._contained_failure("record", exc)
        try:
            self.log.enqueue_many([*((group, None) for group in groups), *rest])
        except Exception as exc:
            self._contained_failure("record", exc)
        if drift is not None:
            # Binned now, a drain's worth at a time (small steps, rather than one long step per
            # drift update); on the loop only if no other thread is binning at this moment.
            drift.apply_pending(on_error=lambda exc: self._contained_failure("drift", exc), blocking=wait_for_drift)
        return records

    def _count_events(
        self, groups: list[GatheredSingles], singles: list[SingleRecord], rest: list[tuple[PredictionEvent, Any]]
    ) -> None:
        """The prediction metrics of a drain's records and events with one update per series."""
        bands: Counter[tuple[str, str]] = Counter()
        churned: Counter[str] = Counter()
        for group in groups:
            version = group.model_version
            for band, count in Counter(group.risk_bands).items():
                bands[band, version] += count
            churned[version] += int(np.count_nonzero(group.decisions))
        for event, _ in rest:
            bands.update(zip(event.risk_bands, repeat(event.model_version)))
            churned[event.model_version] += int(np.count_nonzero(event.decisions))
        for (band, version), count in bands.items():
            self._band_child(band, version).inc(count)
        for version, count in churned.items():
            if count:
                self._churn_child(version).inc(count)
        scores = [group.scores for group in groups] + [event.scores for event, _ in rest]
        observe_many(self._score, np.concatenate(scores).astype(np.float64, copy=False))
        self._observe_stages(list(map(_STAGE_SECONDS, singles)) + [event.stage_seconds for event, _ in rest])
        for single in singles:
            if single.warned is not None:
                self._count_warnings(single.warned)
        for event, _ in rest:
            if event.imputed or event.unseen or event.out_of_range:
                self._count_warnings(event)

    def _observe_stages(self, stage_seconds: list[dict[str, float]]) -> None:
        stages: dict[str, Sequence[float]] | None = transpose(stage_seconds)
        if stages is None:  # events timed different stages (not expected): gather them one by one
            stages = {}
            for item in stage_seconds:
                for stage, seconds in item.items():
                    stages.setdefault(stage, []).append(seconds)  # type: ignore[union-attr]
        for stage, seconds in stages.items():
            observe_many(self._stage_child(stage), np.asarray(seconds, dtype=np.float64))

    def _count_warnings(self, event: PredictionEvent) -> None:
        counts = Counter((name, "imputed") for _, name in event.imputed)
        counts.update((name, "unseen_category") for _, name in event.unseen)
        counts.update((name, "out_of_range") for _, name in event.out_of_range)
        for (feature, kind), count in counts.items():
            self._warning_child(feature, kind).inc(count)

    # ---- drift -----------------------------------------------------------------------------------------
    def update_drift(self, now: float | None = None) -> DriftSnapshot | None:
        """Recompute the window's drift figures from all workers' counts and export them."""
        self.flush_metrics()  # the counters published alongside the drift figures cover the same predictions
        drift = self.drift
        if drift is None:
            return None
        drift.apply_pending(on_error=lambda exc: self._contained_failure("drift", exc))
        snapshot = drift.snapshot(self.clock() if now is None else now)
        self._publish_drift(snapshot)
        self.latest_drift = snapshot
        return snapshot

    def _publish_drift(self, snapshot: DriftSnapshot) -> None:
        m = self.metrics
        for figures in snapshot.features:
            labels = (figures.feature,)
            m.drift_psi.labels(*labels).set(figures.psi)
            m.drift_js.labels(*labels).set(figures.js)
            m.drift_threshold.labels(*labels).set(figures.threshold)
            m.drifting.labels(*labels).set(1 if figures.drifting else 0)
        m.score_psi.set(snapshot.score.psi)
        m.score_js.set(snapshot.score.js)
        m.score_drifting.set(1 if snapshot.score.drifting else 0)
        m.drift_window.set(snapshot.window_predictions)
        m.predicted_churn_rate.set(snapshot.predicted_churn_rate)

    def _drift_loop(self) -> None:
        last_cleanup = last_memory = 0.0
        while not self._stopping.wait(self.settings.drift_update_seconds):
            now = self.clock()
            try:
                self.update_drift(now)
                if now - last_cleanup >= STALE_TABLE_CHECK_SECONDS:
                    last_cleanup = now
                    self.metrics.sweep_dead_workers()
                    if self.drift is not None:
                        self.drift.remove_stale(now)
            except Exception as exc:
                self._contained_failure("drift", exc)
            if now - last_memory >= MEMORY_UPDATE_SECONDS:
                last_memory = now
                self.metrics.set_memory(resident_memory_bytes())

    # ---- deferred metric updates ---------------------------------------------------------------------------
    def flush_metrics(self) -> None:
        """Apply the request path's pending counter and histogram updates to the metrics."""
        try:
            self.metrics.flush_pending()
        except Exception as exc:
            self._contained_failure("metrics", exc)

    def write_log(self) -> int:
        """Write every prediction recorded so far to the log now (feedback and reports read it); rows written."""
        self.flush_metrics()  # drains recorded events into the log queue
        return self.log.flush()

    # ---- feedback and realized performance ---------------------------------------------------------------
    def apply_feedback(self, outcomes: list[OutcomeIn]) -> FeedbackResult:
        """Join outcomes to logged predictions (after writing this worker's queued ones) and refresh metrics.

        Raises SQLAlchemyError when the database is unavailable (the route answers 503).
        """
        self.write_log()
        result = apply_outcomes(self.log.connection, outcomes, self.clock())
        for status, count in status_counts(result).items():
            if count:
                self.metrics.feedback.labels(status=status).inc(count)
        result.performance = self.refresh_performance()
        return result

    def refresh_performance(self) -> RealizedPerformance:
        now = self.clock()
        start = now - self.settings.performance_window_days * SECONDS_PER_DAY
        with self.log.connection() as connection:
            data = labelled_predictions(connection, start, now + 1.0)
        performance = realized_performance(data, start, now)
        self._publish_performance(performance)
        self.latest_performance = performance
        return performance

    def _publish_performance(self, performance: RealizedPerformance) -> None:
        m = self.metrics

        def gauge_value(value: float | None) -> float:
            return math.nan if value is None else value

        m.realized_auc.set(gauge_value(performance.roc_auc))
        m.realized_precision.set(gauge_value(performance.precision))
        m.realized_recall.set(gauge_value(performance.recall))
        m.realized_f1.set(gauge_value(performance.f1))
        m.realized_count.set(performance.labelled_predictions)

    def _performance_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.refresh_performance()
            except Exception as exc:  # database down: counted, tried again next period
                self.metrics.log_errors.inc()
                self._contained_failure("performance", exc)
            self._performance_due.wait(self.settings.performance_update_seconds)
            self._performance_due.clear()

    # ---- report ------------------------------------------------------------------------------------------
    def daily_report(self, day: date | None = None) -> dict[str, Any]:
        now = self.clock()
        day = day or datetime.fromtimestamp(now, UTC).date()
        self.write_log()
        with self.log.connection() as connection:
            return daily_report(connection, day, self.latest_drift, self.latest_performance, now)

    # ---- failures ----------------------------------------------------------------------------------------
    def _contained_failure(self, where: str, exc: Exception) -> None:
        with contextlib.suppress(Exception):
            self.metrics.monitoring_errors.labels(where=where).inc()
        self._errors.error("monitoring %s failed (the request is unaffected): %s", where, exc, exc_info=exc)


class NullMonitor:
    """Monitoring switched off: the same interface, doing nothing; its routes answer 404 with the reason."""

    middleware_class = PassThroughMiddleware
    enabled = False

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings
        self.router: APIRouter = build_disabled_router()

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

    def request_meter(self, route: str) -> None:
        return None

    def record(self, event: PredictionEvent) -> None:
        return None


def create_monitor(settings: Settings) -> Monitor | NullMonitor:
    return Monitor(settings) if settings.monitoring_enabled else NullMonitor(settings)
