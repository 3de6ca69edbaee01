"""The prediction log's database side: tables, rows and the writer that stores them.

``PredictionLog`` hands this module recorded prediction events. :class:`LogWriter` turns each
record into a table row (its cleaned feature values as the ``inputs`` JSON) and inserts them in
batches, trying again later when a failure may pass. It knows nothing of metrics: each call
returns a :class:`WriteReport` for the caller to count.

SQLite is the default (WAL journal and a busy timeout so several worker processes can write the
same file); a ``postgresql://`` URL uses PostgreSQL through psycopg 3.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any

import numpy as np
import orjson
from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from app.monitoring.events import PredictionEvent, RecordedEvent
from app.monitoring.throttled import ThrottledErrors

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000
POSTGRES_CONNECT_TIMEOUT_S = 5
SECONDS_PER_DAY = 86_400
MAX_WRITE_ATTEMPTS = 5  # tries per batch while the database reports errors that may pass

metadata = MetaData()

predictions_table = Table(
    "prediction_log",
    metadata,
    Column("prediction_id", String(64), primary_key=True),
    Column("predicted_at", Float, nullable=False),  # UNIX seconds, UTC
    Column("model_version", String(128), nullable=False),
    Column("customer_id", String(256), nullable=True),
    Column("inputs", Text, nullable=False),  # the record's cleaned feature values, JSON
    Column("score", Float, nullable=False),
    Column("predicted_churn", Boolean, nullable=False),
    Column("risk_band", String(64), nullable=False),
    Column("latency_seconds", Float, nullable=False),
    Column("batch_size", Integer, nullable=False),
    Index("ix_prediction_log_predicted_at", "predicted_at"),
    Index("ix_prediction_log_customer", "customer_id", "predicted_at"),
)

outcomes_table = Table(
    "prediction_outcome",
    metadata,
    Column("prediction_id", String(64), primary_key=True),
    Column("churned", Boolean, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)


def engine_url(database_url: str) -> str:
    """The SQLAlchemy URL to use: plain ``postgresql://`` means the installed psycopg 3 driver."""
    url = make_url(database_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def make_engine(database_url: str) -> Engine:
    url = engine_url(database_url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=2,
        connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S},
    )


def _configure_sqlite(connection: Any, _record: Any) -> None:
    # WAL lets readers and one writer (of any process) proceed together; the busy timeout makes
    # writers of other workers wait for the lock instead of failing at once.
    cursor = connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def create_tables(engine: Engine) -> None:
    """Create the log tables if missing; another worker creating them at the same moment is fine."""
    try:
        metadata.create_all(engine, checkfirst=True)
    except SQLAlchemyError:
        time.sleep(0.2)  # most likely lost the race to a sibling worker: check again once
        metadata.create_all(engine, checkfirst=True)


ROW_COLUMNS = tuple(column.name for column in predictions_table.columns)


# Rows per INSERT statement: 99 rows of 10 values stay within SQLite's oldest limit of 999 bound
# parameters (PostgreSQL allows 65,535).
ROWS_PER_STATEMENT = 99


@functools.lru_cache(maxsize=8)
def insert_statement(paramstyle: str, rows: int) -> str:
    """Plain SQL that inserts ``rows`` rows and skips prediction ids already logged.

    Written for the driver directly (no per-row SQLAlchemy parameter processing, which costs more
    than the insert itself), and idempotent, so one duplicate id never costs its whole batch. Many
    rows per statement, not one statement per row: the database driver releases the interpreter
    lock at every statement it runs, and each release lets this background thread and the request
    path trade the lock again, which costs the request path far more than the insert itself.
    """
    mark = "?" if paramstyle == "qmark" else "%s"
    columns = ", ".join(ROW_COLUMNS)
    values = ", ".join([f"({', '.join([mark] * len(ROW_COLUMNS))})"] * rows)
    return f"INSERT INTO prediction_log ({columns}) VALUES {values} ON CONFLICT (prediction_id) DO NOTHING"


