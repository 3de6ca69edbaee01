"""Hourly aggregates of the prediction log, kept in step with every insert, and read by the daily report.

The writer adds the rows it has just inserted (only those: a replayed duplicate is not counted
twice) in the same transaction, so the aggregates always match the log. Several workers add to the
same hour's rows with an upsert that sums; keys go in sorted order so that concurrent
transactions lock them in the same order. Latency is kept as a histogram of log-spaced buckets
(``LATENCY_GROWTH`` apart) with each bucket's sum, so a percentile read back is within a few per
cent of the exact one and exact when a bucket holds one value.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
from sqlalchemy import Table, func, select
from sqlalchemy.engine import Connection

from app.monitoring.log_store import ROWS_PER_STATEMENT, hourly_table, latency_table

SECONDS_PER_HOUR = 3600
LATENCY_GROWTH = 1.04
SMALLEST_LATENCY = 1e-6  # seconds; anything faster shares the first bucket
_LOG_GROWTH = math.log(LATENCY_GROWTH)


def latency_buckets(seconds: np.ndarray) -> np.ndarray:
    """Each latency's log-spaced bucket."""
    return np.floor(np.log(np.maximum(seconds, SMALLEST_LATENCY)) / _LOG_GROWTH).astype(np.int64)


def add_rows(connection: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Add freshly inserted log rows (ROW_COLUMNS order) to the hourly aggregates."""
    if not rows:
        return
    # Column-wise with numpy: the monitor thread pays per batch, hardly per row.
    columns = list(zip(*rows, strict=True))
    at = np.asarray(columns[1], dtype=np.float64)
    hours = (at // SECONDS_PER_HOUR).astype(np.int64)
    # Keys come out sorted: concurrent writers lock the same rows in the same order.
    _upsert(connection, hourly_table, _volume(columns, at, hours))
    _upsert(connection, latency_table, _latency(columns, hours))


def _volume(columns: list[tuple[Any, ...]], at: np.ndarray, hours: np.ndarray) -> list[tuple[Any, ...]]:
    versions, version_codes = _codes(columns[2])
    bands, band_codes = _codes(columns[7])
    first_hour = int(hours.min())
    # One integer per (hour, version, band): grouping sorts plain integers.
    keys = ((hours - first_hour) * len(versions) + version_codes) * len(bands) + band_codes
    group_keys, group = np.unique(keys, return_inverse=True)
    first, last = np.full(len(group_keys), np.inf), np.full(len(group_keys), -np.inf)
    np.minimum.at(first, group, at)
    np.maximum.at(last, group, at)
    counts = np.bincount(group)
    positives = np.bincount(group, weights=np.asarray(columns[6], dtype=bool))
    volume = []
    for i, key in enumerate(group_keys.tolist()):
        rest, band = divmod(key, len(bands))
        hour, version = divmod(rest, len(versions))
        key = (hour + first_hour, versions[version], bands[band])
        volume.append((*key, int(counts[i]), int(positives[i]), float(first[i]), float(last[i])))
    return volume


def _latency(columns: list[tuple[Any, ...]], hours: np.ndarray) -> list[tuple[Any, ...]]:
    seconds = np.asarray(columns[8], dtype=np.float64)
    buckets = latency_buckets(seconds)
    batch = (np.asarray(columns[9], dtype=np.int64) > 1).astype(np.int64)
    first_hour, first_bucket = int(hours.min()), int(buckets.min())
    span = int(buckets.max()) - first_bucket + 1
    keys = ((hours - first_hour) * 2 + batch) * span + (buckets - first_bucket)
    group_keys, group = np.unique(keys, return_inverse=True)
    counts, sums = np.bincount(group), np.bincount(group, weights=seconds)
    latency = []
    for i, key in enumerate(group_keys.tolist()):
        rest, bucket = divmod(key, span)
        hour, in_batch = divmod(rest, 2)
        latency.append((hour + first_hour, bool(in_batch), bucket + first_bucket, int(counts[i]), float(sums[i])))
    return latency


def _codes(values: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct values (sorted) and each value's position among them."""
    distinct = sorted(set(values))
    position = {value: i for i, value in enumerate(distinct)}
    return distinct, np.fromiter(map(position.__getitem__, values), dtype=np.int64, count=len(values))


def _upsert(connection: Connection, table: Table, rows: list[tuple[Any, ...]]) -> None:
    """Add ``rows`` (in the table's column order) to the table's rows of the same keys."""
    dialect = connection.dialect
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        statement = upsert_statement(table.name, dialect.name, dialect.paramstyle, len(chunk))
        connection.exec_driver_sql(statement, tuple(chain.from_iterable(chunk)))


@functools.lru_cache(maxsize=32)
def upsert_statement(table_name: str, dialect: str, paramstyle: str, rows: int) -> str:
    """Plain SQL that inserts ``rows`` aggregate rows, adding counts and sums to existing ones.

    Written for the driver directly, like the log's insert: SQLAlchemy would compile it anew each time.
    """
    table = {t.name: t for t in (hourly_table, latency_table)}[table_name]
    mark = "?" if paramstyle == "qmark" else "%s"
    columns = [column.name for column in table.columns]
    keys = [column.name for column in table.primary_key.columns]
    least, greatest = ("LEAST", "GREATEST") if dialect == "postgresql" else ("min", "max")
    combine = {"first_at": least, "last_at": greatest}
    updates = [
        f"{name} = {combine[name]}({table_name}.{name}, excluded.{name})"
        if name in combine
        else f"{name} = {table_name}.{name} + excluded.{name}"
        for name in columns
        if name not in keys
    ]
    values = ", ".join([f"({', '.join([mark] * len(columns))})"] * rows)
    return (
        f"INSERT INTO {table_name} ({', '.join(columns)}) VALUES {values} "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(updates)}"
    )


