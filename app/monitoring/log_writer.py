"""Writes prediction-log rows to the database, spooling to local disk what the database cannot take now.

Rows the database refuses as a whole (down, locked, restarting) go to the :class:`Spool` and are
replayed, oldest first, once a write succeeds again: no cap on tries, only the spool's byte budget.
A row the database refuses on its own (a value a column rejects) costs only itself: a failed batch
is split in halves until the culprits stand alone, and those are dropped and counted as ``invalid``.
With ``write_ahead`` every batch is spooled before it is sent and its segment removed once it is in
the log, so a process killed at any point loses only what it had not yet taken from its queue.

An outage is logged once when it starts and once when it ends; losses are logged with their counts.
It knows nothing of metrics: each call returns a :class:`WriteReport` for the caller to count.
Not thread-safe: one caller at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import OperationalError

from app.monitoring import aggregates
from app.monitoring.events import RecordedEvent
from app.monitoring.log_store import (
    SECONDS_PER_DAY,
    WriteReport,
    create_tables,
    event_rows,
    fit_rows,
    insert_rows,
    is_row_error,
    logged_ids,
    make_engine,
    outcomes_table,
    predictions_table,
)
from app.monitoring.spool import Spool, SpoolSegment
from app.monitoring.throttled import ThrottledErrors, ThrottledLosses

logger = logging.getLogger(__name__)

REPLAY_BATCHES_PER_CALL = 5  # replay some each time, so a long backlog never stalls the live rows
SQLITE_ANALYSIS_LIMIT = 400  # rows ANALYZE samples per index: sizes are what the planner needs
OUTAGE_PROBE_SECONDS = 5.0  # during an outage, how often a replay tries the database when nothing else does

Rows = list[tuple[Any, ...]]


class _AlreadyLogged(Exception):
    """Some rows of an insert were in the log already: insert again without them."""


class LogWriter:
    """Inserts rows in batches; spools what the database cannot take and replays it later."""

    def __init__(
        self, database_url: str, *, batch_size: int, spool: Spool, write_ahead: bool, engine: Engine | None = None
    ) -> None:
        self.database_url = database_url
        self.batch_size = batch_size
        self.spool = spool
        self.write_ahead = write_ahead and spool.enabled
        self.engine = engine
        self._tables_ready = False
        self._outage_since: float | None = None
        self._last_failure = 0.0
        self._errors = ThrottledErrors(logger)
        self._losses = ThrottledLosses(logger)

    def start(self) -> WriteReport:
        # No database round trip here: a slow or absent database must not hold up the service start.
        if self.engine is None:
            self.engine = make_engine(self.database_url)
        report = WriteReport()
        try:
            self._lose(report, "spool_unreadable", self.spool.start(), "torn spool files of a stopped process")
        except OSError as exc:
            self._errors.error("cannot open the prediction log spool %s: %s", self.spool.directory, exc)
        return report

    def close(self) -> WriteReport:
        """Release the database. Nothing is held in memory: whatever the log lacks is in the spool."""
        if self.engine is not None:
            self.engine.dispose()
        return WriteReport()

    # ---- writing ---------------------------------------------------------------------------------
    def write(self, events: Sequence[RecordedEvent]) -> WriteReport:
        """Write the records of ``events``, spooling what the database cannot take; never raises."""
        report = WriteReport()
        rows = self._table_rows(events, report)
        for start in range(0, len(rows), self.batch_size):
            self._store(rows[start : start + self.batch_size], report)
        self._losses.flush_if_due()
        return report

    def _store(self, rows: Rows, report: WriteReport) -> None:
        segment = self._spool(rows, report, ahead=True) if self.write_ahead else None
        unwritten, error = self._insert_isolating(rows, report)
        if error is None:
            if segment is not None:
                segment.remove()
            return
        if segment is not None:  # already on disk: replayed later (rows logged meanwhile are skipped then)
            if len(unwritten) < len(rows):
                rest = self._spool(unwritten, report, ahead=True)
                if rest is not None:  # keep only what is left, so refused rows are not counted twice
                    segment.remove()
                    segment = rest
            segment.release()
            report.spooled += len(unwritten)
            return
        segment = self._spool(unwritten, report, ahead=False)
        if segment is not None:
            segment.release()
            report.spooled += len(unwritten)

    def _spool(self, rows: Rows, report: WriteReport, *, ahead: bool) -> SpoolSegment | None:
        """Spool ``rows``; None when the spool cannot take them (then lost, unless only written ahead)."""
        try:
            segment = self.spool.write(rows)
        except (OSError, TypeError, ValueError) as exc:
            if ahead:
                self._errors.error("cannot write ahead to the prediction log spool: %s", exc)
            else:
                self._lose(report, "write_error", len(rows), f"the spool failed: {exc}")
            return None
        if segment is None and not ahead:
            self._lose(report, "spool_full", len(rows), f"the spool {self.spool.directory} has no room")
        return segment

    def _insert_isolating(self, rows: Rows, report: WriteReport) -> tuple[Rows, Exception | None]:
        """Insert ``rows``, dropping the ones the database refuses alone; (rows left, the failure) on a failure."""
        pieces = [rows]
        while pieces:
            piece = pieces.pop()
            try:
                report.written += self._insert(piece)
            except Exception as exc:
                if not is_row_error(exc):
                    self._database_failed(exc, report)
                    return [row for unwritten in (*pieces, piece) for row in unwritten], exc
                if len(piece) == 1:
                    self._lose(report, "invalid", 1, f"a row the database refuses: {exc}")
                else:
                    middle = len(piece) // 2
                    pieces += [piece[middle:], piece[:middle]]
        self._database_ok()
        return [], None

    def _insert(self, rows: Rows) -> int:
        """Insert ``rows`` and add them to the aggregates, in one transaction; rows newly logged."""
        if not rows:
            return 0
        if not self.ensure_tables():
            raise OperationalError("creating the tables", {}, Exception("prediction log tables are not available"))
        assert self.engine is not None
        try:
            with self.engine.begin() as connection:
                if insert_rows(connection, rows) != len(rows):
                    raise _AlreadyLogged
                aggregates.add_rows(connection, rows)
                return len(rows)
        except _AlreadyLogged:
            with self.engine.begin() as connection:
                logged = logged_ids(connection, [row[0] for row in rows])
                new = [row for row in rows if row[0] not in logged]
                insert_rows(connection, new)
                aggregates.add_rows(connection, new)
                return len(new)

    # ---- the spool's replay ------------------------------------------------------------------------
    def replay(self) -> WriteReport:
        """Write some spooled rows (of any process) to the log while the database takes them; never raises."""
        report = WriteReport()
        if not self.spool.enabled:
            return report
        if self._outage_since is not None and time.monotonic() - self._last_failure < OUTAGE_PROBE_SECONDS:
            return report  # the database failed moments ago: live writes (or a later probe) try it again
        try:
            self._lose(report, "spool_unreadable", self.spool.salvage(), "torn spool files of a killed process")
            self._replay(report)
        except OSError as exc:
            self._errors.error("cannot read the prediction log spool %s: %s", self.spool.directory, exc)
        self._losses.flush_if_due()
        return report

    def _replay(self, report: WriteReport) -> None:
        budget = REPLAY_BATCHES_PER_CALL * self.batch_size
        for claimed in self.spool.claim():
            if isinstance(claimed, int):
                self._lose(report, "spool_unreadable", claimed, "an unreadable spool file")
                continue
            written = report.written
            _, error = self._insert_isolating(claimed.rows, report)
            if error is not None:
                claimed.release()  # the database failed again: the whole segment waits (replays are idempotent)
                return
            claimed.remove()
            report.replayed += report.written - written
            budget -= len(claimed.rows)
            if budget <= 0:
                return

    # ---- outages -----------------------------------------------------------------------------------
    def _database_failed(self, error: Exception, report: WriteReport) -> None:
        report.errors += 1
        self._tables_ready = False  # a dropped table is recreated on the next write
        self._last_failure = time.monotonic()
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            where = f"spooling rows to {self.spool.directory}" if self.spool.enabled else "no spool: rows are lost"
            logger.error("prediction log database unavailable (%s until it is back): %s", where, error)

    def _database_ok(self) -> None:
        if self._outage_since is not None:
            seconds = time.monotonic() - self._outage_since
            self._outage_since = None
            logger.warning(
                "prediction log database is back after %.0f s; replaying %d spooled rows",
                seconds,
                self.spool.pending_rows(),
            )

    def _lose(self, report: WriteReport, reason: str, rows: int, why: str) -> None:
        if rows > 0:
            report.dropped[reason] += rows
            self._losses.add(reason, rows, why)

    def _table_rows(self, events: Sequence[RecordedEvent], report: WriteReport) -> Rows:
        rows: Rows = []
        for recorded in events:
            try:
                made = recorded.rows  # by the journal, on the request path
                rows.extend(made if made is not None else event_rows(recorded.event, recorded.latency))
            except Exception as exc:  # a malformed event must not cost the others
                self._lose(report, "invalid", len(recorded.event.prediction_ids), f"a malformed event: {exc}")
        rows, report.truncated = fit_rows(rows)
        return rows

    def ensure_tables(self) -> bool:
        if self._tables_ready:
            return True
        if self.engine is None:
            return False
        try:
            create_tables(self.engine)
        except Exception as exc:
            self._errors.error("cannot create the prediction log tables: %s", exc)
            return False
        self._tables_ready = True
        return True

    # ---- upkeep -----------------------------------------------------------------------------------
    def refresh_statistics(self) -> None:
        """Tell SQLite's planner the tables' sizes (PostgreSQL's autovacuum does it by itself).

        Without them it reads a day's predictions to find the few with an outcome, instead of the
        other way round, and the daily report's cost grows with the day's traffic.
        """
        if self.engine is None or self.engine.dialect.name != "sqlite" or not self.ensure_tables():
            return
        try:
            with self.engine.begin() as connection:
                connection.exec_driver_sql(f"PRAGMA analysis_limit = {SQLITE_ANALYSIS_LIMIT}")
                connection.exec_driver_sql("ANALYZE")
        except Exception as exc:
            self._errors.error("prediction log statistics failed: %s", exc)

    def enforce_retention(self, now: float, retention_days: int) -> WriteReport:
        """Delete predictions (their outcomes and aggregates) older than ``retention_days``."""
        report = WriteReport()
        cutoff = now - retention_days * SECONDS_PER_DAY
        if self.engine is None or not self.ensure_tables():
            return report
        expired = select(predictions_table.c.prediction_id).where(predictions_table.c.predicted_at < cutoff)
        try:
            with self.engine.begin() as connection:
                connection.execute(delete(outcomes_table).where(outcomes_table.c.prediction_id.in_(expired)))
                result = connection.execute(delete(predictions_table).where(predictions_table.c.predicted_at < cutoff))
                aggregates.delete_before(connection, cutoff)
        except Exception as exc:
            report.errors += 1
            self._errors.error("prediction log retention failed: %s", exc)
            return report
        report.deleted = int(result.rowcount or 0)
        return report