def insert_rows(connection: Any, engine: Engine, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` with as few statements as the parameter limit allows."""
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        statement = insert_statement(engine.dialect.paramstyle, len(chunk))  # built once per size
        connection.exec_driver_sql(statement, tuple(chain.from_iterable(chunk)))


def _may_pass(error: Exception) -> bool:
    """Whether a failed write may succeed later: the database unreachable, locked, busy or missing a table."""
    if isinstance(error, OperationalError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def event_rows(event: PredictionEvent, latency: float | None) -> list[tuple[Any, ...]]:
    """The table rows of a scored event, in ROW_COLUMNS order (raises on a malformed event).

    ``latency``: the request's, from its start to scoring done; None when unknown (the stages' sum).
    """
    if latency is None:
        latency = float(sum(event.stage_seconds.values()))
    size = event.size
    inputs = [orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY).decode() for record in event.records()]
    return list(
        zip(
            event.prediction_ids,
            repeat(event.timestamp, size),
            repeat(event.model_version, size),
            event.customer_ids,
            inputs,
            np.asarray(event.scores, dtype=np.float64).tolist(),
            np.asarray(event.decisions, dtype=bool).tolist(),
            event.risk_bands,
            repeat(latency, size),
            repeat(size, size),
            strict=True,
        )
    )


@dataclass
class WriteReport:
    """What one call of the writer did, for the caller's metrics."""

    written: int = 0
    errors: int = 0  # failed database operations
    dropped: Counter[str] = field(default_factory=Counter)  # records given up, by reason
    waiting: int = 0  # records kept for another try after this call
    deleted: int = 0  # records removed by retention


class LogWriter:
    """Writes pending rows to the log database in batches; keeps failed batches for another try.

    Rows whose write failed for a reason that may pass (the database unreachable, locked, a table
    dropped under it) are written first next time, up to ``MAX_WRITE_ATTEMPTS`` tries and
    ``queue_size`` rows; beyond that they are dropped. Any other failure drops that batch at once
    (trying again could never succeed). Not thread-safe: one caller at a time.
    """

    def __init__(self, database_url: str, *, batch_size: int, queue_size: int, engine: Engine | None = None) -> None:
        self.database_url = database_url
        self.batch_size = batch_size
        self.queue_size = queue_size
        self.engine = engine
        self._tables_ready = False
        self._errors = ThrottledErrors(logger)
        # Batches whose write failed for a reason that may pass, with their attempts so far.
        self._retry: list[tuple[list[tuple[Any, ...]], int]] = []

    def start(self) -> None:
        # No database round trip here: a slow or absent database must not hold up the service start.
        if self.engine is None:
            self.engine = make_engine(self.database_url)

    @property
    def retry_records(self) -> int:
        """Rows waiting for another try after a failed write."""
        return sum(len(batch) for batch, _ in self._retry)

    def write(self, events: Sequence[RecordedEvent]) -> WriteReport:
        """Write the records of ``events`` (after the rows kept from failed writes); what happened, never raises."""
        report = WriteReport()
        rows = self._table_rows(events, report)
        batches = self._retry + [
            (rows[start : start + self.batch_size], 0) for start in range(0, len(rows), self.batch_size)
        ]
        self._retry = []
        for position, (batch, attempts) in enumerate(batches):
            error = self._write_batch(batch, report)
            if error is None:
                report.written += len(batch)
                continue
            if not _may_pass(error) or attempts + 1 >= MAX_WRITE_ATTEMPTS:
                self._drop(batch, error, report)
            else:
                self._retry.append((batch, attempts + 1))
            # The database is failing: keep the rest for the next try instead of failing each now.
            self._retry.extend(batches[position + 1 :])
            break
        self._bound_retry(report)
        report.waiting = self.retry_records
        return report

    def close(self) -> WriteReport:
        """Give up the rows waiting for another try (nothing will try them again) and release the database."""
        report = WriteReport()
        for batch, _ in self._retry:
            self._drop(batch, "the service stopped", report)
        self._retry = []
        if self.engine is not None:
            self.engine.dispose()
        return report

    def _table_rows(self, events: Sequence[RecordedEvent], report: WriteReport) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for recorded in events:
            try:
                rows.extend(event_rows(recorded.event, recorded.latency))
            except Exception as exc:  # a malformed event must not cost the others
                report.dropped["invalid"] += len(recorded.event.prediction_ids)
                self._errors.error("cannot log a prediction event: %s", exc)
        return rows

    def _write_batch(self, rows: list[tuple[Any, ...]], report: WriteReport) -> Exception | None:
        """Write one batch in one transaction; the exception when it failed (counted), else None."""
        try:
            if not self.ensure_tables(report):
                raise OperationalError("creating the tables", {}, Exception("prediction log tables are not available"))
            assert self.engine is not None
            with self.engine.begin() as connection:
                insert_rows(connection, self.engine, rows)
        except Exception as exc:  # down, full, read-only, dropped table: count and carry on
            report.errors += 1
            self._errors.error("prediction log write of %d rows failed: %s", len(rows), exc)
            self._tables_ready = False  # a dropped table is recreated on the next write
            return exc
        return None

    def _drop(self, rows: list[tuple[Any, ...]], why: object, report: WriteReport) -> None:
        report.dropped["write_error"] += len(rows)
        self._errors.error("dropped %d prediction log rows after a failed write: %s", len(rows), why)

    def _bound_retry(self, report: WriteReport) -> None:
        """Keep at most ``queue_size`` rows waiting for another try, dropping the oldest first."""
        while self._retry and self.retry_records > self.queue_size:
            batch, _ = self._retry.pop(0)
            self._drop(batch, "the retry backlog is full", report)

    def ensure_tables(self, report: WriteReport | None = None) -> bool:
        if self._tables_ready:
            return True
        if self.engine is None:
            return False
        try:
            create_tables(self.engine)
        except Exception as exc:
            if report is not None:
                report.errors += 1
            self._errors.error("cannot create the prediction log tables: %s", exc)
            return False
        self._tables_ready = True
        return True

    def enforce_retention(self, now: float, retention_days: int) -> WriteReport:
        """Delete predictions (and their outcomes) older than ``retention_days``."""
        report = WriteReport(waiting=self.retry_records)
        cutoff = now - retention_days * SECONDS_PER_DAY
        if self.engine is None or not self.ensure_tables(report):
            return report
        expired = select(predictions_table.c.prediction_id).where(predictions_table.c.predicted_at < cutoff)
        try:
            with self.engine.begin() as connection:
                connection.execute(delete(outcomes_table).where(outcomes_table.c.prediction_id.in_(expired)))
                result = connection.execute(delete(predictions_table).where(predictions_table.c.predicted_at < cutoff))
        except Exception as exc:
            report.errors += 1
            self._errors.error("prediction log retention failed: %s", exc)
            return report
        report.deleted = int(result.rowcount or 0)
        return report
