"""Durable log of every answered prediction: the writer, its metrics, retention and readers' access.

The monitor's background thread hands recorded events to :meth:`PredictionLog.write`, which has
:class:`~app.monitoring.log_store.LogWriter` insert their rows and counts what happened. A failed
write is counted and logged, never raised (the prediction has already been answered); when the
failure may pass (the database down, locked, missing its table) its rows are tried again at the
next write.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.monitoring.events import RecordedEvent
from app.monitoring.log_store import LogWriter, WriteReport, create_tables, make_engine
from app.monitoring.metrics import Metrics
from app.monitoring.throttled import ThrottledErrors

logger = logging.getLogger(__name__)

RETENTION_CHECK_SECONDS = 3600.0


class PredictionLog:
    """The writer around one database, with retention and a connection for readers (feedback, report)."""

    def __init__(
        self,
        database_url: str,
        metrics: Metrics,
        *,
        batch_size: int,
        queue_size: int,
        retention_days: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database_url = database_url
        self.metrics = metrics
        self.batch_size = batch_size
        self.queue_size = queue_size
        self.retention_days = retention_days
        self.clock = clock
        self.engine: Engine | None = None
        self._writer: LogWriter | None = None
        self._write_lock = threading.Lock()  # one write at a time: the background, or a flush for feedback
        self._last_retention = 0.0
        self._tables_checked = False  # by readers
        self._errors = ThrottledErrors(logger)

    def start(self) -> None:
        # No database round trip here: a slow or absent database must not hold up the service start.
        self.engine = make_engine(self.database_url)
        self._writer = LogWriter(
            self.database_url, batch_size=self.batch_size, queue_size=self.queue_size, engine=self.engine
        )
        self._writer.start()

    def stop(self) -> None:
        """Give up the rows still waiting for another try (counted) and release the database."""
        with self._write_lock:
            if self._writer is not None:
                self._count(self._writer.close())
                self._writer = None
        self.metrics.log_queue.set(0)
        if self.engine is not None:
            self.engine.dispose()

    @property
    def retry_records(self) -> int:
        """Rows kept for another try after a failed write."""
        writer = self._writer
        return writer.retry_records if writer is not None else 0

    def write(self, events: Sequence[RecordedEvent]) -> int:
        """Write the records of ``events`` (and any kept for another try); rows written. Never raises."""
        with self._write_lock:
            writer = self._writer
            if writer is None:  # not started, or stopped: nothing can write them
                lost = sum(recorded.event.size for recorded in events)
                if lost:
                    self.metrics.log_dropped.labels(reason="write_error").inc(lost)
                    self._errors.error("prediction log is not running: dropped %d rows", lost)
                return 0
            report = writer.write(events)
            self._count(report)
            return report.written

    def _count(self, report: WriteReport) -> None:
        if report.written:
            self.metrics.log_written.inc(report.written)
        if report.errors:
            self.metrics.log_errors.inc(report.errors)
        for reason, count in report.dropped.items():
            if count:
                self.metrics.log_dropped.labels(reason=reason).inc(count)

    # ---- retention ---------------------------------------------------------------------------------
    def enforce_retention_if_due(self) -> None:
        now = self.clock()
        if now - self._last_retention >= RETENTION_CHECK_SECONDS:
            self._last_retention = now
            self.enforce_retention(now)

    def enforce_retention(self, now: float | None = None) -> int:
        """Delete predictions (and their outcomes) older than the retention period; rows deleted."""
        now = self.clock() if now is None else now
        with self._write_lock:
            if self._writer is None:
                return 0
            report = self._writer.enforce_retention(now, self.retention_days)
            self._count(report)
            return report.deleted

    # ---- readers -----------------------------------------------------------------------------------
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
