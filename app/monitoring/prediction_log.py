"""Durable log of every prediction, written off the request path.

Scored events reach a bounded in-memory queue (counted in records) from the monitor's drain, off
the request path (see ``Monitor.record``); a background thread turns events into rows and inserts
them in batches of ``prediction_log_batch_size`` at least every ``prediction_log_flush_seconds``.
A full queue drops the event (counted by reason, logged) instead of blocking. A failed write is
counted and logged, never raised (the prediction has already been answered); when the failure may
pass (the database down, locked, missing its table) its rows are tried again (see ``flush``).

SQLite is the default (WAL journal and a busy timeout so several worker processes can write the
same file); a ``postgresql://`` URL uses PostgreSQL through psycopg 3.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from itertools import chain, repeat
from typing import Any

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

from app.monitoring.events import PredictionEvent
from app.monitoring.metrics import Metrics

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000
POSTGRES_CONNECT_TIMEOUT_S = 5
RETENTION_CHECK_SECONDS = 3600.0
SECONDS_PER_DAY = 86_400
ERROR_LOG_INTERVAL_S = 60.0  # a broken database is logged once a minute, not once per batch
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


def event_rows(event: PredictionEvent, request_latency: float | None) -> list[tuple[Any, ...]]:
    """One row per record of a scored batch, in ROW_COLUMNS order.

    Runs on the writer thread: each record's ``inputs`` JSON (feature -> cleaned value, in schema
    order) is built here from the event's columns, so the request path never builds those rows.
    """
    latency = request_latency if request_latency is not None else float(sum(event.stage_seconds.values()))
    size = len(event.prediction_ids)
    timestamp, version = event.timestamp, event.model_version
    if size == 1 and len(event.customer_ids) == len(event.risk_bands) == 1:  # /predict: skip the column machinery
        if event.row is not None and len(event.row) == len(event.columns):
            inputs = dict(zip(event.columns, event.row, strict=True))
        else:
            inputs = {name: values[0] for name, values in event.columns.items()}
        return [
            (
                event.prediction_ids[0],
                timestamp,
                version,
                event.customer_ids[0],
                orjson.dumps(inputs, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
                float(event.scores[0]),
                bool(event.decisions[0]),
                event.risk_bands[0],
                latency,
                1,
            )
        ]
    return list(
        zip(
            event.prediction_ids,
            repeat(timestamp, size),
            repeat(version, size),
            event.customer_ids,
            record_inputs_json(event.columns, size),
            event.scores.astype(float).tolist(),
            event.decisions.astype(bool).tolist(),
            event.risk_bands,
            repeat(latency, size),
            repeat(size, size),
            strict=True,
        )
    )


def record_inputs_json(columns: dict[str, list[Any]], size: int) -> list[str]:
    """Each record's cleaned feature values as a JSON object, from the values stored by feature."""
    names = list(columns)
    dumps, option = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
    if not names:
        return ["{}"] * size
    return [
        dumps(dict(zip(names, values, strict=True)), option=option).decode()
        for values in zip(*columns.values(), strict=True)
    ]


