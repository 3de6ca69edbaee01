"""From the request path to the background: a bounded queue of scored events and the thread that empties it.

:meth:`EventRecorder.record` is all the request path pays: an append to a list under a lock. A
background thread wakes every ``prediction_log_flush_seconds`` (sooner once
``prediction_log_batch_size`` records wait) and hands everything queued to the prediction metrics,
the drift counts and the prediction log, in that order. Readers that must see every prediction
answered before them call :meth:`process` first (a scrape, a drift update), and :meth:`write_log`
too when they read the log (feedback, the report).
Both the queue and the log's backlog are bounded by ``prediction_log_queue_size`` records: what does
not fit is dropped and counted, and the request never waits. The thread paces itself (a few hundred
records, then a short pause), so under load requests lose a small, even share of the interpreter to
it rather than stall behind a whole drain.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from app.monitoring.drift_monitor import DriftMonitor
from app.monitoring.events import PredictionEvent, RecordedEvent
from app.monitoring.journal import Journal, JournalFile
from app.monitoring.log_store import event_rows
from app.monitoring.metrics import Metrics
from app.monitoring.prediction_log import PredictionLog
from app.monitoring.throttled import ThrottledErrors

logger = logging.getLogger(__name__)

# The background thread's pace: records counted, and records written to the log, between pauses.
PACED_RECORDS = 100
PACED_LOG_RECORDS = 500
PACE_PAUSE_SECONDS = 0.002


def _chunks(events: list[RecordedEvent], records: int) -> Iterator[list[RecordedEvent]]:
    """``events`` in consecutive runs of about ``records`` records each (an event is never split)."""
    chunk: list[RecordedEvent] = []
    size = 0
    for recorded in events:
        chunk.append(recorded)
        size += recorded.event.size
        if size >= records:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class PredictionMetrics:
    """The prediction counters and histograms, updated from recorded events."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._stage: dict[str, Any] = {}  # each stage's histogram series, looked up once

    def count(self, events: Sequence[RecordedEvent]) -> None:
        m = self.metrics
        bands: Counter[tuple[str, str]] = Counter()
        churned: Counter[str] = Counter()
        roles: Counter[tuple[str, str]] = Counter()
        for recorded in events:
            event = recorded.event
            roles[event.model_version, event.role] += event.size
            bands.update((band, event.model_version) for band in event.risk_bands)
            churned[event.model_version] += int(event.decisions.sum())
            for stage, seconds in event.stage_seconds.items():
                series = self._stage.get(stage)
                if series is None:
                    series = self._stage[stage] = m.stage_duration.labels(stage)
                series.observe(seconds)
            for score in event.scores.tolist():
                m.score.observe(score)
            if event.imputed or event.unseen or event.out_of_range:
                self._count_warnings(event)
        for (band, version), count in bands.items():
            m.predictions.labels(band, version).inc(count)
        for version, count in churned.items():
            m.predicted_churn.labels(version).inc(count)
        for (version, role), count in roles.items():
            m.role_predictions.labels(version, role).inc(count)

    def _count_warnings(self, event: PredictionEvent) -> None:
        counts = Counter((name, "imputed") for _, name in event.imputed)
        counts.update((name, "unseen_category") for _, name in event.unseen)
        counts.update((name, "out_of_range") for _, name in event.out_of_range)
        for (feature, kind), count in counts.items():
            self.metrics.feature_warnings.labels(feature, kind).inc(count)


