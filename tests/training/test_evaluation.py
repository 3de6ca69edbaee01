"""Held-out metrics agree with scikit-learn, calibration error behaves, and everything is JSON-ready."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from training.evaluation import evaluate, expected_calibration_error, precision_at_recall, reliability_bins


def calibrated_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from their own probabilities: calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.0, 1.0, n)
    return (rng.random(n) < p).astype(int), p


def test_ece_of_calibrated_probabilities_is_near_zero() -> None:
    y, p = calibrated_sample(100_000, seed=1)
    assert expected_calibration_error(y, p) < 0.01


def test_ece_of_miscalibrated_probabilities_is_clearly_positive() -> None:
    y, p = calibrated_sample(100_000, seed=2)
    # Squaring understates every risk: true rate p, reported p**2. The bin-weighted gap is about 1/6.
    assert expected_calibration_error(y, p**2) > 0.12


def test_ece_matches_a_hand_computed_example() -> None:
    # Bin [0.1, 0.2): predicted 0.1, observed 1/2; bin [0.9, 1.0]: predicted 0.95, observed 1.
    y = np.array([0, 1, 1, 1])
    p = np.array([0.1, 0.1, 0.9, 1.0])
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.4 + 0.5 * 0.05)


def test_reliability_bins_count_every_customer_once() -> None:
    y, p = calibrated_sample(1_000, seed=3)
    bins = reliability_bins(y, p, n_bins=10)
    assert sum(bins["count"]) == 1_000
    assert all(
        low <= mean <= high
        for low, mean, high in zip(bins["bin_low"], bins["mean_predicted"], bins["bin_high"], strict=True)
    )


def test_evaluate_matches_sklearn() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 500), 0, 1)
    threshold = 0.45
    result = evaluate(y, p, threshold)
    predicted = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, predicted).ravel()
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert result["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert result["f1"] == pytest.approx(skm.f1_score(y, predicted))
    assert result["precision"] == pytest.approx(skm.precision_score(y, predicted))
    assert result["recall"] == pytest.approx(skm.recall_score(y, predicted))
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert result["log_loss"] == pytest.approx(skm.log_loss(y, p))
    assert result["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert result["confusion_matrix"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert result["positive_rate"] == pytest.approx(predicted.mean())
    assert result["n"] == 500
    assert result["threshold"] == threshold


def test_evaluate_has_every_documented_key_and_is_strict_json() -> None:
    y, p = calibrated_sample(300, seed=5)
    result = evaluate(y, p, 0.5)
    expected = {
        "roc_auc",
        "pr_auc",
        "f1",
        "precision",
        "recall",
        "accuracy",
        "log_loss",
        "brier",
        "ece",
        "confusion_matrix",
        "precision_at_80_recall",
        "positive_rate",
        "n",
        "threshold",
    }
    assert expected <= set(result)
    assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_evaluate_on_a_single_class_leaves_ranking_metrics_undefined() -> None:
    result = evaluate(np.zeros(20, dtype=int), np.linspace(0, 1, 20), 0.5)
    assert result["roc_auc"] is None and result["pr_auc"] is None
    assert result["recall"] == 0.0
    assert result["confusion_matrix"] == {"tn": 10, "fp": 10, "fn": 0, "tp": 0}
    json.dumps(result, allow_nan=False)


def test_precision_at_recall_hand_example() -> None:
    # Cuts from the top: precision/recall 1/(1/3), 1/(2/3), (2/3)/(2/3), (3/4)/1, (3/5)/1.
    y = np.array([1, 1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    assert precision_at_recall(y, p, 0.8) == pytest.approx(0.75)
    assert precision_at_recall(y, p, 0.6) == pytest.approx(1.0)
    assert precision_at_recall(y, p, 1.0) == pytest.approx(0.75)


def test_precision_at_recall_without_churners_is_zero() -> None:
    assert precision_at_recall(np.zeros(5, dtype=int), np.linspace(0, 1, 5)) == 0.0


def test_invalid_inputs_are_rejected_with_a_reason() -> None:
    with pytest.raises(ValueError, match="0/1"):
        evaluate(np.array([0, 2]), np.array([0.1, 0.2]), 0.5)
    with pytest.raises(ValueError, match="within"):
        evaluate(np.array([0, 1]), np.array([0.1, 1.2]), 0.5)
    with pytest.raises(ValueError, match="2 probabilities for 3"):
        evaluate(np.array([0, 1, 1]), np.array([0.1, 0.2]), 0.5)