class PredictionLog:
    """Bounded queue + background batch writer + retention, around one database."""

    def __init__(
        self,
        database_url: str,
        metrics: Metrics,
        *,
        batch_size: int,
        flush_seconds: float,
        queue_size: int,
        retention_days: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database_url = database_url
        self.metrics = metrics
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.queue_size = queue_size
        self.retention_days = retention_days
        self.clock = clock
        self.engine: Engine | None = None
        self._pending: deque[tuple[PredictionEvent, float | None]] = deque()
        self._pending_records = 0
        self._queue_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._write_lock = threading.Lock()  # one writer at a time: the thread, or a flush for feedback
        self._thread: threading.Thread | None = None
        self._tables_ready = False
        self._last_retention = 0.0
        self._last_error_logged = 0.0
        # Batches whose write failed for a reason that may pass, with their attempts so far.
        self._retry: list[tuple[list[tuple[Any, ...]], int]] = []

    # ---- request path ----------------------------------------------------------------------------
    def enqueue(self, event: PredictionEvent, request_latency: float | None) -> bool:
        """Queue a scored batch for writing; False (and counted) when the queue is full. Never blocks."""
        size = len(event.prediction_ids)
        with self._queue_lock:
            queued = self._pending_records
            if queued + size > self.queue_size:
                accepted = False
            else:
                self._pending.append((event, request_latency))
                self._pending_records = queued = queued + size
                accepted = True
        if not accepted:
            self.metrics.log_dropped.labels(reason="queue_full").inc(size)
            self.metrics.log_queue.set(queued)
            self._log_failure("prediction log queue is full (%d records): dropped %d", self.queue_size, size)
            return False
        # The queue gauge is refreshed by the writer, not here: one gauge write less per prediction.
        if queued >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        return True

    def wake(self) -> None:
        """Have the writer write now rather than at its next period (a batch's worth is waiting)."""
        if not self._wake.is_set():
            self._wake.set()

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        # No database round trip here: a slow or absent database must not hold up the service start.
        self.engine = make_engine(self.database_url)
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
            for batch, _ in self._retry:
                self._drop(batch, "the service stopped")
            self._retry = []
        if self.engine is not None:
            self.engine.dispose()

    def _run(self) -> None:
        self._ensure_tables()
        while not self._stopping.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            # First the metrics flush, whose sources queue what was recorded since (see Monitor.drain).
            self._flush_metrics()
            self.publish_queue_size()  # the backlog the writer found
            self.flush()  # publishes the queue size it leaves (what arrived meanwhile, what waits for a retry)
            self._maybe_enforce_retention()

    # ---- writing ---------------------------------------------------------------------------------
    def _take(self) -> list[tuple[PredictionEvent, float | None]]:
        with self._queue_lock:
            taken = list(self._pending)
            self._pending.clear()
            self._pending_records = 0
        return taken

    def _flush_metrics(self) -> None:
        # The request path's deferred updates (and recorded predictions) reach the metrics here, at
        # least every flush_seconds: no thread of their own to wake.
        try:
            self.metrics.flush_pending()
        except Exception as exc:
            self.metrics.monitoring_errors.labels(where="metrics").inc()
            self._log_failure("applying deferred metric updates failed: %s", exc)

    def publish_queue_size(self) -> None:
        self.metrics.log_queue.set(self._pending_records + self.retry_records)

    def flush(self) -> int:
        """Write everything queued so far; returns the number of rows written. Safe from any thread.

        Rows whose write failed for a reason that may pass (the database unreachable, locked, a
        table dropped under it) are kept and written first next time, up to
        ``MAX_WRITE_ATTEMPTS`` tries and ``queue_size`` rows; beyond that they are dropped and
        counted. Any other failure drops that batch at once (retrying could never succeed).
        """
        with self._write_lock:
            taken = self._take()
            rows: list[tuple[Any, ...]] = []
            for item_event, latency in taken:
                try:
                    rows.extend(event_rows(item_event, latency))
                except Exception as exc:  # a malformed event must not block the others
                    self.metrics.log_dropped.labels(reason="invalid").inc(len(item_event.prediction_ids))
                    self._log_failure("cannot log a prediction event: %s", exc)
            batches = self._retry + [
                (rows[start : start + self.batch_size], 0) for start in range(0, len(rows), self.batch_size)
            ]
            self._retry = []
            written = 0
            for position, (batch, attempts) in enumerate(batches):
                error = self._write_batch(batch)
                if error is None:
                    written += len(batch)
                    continue
                if not _may_pass(error) or attempts + 1 >= MAX_WRITE_ATTEMPTS:
                    self._drop(batch, error)
                else:
                    self._retry.append((batch, attempts + 1))
                # The database is failing: keep the rest for the next try instead of failing each now.
                self._retry.extend(batches[position + 1 :])
                break
            self._bound_retry()
            self.publish_queue_size()
            return written

    def _write_batch(self, rows: list[tuple[Any, ...]]) -> Exception | None:
        """Write one batch in one transaction; the exception when it failed (counted), else None."""
        try:
            if not self._ensure_tables():
                raise OperationalError("creating the tables", {}, Exception("prediction log tables are not available"))
            assert self.engine is not None
            with self.engine.begin() as connection:
                insert_rows(connection, self.engine, rows)
        except Exception as exc:  # down, full, read-only, dropped table: count and carry on
            self.metrics.log_errors.inc()
            self._log_failure("prediction log write of %d rows failed: %s", len(rows), exc)
            self._tables_ready = False  # a dropped table is recreated on the next write
            return exc
        self.metrics.log_written.inc(len(rows))
        return None

    @property
    def retry_records(self) -> int:
        """Rows waiting for another try after a failed write."""
        return sum(len(batch) for batch, _ in self._retry)

    def _drop(self, rows: list[tuple[Any, ...]], why: object) -> None:
        self.metrics.log_dropped.labels(reason="write_error").inc(len(rows))
        self._log_failure("dropped %d prediction log rows after a failed write: %s", len(rows), why)

    def _bound_retry(self) -> None:
        """Keep at most ``queue_size`` rows waiting for another try, dropping the oldest first."""
        while self._retry and self.retry_records > self.queue_size:
            batch, _ = self._retry.pop(0)
            self._drop(batch, "the retry backlog is full")

    def _ensure_tables(self) -> bool:
        if self._tables_ready:
            return True
        if self.engine is None:
            return False
        try:
            create_tables(self.engine)
        except Exception as exc:
            self.metrics.log_errors.inc()
            self._log_failure("cannot create the prediction log tables: %s", exc)
            return False
        self._tables_ready = True
        return True

    def _log_failure(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_error_logged >= ERROR_LOG_INTERVAL_S:
            self._last_error_logged = now
            logger.error(message, *args)

    # ---- retention ---------------------------------------------------------------------------------
    def _maybe_enforce_retention(self) -> None:
        now = self.clock()
        if now - self._last_retention >= RETENTION_CHECK_SECONDS:
            self._last_retention = now
            self.enforce_retention(now)

    def enforce_retention(self, now: float | None = None) -> int:
        """Delete predictions (and their outcomes) older than the retention period; returns rows deleted."""
        now = self.clock() if now is None else now
        cutoff = now - self.retention_days * SECONDS_PER_DAY
        if self.engine is None or not self._ensure_tables():
            return 0
        expired = select(predictions_table.c.prediction_id).where(predictions_table.c.predicted_at < cutoff)
        try:
            with self.engine.begin() as connection:
                connection.execute(delete(outcomes_table).where(outcomes_table.c.prediction_id.in_(expired)))
                result = connection.execute(delete(predictions_table).where(predictions_table.c.predicted_at < cutoff))
        except Exception as exc:
            self.metrics.log_errors.inc()
            self._log_failure("prediction log retention failed: %s", exc)
            return 0
        return int(result.rowcount or 0)

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """A transaction on the log database for readers (feedback, report); raises if it is unavailable."""
        if self.engine is None:
            raise SQLAlchemyError("the prediction log is not started")
        if not self._ensure_tables():
            raise SQLAlchemyError("the prediction log database is unavailable")
        with self.engine.begin() as connection:
            yield connection