def delete_before(connection: Connection, cutoff: float) -> None:
    """Drop the aggregates of hours that ended before ``cutoff`` (retention)."""
    hour = int(cutoff // SECONDS_PER_HOUR)
    for table in (hourly_table, latency_table):
        connection.execute(table.delete().where(table.c.hour < hour))


# ---- reading -----------------------------------------------------------------------------------------
def _hours(table: Table, start: float, end: float) -> Any:
    return (table.c.hour >= int(start // SECONDS_PER_HOUR)) & (table.c.hour < math.ceil(end / SECONDS_PER_HOUR))


def volume_by_band(connection: Connection, start: float, end: float) -> dict[str, int]:
    h = hourly_table.c
    rows = connection.execute(
        select(h.risk_band, func.sum(h.predictions))
        .where(_hours(hourly_table, start, end))
        .group_by(h.risk_band)
        .order_by(h.risk_band)
    )
    return {band: int(count) for band, count in rows}


def model_versions(connection: Connection, start: float, end: float) -> list[tuple[str, int, int, float, float]]:
    """(version, predictions, predicted churn, first seen, last seen), first seen first."""
    h = hourly_table.c
    rows = connection.execute(
        select(h.model_version, func.sum(h.predictions), func.sum(h.predicted_churn), func.min(h.first_at))
        .add_columns(func.max(h.last_at))
        .where(_hours(hourly_table, start, end))
        .group_by(h.model_version)
        .order_by(func.min(h.first_at))
    )
    return [(v, int(n), int(c or 0), float(first), float(last)) for v, n, c, first, last in rows]


def latency_histograms(connection: Connection, start: float, end: float) -> dict[bool, list[tuple[int, int, float]]]:
    """(bucket, predictions, seconds summed) by bucket, for batch records (True) and single calls (False)."""
    t = latency_table.c
    rows = connection.execute(
        select(t.batch, t.bucket, func.sum(t.predictions), func.sum(t.seconds))
        .where(_hours(latency_table, start, end))
        .group_by(t.batch, t.bucket)
        .order_by(t.bucket)
    )
    histograms: dict[bool, list[tuple[int, int, float]]] = {False: [], True: []}
    for batch, bucket, count, seconds in rows:
        histograms[bool(batch)].append((int(bucket), int(count), float(seconds)))
    return histograms


def percentile(histogram: Sequence[tuple[int, int, float]], q: float) -> float:
    """The q-th percentile read from a bucketed histogram, each value taken as its bucket's mean and
    interpolated between neighbours as numpy's default (linear) method does."""
    total = sum(count for _, count, _ in histogram)
    if total == 0:
        raise ValueError("empty histogram")
    rank = q / 100 * (total - 1)  # 0-based position of the value asked for
    low, high = _value_at(histogram, math.floor(rank)), _value_at(histogram, math.ceil(rank))
    return low + (high - low) * (rank - math.floor(rank))


def _value_at(histogram: Sequence[tuple[int, int, float]], position: int) -> float:
    seen = 0
    for _, count, seconds in histogram:
        seen += count
        if seen > position:
            return seconds / count
    raise ValueError("position beyond the histogram")
