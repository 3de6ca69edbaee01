"""Reading the report's context: every part except ``version`` is optional and may be malformed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from training.evaluation import is_number


def test_arrays(context: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Test labels and probabilities when both are present and consistent."""
    if context.get("y_test") is None or context.get("p_test") is None:
        return None
    y = np.asarray(context["y_test"]).astype(np.int64).ravel()
    p = np.asarray(context["p_test"], dtype=np.float64).ravel()
    if y.size == 0 or y.size != p.size:
        return None
    return y, p


def has_both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < y.size


def calibration_info(context: Mapping[str, Any]) -> dict[str, Any]:
    """The calibration entry flattened: accepts {"method", ...summary} or {"method", "summary": {...}}."""
    info = dict(context.get("calibration") or {})
    nested = info.pop("summary", None)
    if isinstance(nested, Mapping):
        info = {**nested, **info}
    return info


def successful(entry: Mapping[str, Any]) -> bool:
    return not entry.get("error")


def ranking_score(entry: Mapping[str, Any]) -> float | None:
    """What the leaderboard is ordered by: cross-validated ROC-AUC."""
    for key in ("cv_roc_auc",):
        if is_number(entry.get(key)):
            return float(entry[key])
    return None


def ranked_leaderboard(context: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Successful candidates best first, then failed ones (in their original order)."""
    entries = [entry for entry in context.get("leaderboard") or [] if isinstance(entry, Mapping)]

    def key(entry: Mapping[str, Any]) -> tuple[int, float]:
        score = ranking_score(entry)
        return (0, -score) if successful(entry) and score is not None else (1, 0.0)

    return sorted(entries, key=key)


def is_winner(entry: Mapping[str, Any], context: Mapping[str, Any]) -> bool:
    """The served candidate: its family, and its stage when the context names one (two soft votes may compete)."""
    stage = context.get("winner_stage")
    return entry.get("family") == context.get("winner") and (stage is None or entry.get("stage") == stage)


def winner_entry(context: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((entry for entry in ranked_leaderboard(context) if is_winner(entry, context)), None)
