"""Realized model performance: predictions with known outcomes, scored with scikit-learn.

Computed from the log database over predictions of the last ``performance_window_days``:
precision, recall and F1 judge the decision the service actually returned, ROC-AUC the score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.engine import Connection

from app.monitoring.log_store import SECONDS_PER_DAY, outcomes_table, predictions_table
from app.monitoring.metrics import Metrics
from app.monitoring.prediction_log import PredictionLog


class RealizedPerformance(BaseModel):
    """Realized metrics of logged predictions that have an outcome (None where undefined)."""

    labelled_predictions: int
    actual_churn_rate: float | None
    roc_auc: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    window_start: float
    window_end: float


# ---- realized performance ---------------------------------------------------------------------------
@dataclass
class LabelledData:
    scores: np.ndarray
    decisions: np.ndarray
    actual: np.ndarray


def labelled_predictions(connection: Connection, start: float, end: float) -> LabelledData:
    """Score, decision and outcome of every labelled prediction made in [start, end)."""
    p, o = predictions_table.c, outcomes_table.c
    if connection.execute(select(o.prediction_id).limit(1)).first() is None:
        rows = []  # no outcome yet: nothing to join, whatever the traffic
    else:
        rows = connection.execute(
            select(p.score, p.predicted_churn, o.churned)
            .join(outcomes_table, o.prediction_id == p.prediction_id)
            .where(p.predicted_at >= start, p.predicted_at < end)
        ).all()
    return LabelledData(
        scores=np.array([row[0] for row in rows], dtype=np.float64),
        decisions=np.array([bool(row[1]) for row in rows], dtype=bool),
        actual=np.array([bool(row[2]) for row in rows], dtype=bool),
    )


def _undefined_as_none(value: float) -> float | None:
    # Undefined (None, a NaN gauge), not 0: with nothing flagged there is no precision to judge,
    # and a 0 would read as a model that is always wrong.
    return None if math.isnan(value) else float(value)


def realized_performance(data: LabelledData, start: float, end: float) -> RealizedPerformance:
    """ROC-AUC judges the score; precision, recall and F1 the decision the service returned."""
    n = int(data.actual.size)
    if n == 0:
        return RealizedPerformance(
            labelled_predictions=0, actual_churn_rate=None, roc_auc=None, precision=None, recall=None, f1=None,
            window_start=start, window_end=end,
        )  # fmt: skip
    # Imported here: scikit-learn takes seconds to import, and only this background work needs it.
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    both_classes = 0 < int(data.actual.sum()) < n
    auc = roc_auc_score(data.actual, data.scores) if both_classes else math.nan
    actual, decisions = data.actual, data.decisions
    return RealizedPerformance(
        labelled_predictions=n,
        actual_churn_rate=float(actual.mean()),
        roc_auc=_undefined_as_none(auc),
        precision=_undefined_as_none(precision_score(actual, decisions, zero_division=np.nan)),
        recall=_undefined_as_none(recall_score(actual, decisions, zero_division=np.nan)),
        f1=_undefined_as_none(f1_score(actual, decisions, zero_division=np.nan)),
        window_start=start,
        window_end=end,
    )


class PerformanceTracker:
    """The realized-performance gauges, refreshed from the log database."""

    def __init__(self, metrics: Metrics, log: PredictionLog, window_days: int, clock: Callable[[], float]) -> None:
        self.metrics = metrics
        self.log = log
        self.window_days = window_days
        self.clock = clock
        self.latest: RealizedPerformance | None = None

    def refresh(self) -> RealizedPerformance:
        """Recompute over the window and export; raises SQLAlchemyError when the database is unavailable."""
        now = self.clock()
        start = now - self.window_days * SECONDS_PER_DAY
        with self.log.connection() as connection:
            data = labelled_predictions(connection, start, now + 1.0)
        performance = realized_performance(data, start, now)
        m = self.metrics
        m.realized_auc.set(_gauge_value(performance.roc_auc))
        m.realized_precision.set(_gauge_value(performance.precision))
        m.realized_recall.set(_gauge_value(performance.recall))
        m.realized_f1.set(_gauge_value(performance.f1))
        m.realized_count.set(performance.labelled_predictions)
        self.latest = performance
        return performance


def _gauge_value(value: float | None) -> float:
    return math.nan if value is None else value
