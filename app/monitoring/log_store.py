"""The prediction log's database side: tables, engines, the rows of an event and their insert.

Each record becomes a table row (its cleaned feature values as the ``inputs`` JSON), its text
fitted to the column widths so that no value can fail its whole insert. Beside the raw log, hourly
aggregate tables (volume, decisions, a latency histogram) are what the daily report reads;
``app.monitoring.aggregates`` keeps them in step with every insert.

SQLite is the default (WAL journal and a busy timeout so several worker processes can write the
same file); a ``postgresql://`` URL uses PostgreSQL through psycopg 3.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import itemgetter
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
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from app.monitoring.events import PredictionEvent

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000
POSTGRES_CONNECT_TIMEOUT_S = 5
SECONDS_PER_DAY = 86_400

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

# What a challenger in shadow answered for a logged prediction (same prediction id, its own version).
shadow_table = Table(
    "shadow_log",
    metadata,
    Column("prediction_id", String(64), primary_key=True),
    Column("model_version", String(128), primary_key=True),
    Column("predicted_at", Float, nullable=False),
    Column("score", Float, nullable=False),
    Column("predicted_churn", Boolean, nullable=False),
    Column("risk_band", String(64), nullable=False),
    Column("latency_seconds", Float, nullable=False),  # the challenger's scoring time for the call
    Index("ix_shadow_log_predicted_at", "predicted_at"),
)

# Drift counts of every service process per time slot, when replicas share the window through the
# log database (CHURN_DRIFT_SHARING=database; app.monitoring.drift_sharing).
drift_slots_table = Table(
    "drift_window_slots",
    metadata,
    Column("layout_key", String(64), primary_key=True),  # the model version and its reference
    Column("source", String(128), primary_key=True),  # one service process (host, pid, start)
    Column("slot", Integer, primary_key=True),
    Column("counts", LargeBinary, nullable=False),  # the slot's bin counts, little-endian int64
    Column("updated_at", Float, nullable=False),
    Index("ix_drift_window_slots_slot", "slot"),
)

# Per UTC hour (UNIX seconds // 3600): what the daily report needs, at a cost that does not grow with traffic.
hourly_table = Table(
    "prediction_log_hourly",
    metadata,
    Column("hour", Integer, primary_key=True),
    Column("model_version", String(128), primary_key=True),
    Column("risk_band", String(64), primary_key=True),
    Column("predictions", Integer, nullable=False),
    Column("predicted_churn", Integer, nullable=False),
    Column("first_at", Float, nullable=False),
    Column("last_at", Float, nullable=False),
)

latency_table = Table(
    "prediction_log_latency_hourly",
    metadata,
    Column("hour", Integer, primary_key=True),
    Column("batch", Boolean, primary_key=True),  # records of /predict/batch calls, apart from single ones
    Column("bucket", Integer, primary_key=True),  # log-spaced latency bucket (app.monitoring.aggregates)
    Column("predictions", Integer, nullable=False),
    Column("seconds", Float, nullable=False),  # latencies summed: the bucket's mean is its estimate
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
CUSTOMER_ID_WIDTH = predictions_table.c.customer_id.type.length


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


def insert_rows(connection: Any, rows: list[tuple[Any, ...]]) -> int:
    """Insert ``rows`` with as few statements as the parameter limit allows; rows actually inserted.

    Fewer than ``len(rows)`` means some prediction ids were logged already (a replayed spool).
    """
    inserted = 0
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        statement = insert_statement(connection.dialect.paramstyle, len(chunk))  # built once per size
        inserted += connection.exec_driver_sql(statement, tuple(chain.from_iterable(chunk))).rowcount
    return inserted


def logged_ids(connection: Any, ids: list[str]) -> set[str]:
    """Which of ``ids`` the log already holds."""
    found: set[str] = set()
    column = predictions_table.c.prediction_id
    for start in range(0, len(ids), 500):
        found.update(connection.execute(select(column).where(column.in_(ids[start : start + 500]))).scalars())
    return found


def is_row_error(error: Exception) -> bool:
    """Whether a failed insert is the rows' fault (a value the column refuses), not the database's."""
    return isinstance(error, DataError | IntegrityError | TypeError | ValueError)


# Text columns of a row (ROW_COLUMNS order) and their widths.
_TEXT_COLUMNS = tuple(
    (index, column.type.length)
    for index, column in enumerate(predictions_table.columns)
    if isinstance(column.type, String) and column.type.length
)


def fit_rows(rows: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], int]:
    """``rows`` with any text longer than its column cut to fit, and how many values were cut.

    One pass over each text column of the whole batch; rows are rebuilt only when a value is too long.
    """
    too_long = [
        (index, width)
        for index, width in _TEXT_COLUMNS
        if max(map(len, filter(None, map(itemgetter(index), rows))), default=0) > width
    ]
    if not too_long:
        return rows, 0
    cut = 0
    fitted = []
    for row in rows:
        values = list(row)
        for index, width in too_long:
            if values[index] is not None and len(values[index]) > width:
                values[index] = values[index][:width]
                cut += 1
        fitted.append(tuple(values))
    return fitted, cut


def _json(record: dict[str, Any]) -> str:
    # A value JSON cannot hold (an odd object) is stored as its text rather than lose the record.
    return orjson.dumps(record, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def event_rows(event: PredictionEvent, latency: float | None) -> list[tuple[Any, ...]]:
    """The table rows of a scored event, in ROW_COLUMNS order (raises on a malformed event).

    ``latency``: the request's, from its start to scoring done; None when unknown (the stages' sum).
    Text may be longer than its column: :func:`fit_rows` cuts a whole batch to fit.
    """
    if latency is None:
        latency = float(sum(event.stage_seconds.values()))
    size = event.size
    if size == 1:  # every /predict: one row, without the column-to-row machinery
        inputs = _json({name: values[0] for name, values in event.columns.items()})
        return [
            (
                event.prediction_ids[0],
                event.timestamp,
                event.model_version,
                event.customer_ids[0],
                inputs,
                float(event.scores[0]),
                bool(event.decisions[0]),
                event.risk_bands[0],
                latency,
                1,
            )
        ]
    inputs = [_json(record) for record in event.records()]
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
    spooled: int = 0  # records left in the spool for a later replay
    replayed: int = 0  # records of the spool written to the log (also counted in ``written``)
    truncated: int = 0  # values cut to their column's width
    deleted: int = 0  # records removed by retention
