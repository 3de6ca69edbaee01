"""Held-out metrics of a churn model: ranking, classification at the chosen threshold and calibration.

Every function returns plain Python floats (or ``None`` where a metric is undefined, for example
ROC-AUC on a set with a single class) so the results can go straight into the JSON manifest.
A customer is flagged when ``probability >= threshold``, the same rule the service applies.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn import metrics as skm

# Probabilities are clipped this far from 0 and 1 before the log loss, so one confident mistake
# costs a large but finite amount instead of making the whole metric infinite.
LOG_LOSS_EPS = 1e-15


def as_labels(y_true: Any) -> np.ndarray:
    """Targets as a 0/1 integer array (booleans and 0/1 floats are accepted)."""
    y = np.asarray(y_true).astype(np.int64).ravel()
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 (1 = churned)")
    return y


def as_probabilities(proba: Any, n: int) -> np.ndarray:
    """Scores as a float array of length ``n`` with every value in [0, 1]."""
    p = np.asarray(proba, dtype=np.float64).ravel()
    if p.size != n:
        raise ValueError(f"got {p.size} probabilities for {n} labels")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must be finite and within [0, 1]")
    return p


def both_classes_present(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < int(y.sum()) < y.size


def binary_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood of 0/1 labels (sklearn's log_loss with a fixed clip)."""
    clipped = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return float(skm.log_loss(y, clipped, labels=[0, 1]))


def expected_calibration_error(y_true: Any, proba: Any, n_bins: int = 10) -> float:
    """Weighted mean gap between predicted and observed churn rate over equal-width probability bins.

    Each bin contributes |mean probability - churn rate| weighted by its share of customers,
    so a model whose 30% predictions churn 30% of the time scores 0. A probability of exactly
    1.0 falls into the last bin.
    """
    y = as_labels(y_true)
    p = as_probabilities(proba, y.size)
    if y.size == 0:
        return 0.0
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    occupied = counts > 0
    gaps = np.abs(sum_p[occupied] - sum_y[occupied]) / counts[occupied]
    return float(np.sum(gaps * counts[occupied]) / y.size)


def reliability_bins(y_true: Any, proba: Any, n_bins: int = 10) -> dict[str, list[float]]:
    """Per occupied equal-width bin: mean probability, observed churn rate and count (for the reliability plot)."""
    y = as_labels(y_true)
    p = as_probabilities(proba, y.size)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    occupied = counts > 0
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "bin_low": edges[:-1][occupied].tolist(),
        "bin_high": edges[1:][occupied].tolist(),
        "mean_predicted": (sum_p[occupied] / counts[occupied]).tolist(),
        "observed_rate": (sum_y[occupied] / counts[occupied]).tolist(),
        "count": counts[occupied].astype(int).tolist(),
    }


def precision_at_recall(y_true: Any, proba: Any, recall: float = 0.8) -> float:
    """Best precision among the thresholds that still catch at least ``recall`` of the churners.

    Answers "if we must reach 80% of leavers, what share of the customers we contact will be
    leavers?". 0.0 when there are no churners to recall.
    """
    y = as_labels(y_true)
    p = as_probabilities(proba, y.size)
    if y.sum() == 0:
        return 0.0
    precision, achieved_recall, _ = skm.precision_recall_curve(y, p)
    reachable = achieved_recall >= recall - 1e-12
    return float(precision[reachable].max())


def confusion_counts(y: np.ndarray, flagged: np.ndarray) -> dict[str, int]:
    return {
        "tn": int(np.sum(~flagged & (y == 0))),
        "fp": int(np.sum(flagged & (y == 0))),
        "fn": int(np.sum(~flagged & (y == 1))),
        "tp": int(np.sum(flagged & (y == 1))),
    }


def _ratio(numerator: float, denominator: float) -> float:
    """A rate whose empty denominator means 'nothing to get wrong or right': 0.0 by convention."""
    return float(numerator / denominator) if denominator else 0.0


def classification_at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """Precision, recall, F1 and accuracy of flagging ``p >= threshold``."""
    flagged = p >= threshold
    cm = confusion_counts(y, flagged)
    precision = _ratio(cm["tp"], cm["tp"] + cm["fp"])
    recall = _ratio(cm["tp"], cm["tp"] + cm["fn"])
    return {
        "f1": _ratio(2 * cm["tp"], 2 * cm["tp"] + cm["fp"] + cm["fn"]),
        "precision": precision,
        "recall": recall,
        "accuracy": _ratio(cm["tp"] + cm["tn"], y.size),
        "confusion_matrix": cm,
        "positive_rate": _ratio(int(flagged.sum()), y.size),
    }


def evaluate(y_true: Any, proba: Any, threshold: float) -> dict[str, Any]:
    """All held-out metrics of calibrated probabilities ``proba`` at decision threshold ``threshold``.

    ``positive_rate`` is the share of customers flagged at the threshold; ``base_rate`` is the
    share that actually churned. Ranking metrics are ``None`` when only one class is present.
    """
    y = as_labels(y_true)
    p = as_probabilities(proba, y.size)
    if y.size == 0:
        raise ValueError("cannot evaluate on an empty set")
    ranked = both_classes_present(y)
    result: dict[str, Any] = {
        "roc_auc": float(skm.roc_auc_score(y, p)) if ranked else None,
        "pr_auc": float(skm.average_precision_score(y, p)) if ranked else None,
    }
    result.update(classification_at_threshold(y, p, threshold))
    result.update(
        {
            "log_loss": binary_log_loss(y, p),
            "brier": float(np.mean((p - y) ** 2)),
            "ece": expected_calibration_error(y, p),
            "precision_at_80_recall": precision_at_recall(y, p, 0.8) if y.sum() else None,
            "base_rate": float(y.mean()),
            "n": int(y.size),
            "n_positive": int(y.sum()),
            "threshold": float(threshold),
        }
    )
    return result


def is_number(value: Any) -> bool:
    """True for a real, finite number (not a bool); used to skip undefined metrics when formatting."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )
