"""The daily monitoring report: one UTC day of the prediction log, plus the current drift figures.

Latency percentiles come from the latency logged with each prediction (request start to scoring
done), over all predictions and apart for single-record calls and for batch records, whose records
share their call's latency. Drift is the latest
sliding-window figure, not the day's: the window is the monitoring view of "now".
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Integer, cast, func, select
from sqlalchemy.engine import Connection

from app.monitoring.drift_stats import DriftSnapshot
from app.monitoring.log_store import predictions_table
from app.monitoring.performance import RealizedPerformance, labelled_predictions, realized_performance

PERCENTILES = (50, 95, 99)


def day_bounds(day: date) -> tuple[float, float]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


def _volume_by_band(connection: Connection, start: float, end: float) -> dict[str, int]:
    p = predictions_table.c
    rows = connection.execute(
        select(p.risk_band, func.count())
        .where(p.predicted_at >= start, p.predicted_at < end)
        .group_by(p.risk_band)
        .order_by(p.risk_band)
    )
    return {band: int(count) for band, count in rows}


def _model_versions(connection: Connection, start: float, end: float) -> list[dict[str, Any]]:
    p = predictions_table.c
    rows = connection.execute(
        select(
            p.model_version,
            func.count(),
            func.sum(cast(p.predicted_churn, Integer)),
            func.min(p.predicted_at),
            func.max(p.predicted_at),
        )
        .where(p.predicted_at >= start, p.predicted_at < end)
        .group_by(p.model_version)
        .order_by(func.min(p.predicted_at))
    )
    return [
        {
            "version": version,
            "predictions": int(count),
            "predicted_churn": int(positives or 0),
            "first_seen": _iso(first),
            "last_seen": _iso(last),
        }
        for version, count, positives, first, last in rows
    ]


def _percentiles(latencies: np.ndarray) -> dict[str, float | None]:
    if latencies.size == 0:
        return {f"p{q}": None for q in PERCENTILES} | {"mean": None, "predictions": 0}
    figures = {f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(latencies, PERCENTILES), strict=True)}
    return figures | {"mean": float(latencies.mean()), "predictions": int(latencies.size)}


def _latency(connection: Connection, start: float, end: float) -> dict[str, dict[str, float | None]]:
    """Percentiles over all predictions, and apart for single-record calls and batch records.

    Kept apart because a batch's records share their call's (much longer) latency and would
    otherwise dominate the percentiles of a day with a few large batches.
    """
    p = predictions_table.c
    rows = connection.execute(
        select(p.latency_seconds, p.batch_size).where(p.predicted_at >= start, p.predicted_at < end)
    ).all()
    latencies = np.array([row[0] for row in rows], dtype=np.float64)
    single = np.array([row[1] == 1 for row in rows], dtype=bool)
    return {
        "all": _percentiles(latencies),
        "single": _percentiles(latencies[single]),
        "batch": _percentiles(latencies[~single]),
    }


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def daily_report(
    connection: Connection,
    day: date,
    drift: DriftSnapshot | None,
    window_performance: RealizedPerformance | None,
    now: float,
) -> dict[str, Any]:
    start, end = day_bounds(day)
    volume = _volume_by_band(connection, start, end)
    versions = _model_versions(connection, start, end)
    total = sum(volume.values())
    positives = sum(version["predicted_churn"] for version in versions)
    day_performance = realized_performance(labelled_predictions(connection, start, end), start, end)
    return {
        "date": day.isoformat(),
        "generated_at": _iso(now),
        "predictions": total,
        "volume_by_risk_band": volume,
        "predicted_churn_rate": positives / total if total else None,
        "latency_seconds": _latency(connection, start, end),
        "model_versions": versions,
        "drift": drift.to_dict() if drift is not None else None,
        "realized_performance": {
            "predictions_of_the_day": day_performance.model_dump(),
            "performance_window": window_performance.model_dump() if window_performance is not None else None,
        },
    }