class EventRecorder:
    """The bounded queue between the request path and the background, and the thread that empties it."""

    def __init__(
        self,
        metrics: Metrics,
        drift: DriftMonitor,
        log: PredictionLog,
        *,
        queue_size: int,
        batch_size: int,
        flush_seconds: float,
    ) -> None:
        self.metrics = metrics
        self.drift = drift
        self.log = log
        self.prediction_metrics = PredictionMetrics(metrics)
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self._queue: list[RecordedEvent] = []
        self._queued_records = 0
        self._queue_lock = threading.Lock()
        self._unwritten: list[RecordedEvent] = []  # counted, not yet handed to the log
        self._journal_files: list[JournalFile] = []  # rotated out; removed once their rows are written
        self._process_lock = threading.Lock()  # events reach metrics, drift and log in the order recorded
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = ThrottledErrors(logger)

    def record(self, event: PredictionEvent, latency: float | None) -> None:
        """Queue ``event`` for the background; drop and count it when the queue is full. Never blocks."""
        size = len(event.prediction_ids)
        journal, ledger = self.log.journal, self.log.ledger
        if ledger is not None:
            ledger.answered(size)
        with self._queue_lock:
            queued = self._queued_records + size
            accepted = queued <= self.queue_size
            if accepted:
                # Before the answer leaves; in the file the next drain rotates out. The writer reuses the rows.
                rows = self._journal(journal, event, latency) if journal is not None else None
                self._queue.append(RecordedEvent(event, latency, rows))
                self._queued_records = queued
        if not accepted:
            self._drop(size)
        elif queued >= self.batch_size:
            self._wake.set()

    def _journal(self, journal: Journal, event: PredictionEvent, latency: float | None) -> list[tuple[Any, ...]] | None:
        """The event's log rows, appended to the journal; None when that failed (the writer makes them again)."""
        try:
            rows = event_rows(event, latency)
            journal.append(rows)
        except (OSError, TypeError, ValueError) as exc:  # the row still reaches the log the usual way
            self.metrics.monitoring_errors.labels(where="journal").inc()
            self._errors.error("cannot append to the prediction log journal: %s", exc)
            return None
        return rows

    def _drop(self, records: int) -> None:
        self._accounted(records)
        self.metrics.log_dropped.labels(reason="queue_full").inc(records)
        self._errors.error("monitoring queue is full (%d records): dropped %d", self.queue_size, records)

    def process(self, paced: bool = False) -> None:
        """Count everything queued in the metrics and drift, and pass it on to the log. Safe from any thread.

        ``paced`` (the background thread): a few records at a time with a pause between, so that under
        load requests give up a small, even share of the interpreter rather than stall for a whole drain.
        """
        with self._process_lock:
            with self._queue_lock:
                events, self._queue = self._queue, []
                self._queued_records = 0
                journal = self.log.journal.rotate() if self.log.journal is not None and events else None
            if journal is not None:
                self._journal_files.append(journal)
            for chunk in _chunks(events, PACED_RECORDS if paced else sys.maxsize):
                self._contain("metrics", self.prediction_metrics.count, chunk)
                self._contain("drift", self.drift.count, chunk)
                self._queue_for_log(chunk)
                if paced:
                    time.sleep(PACE_PAUSE_SECONDS)
            self._publish_backlog()

    def _queue_for_log(self, events: list[RecordedEvent]) -> None:
        # Bounded too: a database that stays slow or down must not grow the backlog without end.
        backlog = self._unwritten_records()
        dropped = 0
        for recorded in events:
            if backlog + recorded.event.size <= self.queue_size:
                self._unwritten.append(recorded)
                backlog += recorded.event.size
            else:
                dropped += recorded.event.size
        if dropped:
            self._drop(dropped)

    def write_log(self, paced: bool = False) -> int:
        """Write every processed event to the log (the spool keeps what it cannot take); rows written. Never raises.

        ``paced``: in writes of a few hundred records with a pause between (see :meth:`process`).
        """
        with self._write_lock:  # a write in progress elsewhere finishes first: the caller reads after it
            with self._process_lock:
                events, self._unwritten = self._unwritten, []
                journal_files, self._journal_files = self._journal_files, []
            written = 0
            for chunk in _chunks(events, PACED_LOG_RECORDS if paced else sys.maxsize):
                written += self.log.write(chunk)
                self._accounted(sum(recorded.event.size for recorded in chunk))  # written, spooled or counted lost
                if paced:
                    time.sleep(PACE_PAUSE_SECONDS)
            for journal_file in journal_files:  # their rows are in the log or the spool (or counted lost)
                journal_file.remove()
            self._publish_backlog()
            return written

    def _accounted(self, records: int) -> None:
        if self.log.ledger is not None:
            self.log.ledger.accounted(records)

    def _unwritten_records(self) -> int:
        return sum(recorded.event.size for recorded in self._unwritten)

    def _publish_backlog(self) -> None:
        self.metrics.log_queue.set(self._queued_records + self._unwritten_records())

    def _contain(self, where: str, step: Callable[[list[RecordedEvent]], object], events: list[RecordedEvent]) -> None:
        try:
            step(events)
        except Exception as exc:  # monitoring never fails a request, nor stops the others' figures
            self.metrics.monitoring_errors.labels(where=where).inc()
            self._errors.error("monitoring %s failed (the requests are unaffected): %s", where, exc, exc_info=exc)

    # ---- the background thread -------------------------------------------------------------------
    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="monitor-recorder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, after handing on everything recorded before."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.process()
        self.write_log()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.process(paced=True)
            self.write_log(paced=True)
            self.log.replay()
            self.log.upkeep_if_due()
