"""The daily monitoring report: one UTC day of the prediction log, plus the current drift figures.

Volume, decisions, model versions and latency come from the log's hourly aggregates
(``app.monitoring.aggregates``), so a report costs the same whatever the day's traffic. Latency
percentiles are of the latency logged with each prediction (request start to scoring done), over
all predictions and apart for single-record calls and for batch records, whose records share their
call's latency; they are read from a log-spaced histogram, within a few per cent of the exact
figure. Drift is the latest sliding-window figure, not the day's: the window is the monitoring view
of "now"; so is the estimated performance of that window, shown beside the realized performance
with the bundle's reference figures from training.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from app.monitoring import aggregates
from app.monitoring.drift_stats import DriftSnapshot
from app.monitoring.performance import RealizedPerformance, labelled_predictions, realized_performance

PERCENTILES = (50, 95, 99)


def day_bounds(day: date) -> tuple[float, float]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


def _model_versions(connection: Connection, start: float, end: float) -> list[dict[str, Any]]:
    return [
        {
            "version": version,
            "predictions": count,
            "predicted_churn": positives,
            "first_seen": _iso(first),
            "last_seen": _iso(last),
        }
        for version, count, positives, first, last in aggregates.model_versions(connection, start, end)
    ]


def _percentiles(histogram: list[tuple[int, int, float]]) -> dict[str, float | None]:
    total = sum(count for _, count, _ in histogram)
    if total == 0:
        return {f"p{q}": None for q in PERCENTILES} | {"mean": None, "predictions": 0}
    figures = {f"p{q}": aggregates.percentile(histogram, q) for q in PERCENTILES}
    return figures | {"mean": sum(seconds for _, _, seconds in histogram) / total, "predictions": total}


def _latency(connection: Connection, start: float, end: float) -> dict[str, dict[str, float | None]]:
    """Percentiles over all predictions, and apart for single-record calls and batch records.

    Kept apart because a batch's records share their call's (much longer) latency and would
    otherwise dominate the percentiles of a day with a few large batches.
    """
    histograms = aggregates.latency_histograms(connection, start, end)
    merged: dict[int, list[float]] = {}
    for bucket, count, seconds in histograms[False] + histograms[True]:
        figures = merged.setdefault(bucket, [0, 0.0])
        figures[0] += count
        figures[1] += seconds
    every = [(bucket, int(count), seconds) for bucket, (count, seconds) in sorted(merged.items())]
    return {
        "all": _percentiles(every),
        "single": _percentiles(histograms[False]),
        "batch": _percentiles(histograms[True]),
    }


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _estimated(drift: DriftSnapshot | None, reference: dict[str, Any] | None) -> dict[str, Any]:
    window = None
    if drift is not None and drift.estimate is not None:
        window = {
            "model_version": drift.model_version,
            "window_seconds": drift.window_seconds,
            "computed_at": _iso(drift.computed_at),
            **drift.estimate.to_dict(),
        }
    return {"drift_window": window, "reference": reference or None}


def daily_report(
    connection: Connection,
    day: date,
    drift: DriftSnapshot | None,
    window_performance: RealizedPerformance | None,
    now: float,
    estimate_reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    start, end = day_bounds(day)
    volume = aggregates.volume_by_band(connection, start, end)
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
        "estimated_performance": _estimated(drift, estimate_reference),
    }
