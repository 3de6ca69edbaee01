"""What a challenger in shadow answered: its metrics, and its rows beside the champion's in the log.

Rows go to the ``shadow_log`` table under the champion's prediction ids, so the comparison joins
the two models' answers for the very same customers (and their outcomes, once ``/feedback`` brings
them). Rows wait in a bounded list until the shadow thread writes them; a database that refuses
them costs only those rows (counted), never a request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from app.monitoring.log_store import outcomes_table, predictions_table, shadow_table
from app.monitoring.metrics import Metrics
from app.monitoring.prediction_log import PredictionLog
from app.monitoring.throttled import ThrottledErrors

logger = logging.getLogger(__name__)

MAX_PENDING_ROWS = 50_000  # rows waiting for their insert; beyond it they are dropped and counted


@dataclass(frozen=True)
class ShadowAnswers:
    """A challenger's answers for one call, each under the champion's prediction id."""

    model_version: str
    predicted_at: float
    prediction_ids: Sequence[str]
    scores: Sequence[float]
    decisions: Sequence[bool]
    risk_bands: Sequence[str]
    champion_decisions: Sequence[bool]
    seconds: float  # the challenger's scoring time for the whole call


class ShadowLog:
    """Counts the challenger's answers and writes them to the log database."""

    def __init__(self, metrics: Metrics, log: PredictionLog) -> None:
        self.metrics = metrics
        self.log = log
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._errors = ThrottledErrors(logger)

    def scored(self, answers: ShadowAnswers) -> None:
        version = answers.model_version
        count = len(answers.prediction_ids)
        self.metrics.role_predictions.labels(version, "challenger").inc(count)
        self.metrics.challenger_duration.labels(version).observe(answers.seconds)
        pairs = zip(answers.decisions, answers.champion_decisions, strict=True)
        disagreements = sum(mine != theirs for mine, theirs in pairs)
        if disagreements:
            self.metrics.challenger_disagreements.labels(version).inc(disagreements)
        per_record = answers.seconds / count if count else 0.0
        rows = [
            {
                "prediction_id": prediction_id,
                "model_version": version,
                "predicted_at": answers.predicted_at,
                "score": score,
                "predicted_churn": decision,
                "risk_band": band,
                "latency_seconds": per_record,
            }
            for prediction_id, score, decision, band in zip(
                answers.prediction_ids, answers.scores, answers.decisions, answers.risk_bands, strict=True
            )
        ]
        with self._lock:
            room = MAX_PENDING_ROWS - len(self._pending)
            self._pending.extend(rows[:room])
        if len(rows) > room:
            self.failed(version, "skipped", len(rows) - max(room, 0))

    def failed(self, version: str, reason: str, records: int) -> None:
        self.metrics.challenger_errors.labels(version, reason).inc(records)

    def write(self) -> int:
        """Insert the pending rows; rows written. Never raises: refused rows are counted and dropped."""
        with self._lock:
            rows, self._pending = self._pending, []
        if not rows:
            return 0
        try:
            with self.log.connection() as connection:
                connection.execute(insert(shadow_table), rows)
        except (SQLAlchemyError, OSError) as exc:
            self.metrics.log_dropped.labels(reason="write_error").inc(len(rows))
            self._errors.error("cannot write %d shadow predictions to the log: %s", len(rows), exc)
            return 0
        return len(rows)


def paired_predictions(connection: Connection, start: float, end: float, limit: int) -> list[tuple[Any, ...]]:
    """Champion and challenger answers for the newest ``limit`` predictions made in [start, end), with outcomes.

    Rows of (challenger version, champion version, champion score, champion decision, challenger
    score, challenger decision, challenger latency, champion latency, churned or None).
    """
    champion, shadow, outcome = predictions_table.c, shadow_table.c, outcomes_table.c
    query = (
        select(
            shadow.model_version,
            champion.model_version,
            champion.score,
            champion.predicted_churn,
            shadow.score,
            shadow.predicted_churn,
            shadow.latency_seconds,
            champion.latency_seconds,
            outcome.churned,
        )
        .select_from(shadow_table)
        .join(predictions_table, champion.prediction_id == shadow.prediction_id)
        .outerjoin(outcomes_table, outcome.prediction_id == shadow.prediction_id)
        .where(shadow.predicted_at >= start, shadow.predicted_at < end)
        .order_by(shadow.predicted_at.desc())
        .limit(limit)
    )
    return [tuple(row) for row in connection.execute(query)]
