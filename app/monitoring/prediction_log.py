"""Durable log of every answered prediction: the writer, its metrics, retention and readers' access.

The monitor's background thread hands recorded events to :meth:`PredictionLog.write`, which has
:class:`~app.monitoring.log_writer.LogWriter` insert their rows and counts what happened, and calls
:meth:`PredictionLog.replay` to bring spooled rows (of this worker or a stopped one) into the log.
A failed write is counted and logged, never raised (the prediction has already been answered):
rows the database cannot take now wait in the local spool, one directory per database.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app.monitoring.events import RecordedEvent
from app.monitoring.journal import Journal
from app.monitoring.ledger import Ledger, settle
from app.monitoring.log_store import WriteReport, create_tables, make_engine
from app.monitoring.log_writer import LogWriter
from app.monitoring.metrics import Metrics
from app.monitoring.spool import Spool
from app.monitoring.throttled import ThrottledErrors

logger = logging.getLogger(__name__)

RETENTION_CHECK_SECONDS = 3600.0
STATISTICS_SECONDS = 600.0  # the readers' query plans follow the log's growth


class PredictionLog:
    """The writer around one database, with retention and a connection for readers (feedback, report)."""

    def __init__(
        self,
        database_url: str,
        metrics: Metrics,
        *,
        batch_size: int,
        retention_days: int,
        spool_dir: Path,
        spool_max_bytes: int,
        write_ahead: bool,
        journal: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database_url = database_url
        self.metrics = metrics
        self.batch_size = batch_size
        self.retention_days = retention_days
        self.spool = Spool(spool_dir / database_key(database_url), spool_max_bytes)
        self.journal = Journal(self.spool.directory / "journal") if journal else None
        # Without the journal a killed worker loses its unflushed rows: the ledgers count them.
        self.ledger = None if journal else Ledger(self.spool.directory / "ledger")
        self.write_ahead = write_ahead
        self.clock = clock
        self.engine: Engine | None = None
        self._writer: LogWriter | None = None
        self._write_lock = threading.Lock()  # one write at a time: the background, or a flush for feedback
        self._last_retention = 0.0
        self._last_statistics = 0.0
        self._tables_checked = False  # by readers
        self._errors = ThrottledErrors(logger)

    def start(self) -> None:
        # No database round trip here: a slow or absent database must not hold up the service start.
        self.engine = make_engine(self.database_url)
        self._writer = LogWriter(
            self.database_url,
            batch_size=self.batch_size,
            spool=self.spool,
            write_ahead=self.write_ahead,
            engine=self.engine,
        )
        self._count(self._writer.start())
        if self.journal is not None:
            self.journal.start(self.spool)
        if self.ledger is not None:
            self.settle_ledgers()
            self.ledger.start()

    def stop(self) -> None:
        """Release the database; rows it lacks stay in the spool for the next start (of any worker)."""
        if self.journal is not None:
            self.journal.stop()
        if self.ledger is not None:
            self.ledger.stop()
        with self._write_lock:
            if self._writer is not None:
                self._count(self._writer.close())
                self._writer = None
        self.metrics.log_queue.set(0)
        if self.engine is not None:
            self.engine.dispose()

    def write(self, events: Sequence[RecordedEvent]) -> int:
        """Write the records of ``events`` (the spool keeps what the database refuses); rows written. Never raises."""
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

    def replay(self) -> int:
        """Write some spooled rows to the log if the database takes them again; rows replayed. Never raises."""
        with self._write_lock:
            if self._writer is None:
                return 0
            report = self._writer.replay()
            self._count(report)
            return report.replayed

    def _count(self, report: WriteReport) -> None:
        m = self.metrics
        for counter, value in (
            (m.log_written, report.written),
            (m.log_errors, report.errors),
            (m.log_spooled, report.spooled),
            (m.log_replayed, report.replayed),
            (m.log_truncated, report.truncated),
        ):
            if value:
                counter.inc(value)
        for reason, count in report.dropped.items():
            if count:
                m.log_dropped.labels(reason=reason).inc(count)
        if report.spooled or report.replayed or report.dropped:
            self.metrics.log_spool_rows.set(self.spool.pending_rows())

    # ---- upkeep ------------------------------------------------------------------------------------
    def settle_ledgers(self) -> int:
        """Count the answered rows that workers which died never accounted for; rows counted."""
        if self.ledger is None:
            return 0
        lost = settle(self.ledger.directory)
        if lost:
            self.metrics.log_dropped.labels(reason="worker_killed").inc(lost)
        return lost

    def upkeep_if_due(self) -> None:
        """Retention (hourly) and the database's statistics (every few minutes), when their time comes."""
        now = self.clock()
        if now - self._last_retention >= RETENTION_CHECK_SECONDS:
            self._last_retention = now
            self.enforce_retention(now)
        if now - self._last_statistics >= STATISTICS_SECONDS:
            self._last_statistics = now
            with self._write_lock:
                if self._writer is not None:
                    self._writer.refresh_statistics()

    def statistics_due(self) -> None:
        """Have the background refresh the database's statistics at its next pass (after new outcomes)."""
        self._last_statistics = 0.0

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


def database_key(database_url: str) -> str:
    """A short name for one log database (password left out): its rows' spool directory."""
    url = make_url(database_url).render_as_string(hide_password=True)
    return hashlib.sha256(url.encode()).hexdigest()[:16]
