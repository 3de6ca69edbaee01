"""Probability calibration: make "30% churn risk" mean that about 30% of such customers leave.

Three candidates, from simplest to most flexible: ``none`` (raw model scores), ``platt``
(a logistic curve on the logit of the score) and ``isotonic`` (a monotone step curve, stored as
knots and interpolated). They are compared honestly on held-out scores (the pipeline passes the
chosen configuration's out-of-fold scores): each calibrator is cross-fitted inside them (fitted on
k-1 folds, scored on the held-out fold), so a flexible calibrator that merely memorises them does
not win. A calibrator qualifies only if it beats the raw scores by more than chance explains (a
paired comparison over the customers), and isotonic is preferred to a qualifying Platt curve only
when it beats that by the same margin; with none qualifying the raw scores are kept. The chosen
calibrator is then refitted on all the held-out scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import StratifiedKFold

from bundle.manifest import Calibration

# The service's own logit (same bounds), so Platt scaling is fitted on exactly what it is applied to.
from bundle.scoring import apply_calibration, logit
from training.evaluation import as_labels, as_probabilities, binary_log_loss, expected_calibration_error

METHODS = ("none", "platt", "isotonic")  # simplest first: an exact tie goes to the simpler method
MAX_FOLDS = 5
# A calibrator must lower the cross-fitted log loss of the raw scores by more than this many standard
# errors of the paired per-customer difference. Chance gains shrink with the validation size, so a
# fixed margin would be too strict on large sets and too lenient on small ones; a paired test is neither.
MIN_IMPROVEMENT_STANDARD_ERRORS = 2.0
# Isotonic outputs are kept this far from 0 and 1: an empty bin of churners in validation must not
# become a promise that a customer will certainly stay (or leave).
ISOTONIC_MARGIN = 1e-3
# Per-customer log loss clips probabilities like the reported log loss does.
LOSS_EPS = 1e-15


# ---- the calibrators -----------------------------------------------------------------------------
def fit_platt(raw: np.ndarray, y: np.ndarray) -> Calibration:
    """Maximum-likelihood a, b of p = sigmoid(a * logit(raw) + b)."""
    z = logit(raw)

    def loss_and_gradient(params: np.ndarray) -> tuple[float, np.ndarray]:
        s = params[0] * z + params[1]
        loss = np.mean(np.logaddexp(0.0, s) - y * s)  # stable form of the binary log loss
        residual = 1.0 / (1.0 + np.exp(-s)) - y
        return float(loss), np.array([np.mean(residual * z), np.mean(residual)])

    fitted = minimize(loss_and_gradient, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return Calibration(method="platt", platt_a=float(fitted.x[0]), platt_b=float(fitted.x[1]))


def fit_isotonic(raw: np.ndarray, y: np.ndarray) -> Calibration:
    """Monotone map from raw score to churn rate, stored as knots for ``np.interp``."""
    model = IsotonicRegression(y_min=ISOTONIC_MARGIN, y_max=1 - ISOTONIC_MARGIN, out_of_bounds="clip")
    model.fit(raw, y)
    knots_x, knots_y = strictly_increasing_knots(model.X_thresholds_, model.y_thresholds_)
    return Calibration(method="isotonic", isotonic_x=knots_x.tolist(), isotonic_y=knots_y.tolist())


def strictly_increasing_knots(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge knots that share an x (averaging their y, which keeps y monotone) so np.interp is well defined."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    unique_x, inverse = np.unique(x, return_inverse=True)
    merged_y = np.bincount(inverse, weights=y) / np.bincount(inverse)
    return unique_x, merged_y


def fit_method(method: str, raw: np.ndarray, y: np.ndarray) -> Calibration:
    if method == "platt":
        return fit_platt(raw, y)
    if method == "isotonic":
        return fit_isotonic(raw, y)
    return Calibration(method="none")


def calibrate(calibration: Calibration, raw: Any) -> np.ndarray:
    """Calibrated probabilities exactly as the service computes them."""
    return np.clip(apply_calibration(calibration, np.asarray(raw, dtype=np.float64)), 0.0, 1.0)


# ---- honest selection ------------------------------------------------------------------------------
def fold_count(y: np.ndarray) -> int:
    """Folds for cross-fitting: up to 5, but every fold needs at least one customer of each class."""
    minority = int(min(y.sum(), y.size - y.sum()))
    return min(MAX_FOLDS, minority)


def customer_log_losses(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Each customer's log loss; their mean is the usual log loss."""
    p = np.clip(p, LOSS_EPS, 1 - LOSS_EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def cross_fitted_losses(raw: np.ndarray, y: np.ndarray, *, seed: int) -> dict[str, np.ndarray]:
    """Per-customer out-of-fold log loss of each method: every score is calibrated by a calibrator that never saw it."""
    folds = StratifiedKFold(n_splits=fold_count(y), shuffle=True, random_state=seed)
    out_of_fold = {method: np.empty_like(raw) for method in METHODS}
    for fit_index, held_out in folds.split(raw.reshape(-1, 1), y):
        for method in METHODS:
            calibration = fit_method(method, raw[fit_index], y[fit_index])
            out_of_fold[method][held_out] = calibrate(calibration, raw[held_out])
    return {method: customer_log_losses(y, predictions) for method, predictions in out_of_fold.items()}


def cross_fitted_log_loss(raw: np.ndarray, y: np.ndarray, *, seed: int) -> dict[str, float]:
    """Mean out-of-fold log loss of each method (what the choice is based on)."""
    return {method: float(losses.mean()) for method, losses in cross_fitted_losses(raw, y, seed=seed).items()}


def improvement_in_standard_errors(candidate: np.ndarray, incumbent: np.ndarray) -> float:
    """Mean per-customer log-loss gain of the candidate over the incumbent, in standard errors of that mean."""
    difference = incumbent - candidate
    if difference.size < 2:
        return 0.0
    standard_error = difference.std(ddof=1) / np.sqrt(difference.size)
    if standard_error == 0:
        return 0.0 if difference.mean() == 0 else float(np.sign(difference.mean()) * np.inf)
    return float(difference.mean() / standard_error)


def select_method(losses: dict[str, np.ndarray]) -> str:
    """The simplest calibrator that beats the raw scores, and each simpler one, by more than chance explains.

    A calibrator must beat the raw scores by MIN_IMPROVEMENT_STANDARD_ERRORS to qualify ("none" stays
    when none does). Isotonic is then kept over a qualifying Platt curve only when it beats that too:
    its flat steps tie customers the model ranked apart, which costs ROC-AUC, so it must earn its place.
    """
    qualified = [
        method
        for method in METHODS[1:]
        if improvement_in_standard_errors(losses[method], losses["none"]) > MIN_IMPROVEMENT_STANDARD_ERRORS
    ]
    if not qualified:
        return "none"
    if qualified == ["platt", "isotonic"]:
        beats_platt = improvement_in_standard_errors(losses["isotonic"], losses["platt"])
        return "isotonic" if beats_platt > MIN_IMPROVEMENT_STANDARD_ERRORS else "platt"
    return qualified[0]


def can_cross_fit(y: np.ndarray) -> bool:
    return fold_count(y) >= 2


def fit_calibration(raw_val: Any, y_val: Any, *, seed: int) -> Calibration:
    """Choose none / platt / isotonic by cross-fitted validation log loss and fit it on all of validation.

    ``raw_val`` are the model's uncalibrated validation probabilities. With too few churners (or
    non-churners) to cross-fit, the raw scores are kept as they are.
    """
    y = as_labels(y_val)
    raw = as_probabilities(raw_val, y.size)
    if not can_cross_fit(y):
        return Calibration(method="none")
    method = select_method(cross_fitted_losses(raw, y, seed=seed))
    return fit_method(method, raw, y)


def calibration_summary(
    raw_val: Any, y_val: Any, calibration: Calibration, *, seed: int | None = None
) -> dict[str, Any]:
    """Log loss, Brier score and ECE on validation before and after ``calibration``.

    The "after" figures are measured on the data the calibrator was fitted on, so they flatter
    it; pass the ``seed`` given to :func:`fit_calibration` to add the cross-fitted log loss of
    every candidate, which is what the choice was based on.
    """
    y = as_labels(y_val)
    raw = as_probabilities(raw_val, y.size)
    after = calibrate(calibration, raw)
    summary: dict[str, Any] = {
        "method": calibration.method,
        "n": int(y.size),
        "log_loss_before": binary_log_loss(y, raw),
        "log_loss_after": binary_log_loss(y, after),
        "brier_before": float(np.mean((raw - y) ** 2)),
        "brier_after": float(np.mean((after - y) ** 2)),
        "ece_before": expected_calibration_error(y, raw),
        "ece_after": expected_calibration_error(y, after),
        "min_improvement_standard_errors": MIN_IMPROVEMENT_STANDARD_ERRORS,
    }
    if calibration.method == "platt":
        summary["platt_a"], summary["platt_b"] = calibration.platt_a, calibration.platt_b
    if calibration.method == "isotonic":
        summary["isotonic_knots"] = len(calibration.isotonic_x)
    if seed is not None and can_cross_fit(y):
        losses = cross_fitted_losses(raw, y, seed=seed)
        summary["cross_fitted_log_loss"] = {method: float(values.mean()) for method, values in losses.items()}
        summary["improvement_standard_errors"] = {
            method: improvement_in_standard_errors(losses[method], losses["none"]) for method in METHODS[1:]
        }
        summary["folds"] = fold_count(y)
    return summary
