"""The candidate model families: build, cross-validate, tune, refit, predict and save each one.

Every family is scored by cross-validation on the search rows (:mod:`training.crossval`) and
tuned by :mod:`training.tuning`. Raw probabilities of a fitted model are computed through the
same code serving uses (``bundle.scoring``), so what the pipeline calibrates and evaluates is
exactly what the service will return.

Class imbalance: logistic regression and random forest may choose class weights, the boosted
trees may choose ``scale_pos_weight`` = negatives / positives, and the MLP always weights
positives by negatives / positives. Weighting shifts raw probabilities; calibration on the
out-of-fold scores corrects that afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from lightgbm import LGBMClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
from xgboost import XGBClassifier

from bundle.scoring import SoftVote, wrap_estimator
from training import mlp
from training.config import ALL_FAMILIES
from training.crossval import BOOSTED, CrossValidated, cross_validate, cross_validate_boosted
from training.split import Folds
from training.tuning import DEFAULT_PARAMS, Evaluate, TuningResult, tune

FAMILIES = ALL_FAMILIES  # the selectable families, named once in training.config
# Built from the tuned families rather than tuned itself, so it is not one of the selectable FAMILIES.
SOFT_VOTE = "soft_vote"
# Serving runs one thread per worker whatever is set here. The forest parallelises over trees with
# plain threads, which degrade gracefully when the machine is busy. The boosted trees use OpenMP,
# whose spin-waiting threads collapse on a shared two-core machine (LightGBM measured 0.5 s with one
# thread and 18.7 s with two while other jobs ran), so they train single-threaded.
FOREST_THREADS = 2
BOOSTING_THREADS = 1

# How a total tuning time is shared: logistic regression converges in a few cheap trials, the
# boosted trees have the largest search spaces, the forest and the MLP are slow per trial.
BUDGET_SHARES = {"logistic_regression": 0.06, "random_forest": 0.17, "xgboost": 0.28, "lightgbm": 0.28, "mlp": 0.21}
DEFAULT_TOTAL_SECONDS = 90.0
# With no budget given, a family also stops after this many trials (beyond them TPE rarely gains on this data size).
DEFAULT_TRIAL_CAPS = {"logistic_regression": 25, "random_forest": 25, "xgboost": 60, "lightgbm": 60, "mlp": 12}


@dataclass
class Budget:
    """Tuning budget for one family: stop after ``trials`` trials or ``seconds`` seconds, whichever comes first."""

    trials: int | None = None
    seconds: float | None = None


def default_budget(total_seconds: float | None, trials: int | None) -> dict[str, Budget]:
    """Share a total tuning time across the families; ``trials`` caps each family's trial count.

    With neither given, the default is ``DEFAULT_TOTAL_SECONDS`` in all plus per-family trial caps.
    """
    if total_seconds is None and trials is None:
        return {
            family: Budget(trials=DEFAULT_TRIAL_CAPS[family], seconds=DEFAULT_TOTAL_SECONDS * BUDGET_SHARES[family])
            for family in FAMILIES
        }
    return {
        family: Budget(trials=trials, seconds=None if total_seconds is None else total_seconds * BUDGET_SHARES[family])
        for family in FAMILIES
    }


def _check_family(family: str, *, ensemble: bool = False) -> None:
    """Reject unknown families; ``ensemble`` also accepts the soft vote (fit, predict and save, never tune)."""
    known = (*FAMILIES, SOFT_VOTE) if ensemble else FAMILIES
    if family not in known:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(known)}")


def _imbalance_ratio(y: np.ndarray) -> float:
    positives = int(np.sum(y == 1))
    return (len(y) - positives) / positives if positives else 1.0


def _logistic_regression(params: dict[str, Any], seed: int) -> LogisticRegression:
    l1 = float(params["l1_ratio"]) > 0
    return LogisticRegression(
        C=float(params["C"]),
        l1_ratio=float(params["l1_ratio"]),
        solver="liblinear" if l1 else "lbfgs",  # lbfgs cannot fit an l1 penalty
        class_weight=params["class_weight"],
        max_iter=2000,
        random_state=seed,
    )


def _random_forest(params: dict[str, Any], seed: int) -> RandomForestClassifier:
    return RandomForestClassifier(
        n_estimators=int(params["n_estimators"]),
        max_depth=int(params["max_depth"]) or None,
        min_samples_leaf=int(params["min_samples_leaf"]),
        max_features=float(params["max_features"]),
        class_weight=params["class_weight"],
        random_state=seed,
        n_jobs=FOREST_THREADS,
    )


def _xgboost(params: dict[str, Any], y: np.ndarray, seed: int) -> XGBClassifier:
    return XGBClassifier(
        tree_method="hist",
        n_estimators=int(params["n_estimators"]),
        learning_rate=float(params["learning_rate"]),
        max_depth=int(params["max_depth"]),
        min_child_weight=float(params["min_child_weight"]),
        subsample=float(params["subsample"]),
        colsample_bytree=float(params["colsample_bytree"]),
        reg_lambda=float(params["reg_lambda"]),
        scale_pos_weight=_imbalance_ratio(y) if params["balance_classes"] else 1.0,
        eval_metric="logloss",
        random_state=seed,
        n_jobs=BOOSTING_THREADS,
    )


def _lightgbm(params: dict[str, Any], y: np.ndarray, seed: int) -> LGBMClassifier:
    return LGBMClassifier(
        n_estimators=int(params["n_estimators"]),
        learning_rate=float(params["learning_rate"]),
        num_leaves=int(params["num_leaves"]),
        min_child_samples=int(params["min_child_samples"]),
        colsample_bytree=float(params["colsample_bytree"]),
        subsample=float(params["subsample"]),
        subsample_freq=1,  # bagging is only active with a frequency
        reg_lambda=float(params["reg_lambda"]),
        scale_pos_weight=_imbalance_ratio(y) if params["balance_classes"] else 1.0,
        random_state=seed,
        deterministic=True,
        force_row_wise=True,  # deterministic results need a fixed histogram layout
        n_jobs=BOOSTING_THREADS,
        verbose=-1,
    )


def build_estimator(family: str, params: dict[str, Any], y_train: np.ndarray, seed: int) -> Any:
    if family == "logistic_regression":
        return _logistic_regression(params, seed)
    if family == "random_forest":
        return _random_forest(params, seed)
    if family == "xgboost":
        return _xgboost(params, y_train, seed)
    return _lightgbm(params, y_train, seed)


def fit_with_params(family: str, params: dict[str, Any], X_train: np.ndarray, y_train: np.ndarray, *, seed: int) -> Any:
    """Fit one configuration from scratch on ``(X_train, y_train)``; missing parameters take the family default.

    For the soft vote, ``params`` lists the members (``{"members": [{"family", "params", "weight"}, ...]}``)
    and every member is refitted.
    """
    _check_family(family, ensemble=True)
    if family == SOFT_VOTE:
        return _fit_soft_vote(params, X_train, y_train, seed=seed)
    full = {**DEFAULT_PARAMS[family], **params}
    if family == "mlp":
        return mlp.fit_mlp(X_train, y_train, full, seed=seed)
    estimator = build_estimator(family, full, y_train, seed)
    # A multi-threaded BLAS makes logistic regression's small solves several times slower on a busy
    # two-core machine (measured 1.35 s against 0.16 s on Telco); the tree libraries do not use it.
    with threadpool_limits(limits=1, user_api="blas"):
        return estimator.fit(X_train, y_train)


def predict_raw(family: str, estimator: Any, X: np.ndarray) -> np.ndarray:
    """Raw positive-class probabilities, through the same code path serving uses for this family.

    The serving wrappers set the estimator to one thread, which is also how the artifact should be saved.
    """
    _check_family(family, ensemble=True)
    if family == "mlp":
        return mlp.predict_mlp(estimator, X)
    return wrap_estimator(family, estimator).raw_proba(np.asarray(X, dtype=np.float64))


def save_artifact(family: str, estimator: Any, directory: Path) -> tuple[str, str]:
    """Write the model file serving loads; returns ``(file name, artifact format)``."""
    _check_family(family, ensemble=True)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if family == "mlp":
        mlp.export_torchscript(estimator, directory / "model.pt")
        return "model.pt", "torchscript"
    joblib.dump(estimator, directory / "model.joblib")
    return "model.joblib", "joblib"


def evaluator(family: str, X: np.ndarray, y: np.ndarray, folds: Folds, *, seed: int) -> Evaluate:
    """The function that cross-validates one configuration of ``family`` on ``(X, y)`` and ``folds``."""
    _check_family(family)
    y = np.asarray(y, dtype=np.int64)
    if family in BOOSTED:

        def build(params: dict[str, Any], y_fit: np.ndarray) -> Any:
            return build_estimator(family, {**DEFAULT_PARAMS[family], **params}, y_fit, seed)

        return lambda params, stop: cross_validate_boosted(family, build, params, X, y, folds, stop)

    def fit(params: dict[str, Any], X_fit: np.ndarray, y_fit: np.ndarray) -> Any:
        return fit_with_params(family, params, X_fit, y_fit, seed=seed)

    def predict(model: Any, X_held: np.ndarray) -> np.ndarray:
        return predict_raw(family, model, X_held)

    return lambda params, stop: cross_validate(fit, predict, params, X, y, folds, stop)


def screen(family: str, X: np.ndarray, y: np.ndarray, folds: Folds, *, seed: int) -> CrossValidated:
    """Cross-validate ``family``'s default configuration (the first round every family gets)."""
    return evaluator(family, X, y, folds, seed=seed)(dict(DEFAULT_PARAMS[family]), lambda: False)


def tune_family(
    family: str,
    X: np.ndarray,
    y: np.ndarray,
    folds: Folds,
    *,
    budget: Budget,
    seed: int,
    first: CrossValidated | None = None,
    progress: bool = False,
) -> TuningResult:
    """Search ``family`` within ``budget``; ``first`` is its already screened default, if any."""
    return tune(
        family,
        evaluator(family, X, y, folds, seed=seed),
        trials=budget.trials,
        seconds=budget.seconds,
        seed=seed,
        first=first,
        progress=progress,
    )


def _fit_soft_vote(params: dict[str, Any], X_train: np.ndarray, y_train: np.ndarray, *, seed: int) -> SoftVote:
    members = []
    for member in params["members"]:
        estimator = fit_with_params(member["family"], member["params"], X_train, y_train, seed=seed)
        members.append((member["family"], estimator, float(member["weight"])))
    return SoftVote(members=members)
