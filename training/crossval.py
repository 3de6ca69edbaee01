"""Cross-validation of one configuration: its ROC-AUC on every fold and its out-of-fold predictions.

Boosted trees choose their number of trees here, as ``xgboost.cv`` does: in every fold the model
grows up to MAX_TREES trees, stopping early once the held-out part has not improved for PATIENCE
trees; the count with the best mean held-out ROC-AUC over all folds is kept, every fold's
predictions use that count, and the refits use it too. One count shared by every fold, rather
than each fold's own best, keeps the cross-validated score from flattering the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightgbm
import numpy as np
import optuna
from sklearn.metrics import roc_auc_score

from training.split import Folds

BOOSTED = ("xgboost", "lightgbm")
MAX_TREES = 2000
PATIENCE = 100

FitFunction = Callable[[dict[str, Any], np.ndarray, np.ndarray], Any]
PredictFunction = Callable[[Any, np.ndarray], np.ndarray]


@dataclass
class CrossValidated:
    """One configuration's cross-validation; ``oof`` holds one row of out-of-fold raw scores per repeat."""

    params: dict[str, Any]
    fold_roc_auc: list[float]
    oof: np.ndarray

    @property
    def roc_auc(self) -> float:
        return float(np.mean(self.fold_roc_auc))

    @property
    def roc_auc_std(self) -> float:
        return float(np.std(self.fold_roc_auc))

    def summary(self) -> dict[str, Any]:
        return {
            "cv_roc_auc": self.roc_auc,
            "cv_roc_auc_std": self.roc_auc_std,
            "cv_fits": len(self.fold_roc_auc),
        }


class CrossValidatedResult:
    """What a result built on a :class:`CrossValidated` configuration exposes of it."""

    cross_validated: CrossValidated

    @property
    def params(self) -> dict[str, Any]:
        return self.cross_validated.params

    @property
    def cv_roc_auc(self) -> float:
        return self.cross_validated.roc_auc

    @property
    def cv_roc_auc_std(self) -> float:
        return self.cross_validated.roc_auc_std


def fold_scores(y: np.ndarray, oof: np.ndarray, folds: Folds) -> list[float]:
    """ROC-AUC of every fold's held-out rows, from per-repeat out-of-fold scores."""
    scores = []
    for position, (_, held_out) in enumerate(folds.splits):
        scores.append(float(roc_auc_score(y[held_out], oof[position // folds.n_folds, held_out])))
    return scores


def cross_validate(
    fit: FitFunction,
    predict: PredictFunction,
    params: dict[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    folds: Folds,
    should_stop: Callable[[], bool] = lambda: False,
) -> CrossValidated:
    """Fit on every fold's training part, score its held-out part; stops (TrialPruned) when asked."""
    oof = np.zeros((folds.repeats, len(y)))
    for position, (train, held_out) in enumerate(folds.splits):
        if should_stop():
            raise optuna.TrialPruned("tuning time budget exhausted")
        model = fit(params, X[train], y[train])
        oof[position // folds.n_folds, held_out] = predict(model, X[held_out])
    return CrossValidated(params=dict(params), fold_roc_auc=fold_scores(y, oof, folds), oof=oof)


def cross_validate_boosted(
    family: str,
    build: Callable[[dict[str, Any], np.ndarray], Any],
    params: dict[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    folds: Folds,
    should_stop: Callable[[], bool] = lambda: False,
) -> CrossValidated:
    """Cross-validate a boosted tree, choosing its number of trees from the folds' mean held-out curve."""
    models, curves = [], []
    for train, held_out in folds.splits:
        if should_stop():
            raise optuna.TrialPruned("tuning time budget exhausted")
        model = build({**params, "n_estimators": MAX_TREES}, y[train])
        curves.append(fit_with_early_stopping(family, model, X[train], y[train], X[held_out], y[held_out]))
        models.append(model)
    longest = max(len(curve) for curve in curves)
    # A fold that stopped early keeps its last score: past its stop it would not have improved.
    padded = np.array([np.pad(curve, (0, longest - len(curve)), mode="edge") for curve in curves])
    trees = int(np.argmax(padded.mean(axis=0))) + 1
    oof = np.zeros((folds.repeats, len(y)))
    for position, ((_, held_out), model, curve) in enumerate(zip(folds.splits, models, curves, strict=True)):
        # A fold that stopped before ``trees`` predicts with all it grew, as the padding assumed.
        grown = min(trees, len(curve))
        oof[position // folds.n_folds, held_out] = predict_with_trees(family, model, X[held_out], grown)
    return CrossValidated(params={**params, "n_estimators": trees}, fold_roc_auc=fold_scores(y, oof, folds), oof=oof)


def fit_with_early_stopping(
    family: str, model: Any, X: np.ndarray, y: np.ndarray, X_held: np.ndarray, y_held: np.ndarray
) -> np.ndarray:
    """Fit, watching the held-out ROC-AUC after every tree; returns that curve."""
    if family == "xgboost":
        model.set_params(eval_metric="auc", early_stopping_rounds=PATIENCE)
        model.fit(X, y, eval_set=[(X_held, y_held)], verbose=False)
        return np.asarray(model.evals_result()["validation_0"]["auc"], dtype=np.float64)
    model.set_params(metric="auc")
    stop = lightgbm.early_stopping(PATIENCE, first_metric_only=True, verbose=False)
    model.fit(X, y, eval_X=X_held, eval_y=y_held, callbacks=[stop])
    return np.asarray(model.evals_result_["valid_0"]["auc"], dtype=np.float64)


def predict_with_trees(family: str, model: Any, X: np.ndarray, trees: int) -> np.ndarray:
    if family == "xgboost":
        return model.predict_proba(X, iteration_range=(0, trees))[:, 1]
    return model.predict_proba(X, num_iteration=trees)[:, 1]
