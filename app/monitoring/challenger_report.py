"""Champion against challenger on the same customers, from the log: what GET /monitoring/compare answers.

Every prediction a challenger scored in shadow is joined to the champion's answer for the same
prediction id and, once ``/feedback`` brought it, to the outcome; :func:`app.monitoring.compare.compare_models`
turns them into agreement, score shift and, on the labelled ones, which model is better with a
paired bootstrap. Each pair of versions is compared on its own. A canary's customers are not the
champion's, so canary traffic is described per model version (realized figures, not paired).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Integer, cast, func, select
from sqlalchemy.engine import Connection

from app.monitoring.compare import ModelScores, ProfitTerms, compare_models
from app.monitoring.log_store import SECONDS_PER_DAY, outcomes_table, predictions_table
from app.monitoring.performance import LabelledData, realized_performance
from app.monitoring.shadow_log import paired_predictions
from bundle.manifest import BundleError
from bundle.registry import stored_at
from bundle.store import read_manifest

# The newest pairs compared per call: the bootstrap's cost grows with them (seconds at 100,000).
MAX_PAIRS = 50_000
REUSE_SECONDS = 30.0  # an answer is reused this long: a dashboard refreshing it costs one comparison

Thresholds = Callable[[str], float | None]


def compare_window(
    connection: Connection,
    start: float,
    end: float,
    thresholds: Thresholds,
    profit: ProfitTerms | None,
    answered: bool = True,
) -> dict[str, Any]:
    """Every champion/challenger pair of versions seen in [start, end), and (``answered``) each version's traffic.

    The daily report leaves ``answered`` out: it has each version's volumes from the hourly aggregates.
    """
    groups: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
    for row in paired_predictions(connection, start, end, limit=MAX_PAIRS):
        groups[row[0], row[1]].append(row)
    compared = {
        "window_start": start,
        "window_end": end,
        "shadow": [
            _compare_pair(champion, challenger, rows, thresholds, profit)
            for (challenger, champion), rows in groups.items()
        ],
    }
    if answered:
        compared["answered"] = answered_by_version(connection, start, end)
    return compared


def _compare_pair(
    champion: str, challenger: str, rows: list[tuple[Any, ...]], thresholds: Thresholds, profit: ProfitTerms | None
) -> dict[str, Any]:
    described: dict[str, Any] = {"champion": champion, "challenger": challenger}
    champion_threshold, challenger_threshold = thresholds(champion), thresholds(challenger)
    if champion_threshold is None or challenger_threshold is None:
        missing = champion if champion_threshold is None else challenger
        return {**described, "error": f"bundle {missing} is no longer in the model directory: its threshold is unknown"}
    columns = list(zip(*rows, strict=True))
    comparison = compare_models(
        ModelScores(np.asarray(columns[2], dtype=float), champion_threshold),
        ModelScores(np.asarray(columns[4], dtype=float), challenger_threshold),
        [np.nan if churned is None else float(churned) for churned in columns[8]],
        profit=profit,
    )
    latency = {
        "challenger_mean_seconds": float(np.mean(columns[6])),
        "challenger_p95_seconds": float(np.quantile(columns[6], 0.95)),
        "champion_mean_seconds": float(np.mean(columns[7])),
        "champion_p95_seconds": float(np.quantile(columns[7], 0.95)),
    }
    return {**described, **comparison.to_dict(), "latency": latency}


def answered_by_version(connection: Connection, start: float, end: float) -> list[dict[str, Any]]:
    """Each model version's answers in the window (a canary's challenger too) and its realized figures."""
    p, o = predictions_table.c, outcomes_table.c
    volumes = connection.execute(
        select(p.model_version, func.count(), func.avg(p.score), func.sum(cast(p.predicted_churn, Integer)))
        .where(p.predicted_at >= start, p.predicted_at < end)
        .group_by(p.model_version)
    ).all()
    labelled: dict[str, list[tuple[float, bool, bool]]] = defaultdict(list)
    rows = connection.execute(
        select(p.model_version, p.score, p.predicted_churn, o.churned)
        .join(outcomes_table, o.prediction_id == p.prediction_id)
        .where(p.predicted_at >= start, p.predicted_at < end)
        .order_by(p.predicted_at.desc())
        .limit(MAX_PAIRS)
    )
    for version, score, decision, churned in rows:
        labelled[version].append((score, bool(decision), bool(churned)))
    answered = []
    for version, count, mean_score, flagged in volumes:
        realized = realized_performance(_labelled(labelled[version]), start, end)
        answered.append(
            {
                "model_version": version,
                "predictions": int(count),
                "mean_score": float(mean_score) if mean_score is not None else None,
                "flag_rate": float(flagged or 0) / count if count else None,
                "realized": realized.model_dump(exclude={"window_start", "window_end"}),
            }
        )
    return answered


def _labelled(rows: list[tuple[float, bool, bool]]) -> LabelledData:
    return LabelledData(
        scores=np.array([row[0] for row in rows], dtype=np.float64),
        decisions=np.array([row[1] for row in rows], dtype=bool),
        actual=np.array([row[2] for row in rows], dtype=bool),
    )


class Comparisons:
    """:func:`compare_window` over the last days, each answer reused for a short while (it costs seconds)."""

    def __init__(self, models_dir: Path, clock: Callable[[], float], reuse_seconds: float = REUSE_SECONDS) -> None:
        self.models_dir = models_dir
        self.clock = clock
        self.reuse_seconds = reuse_seconds
        self._answers: dict[tuple[int, ProfitTerms | None], tuple[float, dict[str, Any]]] = {}
        self._thresholds: dict[str, float | None] = {}
        self._lock = threading.Lock()

    def compare(self, connect: Callable[[], Any], days: int, profit: ProfitTerms | None) -> dict[str, Any]:
        now = self.clock()
        with self._lock:  # one comparison at a time: concurrent callers wait for it and share it
            reused = self._answers.get((days, profit))
            if reused is not None and now - reused[0] < self.reuse_seconds:
                return reused[1]
            with connect() as connection:
                answer = compare_window(connection, now - days * SECONDS_PER_DAY, now, self.threshold, profit)
            self._answers = {key: value for key, value in self._answers.items() if now - value[0] < self.reuse_seconds}
            self._answers[days, profit] = (now, answer)
            return answer

    def threshold(self, version: str) -> float | None:
        """The decision threshold of bundle ``version`` (archived ones too), None when it is gone."""
        if version not in self._thresholds:
            place = stored_at(self.models_dir, version)
            try:
                self._thresholds[version] = read_manifest(place / version).threshold if place is not None else None
            except BundleError:
                self._thresholds[version] = None
        return self._thresholds[version]
