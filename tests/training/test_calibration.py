"""Calibration is chosen honestly, improves distorted scores, and is applied identically by the service."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from bundle.manifest import Calibration
from bundle.scoring import apply_calibration
from training.calibration import (
    ISOTONIC_MARGIN,
    calibrate,
    calibration_summary,
    fit_calibration,
    fit_isotonic,
    fit_platt,
)
from training.evaluation import binary_log_loss


def calibrated_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores that are the true churn probabilities, and labels drawn from them."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    return p, (rng.random(n) < p).astype(int)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_already_calibrated_scores_keep_none(seed: int) -> None:
    p, y = calibrated_sample(2_000, seed)
    assert fit_calibration(p, y, seed=seed).method == "none"


def test_cubed_scores_are_calibrated_and_log_loss_improves_on_fresh_data() -> None:
    p, y = calibrated_sample(2_000, seed=10)
    calibration = fit_calibration(p**3, y, seed=10)
    assert calibration.method in ("platt", "isotonic")
    summary = calibration_summary(p**3, y, calibration, seed=10)
    assert summary["log_loss_after"] < summary["log_loss_before"]
    assert summary["ece_after"] < summary["ece_before"]
    cross = summary["cross_fitted_log_loss"]
    assert cross[calibration.method] < cross["none"]
    # The honest check: customers the calibrator never saw.
    fresh_p, fresh_y = calibrated_sample(5_000, seed=11)
    assert binary_log_loss(fresh_y, calibrate(calibration, fresh_p**3)) < binary_log_loss(fresh_y, fresh_p**3) - 0.02


def test_a_step_shaped_miscalibration_chooses_isotonic() -> None:
    # True churn rate jumps from 10% to 60% at raw score 0.5: no logistic curve fits a step.
    rng = np.random.default_rng(20)
    raw = rng.uniform(0, 1, 2_000)
    y = (rng.random(2_000) < np.where(raw < 0.5, 0.1, 0.6)).astype(int)
    calibration = fit_calibration(raw, y, seed=20)
    assert calibration.method == "isotonic"
    assert calibrate(calibration, np.array([0.2]))[0] == pytest.approx(0.1, abs=0.05)
    assert calibrate(calibration, np.array([0.8]))[0] == pytest.approx(0.6, abs=0.05)


def test_isotonic_knots_reproduce_isotonic_regression_through_the_service() -> None:
    rng = np.random.default_rng(30)
    raw = rng.uniform(0.1, 0.9, 1_000)
    y = (rng.random(1_000) < raw**2).astype(int)
    calibration = fit_isotonic(raw, y)
    knots_x = np.asarray(calibration.isotonic_x)
    assert np.all(np.diff(knots_x) > 0)
    reference = IsotonicRegression(y_min=ISOTONIC_MARGIN, y_max=1 - ISOTONIC_MARGIN, out_of_bounds="clip").fit(raw, y)
    probe = np.r_[0.0, 0.05, np.linspace(0.1, 0.9, 200), 0.95, 1.0]  # includes points outside the fitted range
    served = apply_calibration(calibration, probe)
    np.testing.assert_allclose(served, reference.predict(probe), atol=1e-12)
    np.testing.assert_allclose(served, calibrate(calibration, probe), atol=0)
    # The manifest stores the calibration as JSON; it must survive the round trip.
    restored = Calibration(**json.loads(json.dumps(calibration.to_dict())))
    np.testing.assert_allclose(apply_calibration(restored, probe), served)


def test_platt_recovers_a_known_logistic_distortion() -> None:
    rng = np.random.default_rng(40)
    z = rng.normal(0, 1.5, 20_000)
    raw = 1 / (1 + np.exp(-z))
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(2.0 * z - 0.5)))).astype(int)
    calibration = fit_platt(raw, y)
    assert calibration.platt_a == pytest.approx(2.0, abs=0.1)
    assert calibration.platt_b == pytest.approx(-0.5, abs=0.1)
    expected = 1 / (1 + np.exp(-(calibration.platt_a * z + calibration.platt_b)))
    np.testing.assert_allclose(apply_calibration(calibration, raw), expected, atol=1e-6)


def test_too_few_churners_to_cross_fit_keeps_raw_scores() -> None:
    raw = np.linspace(0.05, 0.95, 100)
    y = np.zeros(100, dtype=int)
    y[-1] = 1
    assert fit_calibration(raw, y, seed=0).method == "none"


def test_summary_reports_before_and_after_as_json() -> None:
    p, y = calibrated_sample(600, seed=50)
    summary = calibration_summary(p, y, Calibration(), seed=50)
    assert summary["method"] == "none"
    assert summary["log_loss_before"] == pytest.approx(summary["log_loss_after"])
    assert summary["ece_before"] == pytest.approx(summary["ece_after"])
    assert set(summary["cross_fitted_log_loss"]) == {"none", "platt", "isotonic"}
    json.dumps(summary, allow_nan=False)
