"""Durable log of every prediction, written off the request path.

Scored events reach a bounded in-memory queue (counted in records) from the monitor's drain, off
the request path (see ``Monitor.record``). A background thread takes the queue at least every
``prediction_log_flush_seconds`` (sooner once ``prediction_log_batch_size`` records wait) and hands
its pending rows to the writer, which builds the table rows and inserts them in batches
(``app.monitoring.log_store``). By default the writer runs in a process of its own
(``app.monitoring.log_process``), so building and inserting rows never holds this process's
interpreter lock while requests wait for it; each drain then queues its events' pending rows
already serialised, and the thread only passes bytes on. ``prediction_log_writer = "thread"``
keeps the writer here, and the queue holds the events themselves.

A full queue drops the event (counted by reason, logged) instead of blocking. A failed write is
counted and logged, never raised (the prediction has already been answered); when the failure may
pass (the database down, locked, missing its table) its rows are tried again.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.monitoring.events import GatheredSingles, PredictionEvent
from app.monitoring.log_process import LogWriterProcess
from app.monitoring.log_store import (
    LogWriter,
    PendingRow,
    PreparedRows,
    WriteReport,
    create_tables,
    make_engine,
    pending_rows,
)
from app.monitoring.metrics import Metrics
from app.monitoring.throttled import ThrottledErrors

logger = logging.getLogger(__name__)

RETENTION_CHECK_SECONDS = 3600.0
WRITER_KINDS = ("process", "thread")
LogItem = PredictionEvent | GatheredSingles | PreparedRows  # what the queue holds


class Writer(Protocol):
    """What the log needs of its writer: ``LogWriter`` here, or ``LogWriterProcess`` in a child."""

    retry_records: int

    def start(self) -> None: ...

    def write(self, pending: list[PendingRow], prepared: Sequence[PreparedRows] = ()) -> WriteReport: ...

    def enforce_retention(self, now: float, retention_days: int) -> WriteReport: ...

    def close(self) -> WriteReport: ...


class PredictionLog:
    """Bounded queue + background thread feeding the writer + retention, around one database."""

    def __init__(
        self,
        database_url: str,
        metrics: Metrics,
        *,
        batch_size: int,
        flush_seconds: float,
        queue_size: int,
        retention_days: int,
        writer: str = "process",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if writer not in WRITER_KINDS:
            raise ValueError(f"prediction log writer must be one of {', '.join(WRITER_KINDS)}, not {writer!r}")
        self.database_url = database_url
        self.metrics = metrics
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.queue_size = queue_size
        self.retention_days = retention_days
        self.writer_kind = writer
        self.clock = clock
        self.engine: Engine | None = None  # for readers (feedback, report), and the writer when it runs here
        self._writer: Writer | None = None
        # Scored events (or gathered single records), or (with a writer process) their rows already
        # serialised, with request latencies.
        self._pending: deque[tuple[LogItem, float | None]] = deque()
        self._pending_records = 0
        self._waiting_records = 0  # kept by the writer for another try, as of its last report
        self._queue_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._write_lock = threading.Lock()  # one writer call at a time: the thread, or a flush for feedback
        self._thread: threading.Thread | None = None
        self._last_retention = 0.0
        self._errors = ThrottledErrors(logger)
        self._tables_checked = False  # by readers
        # Run by the log's thread before each periodic write instead of the metrics' flush sources
        # (the monitor drains there only what its event loop will not drain soon: see Monitor).
        self.before_flush: Callable[[], object] | None = None

    # ---- from the monitor's drain -------------------------------------------------------------------
    def enqueue(self, event: PredictionEvent | GatheredSingles, request_latency: float | None) -> bool:
        """Queue a scored batch for writing; False (and counted) when the queue is full. Never blocks."""
        return self._queue(event, request_latency, len(event.prediction_ids))

    def enqueue_many(self, events: Sequence[tuple[PredictionEvent | GatheredSingles, float | None]]) -> None:
        """Queue the events of one drain (its single records gathered, see ``gather_records``). Never blocks.

        With a writer process, their pending rows are built and serialised here, at once, while
        the events are fresh in the processor's caches (the drain runs right after they were
        recorded): the log's thread then only hands bytes to the writer. As with :meth:`enqueue`,
        an event that does not fit in the queue is dropped (counted), and a malformed one is
        counted and skipped.
        """
        if self.writer_kind != "process":
            for event, latency in events:
                self.enqueue(event, latency)
            return
        rows_by_event = [self._pending_rows([entry]) for entry in events]
        dropped = 0
        with self._queue_lock:  # serialised under the lock, so the queue's record count stays exact
            queued = self._pending_records
            accepted: list[PendingRow] = []
            for rows in rows_by_event:
                if queued + len(rows) > self.queue_size:
                    dropped += len(rows)
                else:
                    accepted.extend(rows)
                    queued += len(rows)
            if accepted:
                payload = pickle.dumps(accepted, protocol=pickle.HIGHEST_PROTOCOL)
                self._pending.append((PreparedRows(payload, len(accepted)), None))
                self._pending_records = queued
        self._after_queueing(queued, dropped)

    def _queue(self, item: LogItem, request_latency: float | None, size: int) -> bool:
        with self._queue_lock:
            queued = self._pending_records
            if queued + size > self.queue_size:
                accepted = False
            else:
                self._pending.append((item, request_latency))
                self._pending_records = queued = queued + size
                accepted = True
        self._after_queueing(queued, 0 if accepted else size)
        return accepted

    def _after_queueing(self, queued: int, dropped: int) -> None:
        if dropped:
            self.metrics.log_dropped.labels(reason="queue_full").inc(dropped)
            self.metrics.log_queue.set(queued)
            self._errors.error("prediction log queue is full (%d records): dropped %d", self.queue_size, dropped)
            return
        # The queue gauge is refreshed by the writer, not here: one gauge write less per prediction.
        if queued >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    def wake(self) -> None:
        """Have the writer write now rather than at its next period (a batch's worth is waiting)."""
        if not self._wake.is_set():
            self._wake.set()

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        # No database round trip here: a slow or absent database must not hold up the service start.
        self.engine = make_engine(self.database_url)
        if self.writer_kind == "process":
            self._writer = LogWriterProcess(self.database_url, batch_size=self.batch_size, queue_size=self.queue_size)
        else:
            self._writer = LogWriter(
                self.database_url, batch_size=self.batch_size, queue_size=self.queue_size, engine=self.engine
            )
        self._writer.start()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the writer after it has written everything queued (or given up on a broken database)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()
        with self._write_lock:  # nothing will try them again: count what could not be written
            if self._writer is not None:
                self._apply(self._writer.close())
                self._writer = None
        self._waiting_records = 0
        if self.engine is not None:
            self.engine.dispose()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            # First the metrics flush, which queues what was recorded since (see Monitor.drain_if_due).
            self._flush_metrics()
            self.publish_queue_size()  # the backlog the writer found
            self.flush()  # publishes the queue size it leaves (what arrived meanwhile, what waits for a retry)
            self._maybe_enforce_retention()

    # ---- writing ---------------------------------------------------------------------------------
    def _take(self) -> list[tuple[LogItem, float | None]]:
        with self._queue_lock:
            taken = list(self._pending)
            self._pending.clear()
            self._pending_records = 0
        return taken

    def _flush_metrics(self) -> None:
        # The request path's deferred updates (and recorded predictions) reach the metrics here, at
        # least every flush_seconds: no thread of their own to wake.
        try:
            if self.before_flush is not None:
                self.before_flush()
            self.metrics.flush_pending(run_sources=self.before_flush is None)
        except Exception as exc:
            self.metrics.monitoring_errors.labels(where="metrics").inc()
            self._errors.error("applying deferred metric updates failed: %s", exc)

    def publish_queue_size(self) -> None:
        self.metrics.log_queue.set(self._pending_records + self._waiting_records)

    @property
    def retry_records(self) -> int:
        """Rows the writer keeps for another try after a failed write (as of its last report)."""
        return self._waiting_records

    def flush(self) -> int:
        """Write everything queued so far; returns the number of rows written. Safe from any thread.

        Rows whose write failed for a reason that may pass are kept by the writer and written first
        next time (see ``LogWriter``); beyond its limits they are dropped and counted.
        """
        with self._write_lock:
            taken = self._take()
            prepared = [item for item, _ in taken if isinstance(item, PreparedRows)]
            pending = self._pending_rows([entry for entry in taken if not isinstance(entry[0], PreparedRows)])
            if self._writer is None:  # not started, or stopped: nothing can write them
                lost = len(pending) + sum(parcel.records for parcel in prepared)
                if lost:
                    self.metrics.log_dropped.labels(reason="write_error").inc(lost)
                    self._errors.error("prediction log is not running: dropped %d rows", lost)
                return 0
            report = self._writer.write(pending, prepared)
            self._apply(report)
            self.publish_queue_size()
            return report.written

    def _pending_rows(self, taken: list[Any]) -> list[PendingRow]:
        rows: list[PendingRow] = []
        for item_event, latency in taken:
            try:
                rows.extend(pending_rows(item_event, latency))
            except Exception as exc:  # a malformed event must not block the others
                self.metrics.log_dropped.labels(reason="invalid").inc(len(item_event.prediction_ids))
                self._errors.error("cannot log a prediction event: %s", exc)
        return rows

    def _apply(self, report: WriteReport) -> None:
        """The writer's report into the metrics."""
        if report.written:
            self.metrics.log_written.inc(report.written)
        if report.errors:
            self.metrics.log_errors.inc(report.errors)
        for reason, count in report.dropped.items():
            if count:
                self.metrics.log_dropped.labels(reason=reason).inc(count)
        self._waiting_records = report.waiting

    # ---- retention ---------------------------------------------------------------------------------
    def _maybe_enforce_retention(self) -> None:
        now = self.clock()
        if now - self._last_retention >= RETENTION_CHECK_SECONDS:
            self._last_retention = now
            self.enforce_retention(now)

    def enforce_retention(self, now: float | None = None) -> int:
        """Delete predictions (and their outcomes) older than the retention period; returns rows deleted."""
        now = self.clock() if now is None else now
        with self._write_lock:
            if self._writer is None:
                return 0
            report = self._writer.enforce_retention(now, self.retention_days)
            self._apply(report)
            return report.deleted

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """A transaction on the log database for readers (feedback, report); raises if it is unavailable."""
        if self.engine is None:
            raise SQLAlchemyError("the prediction log is not started")
        if not self._tables_checked:
            try:
                create_tables(self.engine)
            except Exception as exc:
                self.metrics.log_errors.inc()
                raise SQLAlchemyError(f"the prediction log database is unavailable: {exc}") from exc
            self._tables_checked = True
        try:
            with self.engine.begin() as connection:
                yield connection
        except SQLAlchemyError:
            self._tables_checked = False  # a table dropped under us is recreated on the next read
            raise
