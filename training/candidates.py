"""The candidate model families: build, tune, refit, predict and save each one.

Every family is tuned by :mod:`training.tuning` (cross-validated ROC-AUC on the training split,
the untuned default first), refitted on the whole training split with the chosen parameters and
scored on the validation split. Raw probabilities are computed through the same code serving
uses (``bundle.scoring``), so what the pipeline calibrates and evaluates is exactly what the
service will return.

Class imbalance: logistic regression and random forest may choose class weights, the boosted
trees may choose ``scale_pos_weight`` = negatives / positives, and the MLP always weights
positives by negatives / positives. Weighting shifts raw probabilities; calibration on the
validation split corrects that afterwards.

Once the families are trained, :func:`build_soft_vote` adds one more candidate: a soft-vote
ensemble of the best linear model and the best boosted tree, whose errors differ more than any two
tree models' do. It competes on validation like every family.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from lightgbm import LGBMClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits
from xgboost import XGBClassifier

from bundle.scoring import SoftVote, wrap_estimator
from training import mlp
from training.config import ALL_FAMILIES
from training.tuning import DEFAULT_FOLDS, DEFAULT_PARAMS, cross_validated_auc, stratified_folds, tune

FAMILIES = ALL_FAMILIES  # the selectable families, named once in training.config
# Built from the trained families rather than tuned, so it is not one of the selectable FAMILIES.
SOFT_VOTE = "soft_vote"
# The ensemble's two slots: the linear model and the better of the boosted trees (on validation).
# On IBM Telco (5-fold CV, default parameters) logistic regression + a boosted tree scores 0.8504-0.8505
# ROC-AUC against 0.8495 for XGBoost + LightGBM, the pair a plain top-two-on-validation rule
# usually picks: two tree models make the same mistakes. Equal weights: giving the linear model
# 0.3 to 0.7 moved ROC-AUC by at most 0.0003, less than is worth fitting on validation.
SOFT_VOTE_SLOTS = (("logistic_regression",), ("xgboost", "lightgbm"))
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


@dataclass
class CandidateResult:
    """One tuned and refitted family.

    ``cv_roc_auc`` is the mean stratified k-fold ROC-AUC of the chosen parameters on the training
    split, for every family including the MLP (whose folds each hold out a slice of their own
    training rows for early stopping).
    """

    family: str
    estimator: Any
    params: dict[str, Any]
    cv_roc_auc: float
    cv_roc_auc_std: float
    val_raw: np.ndarray
    fit_seconds: float
    trials: int


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


def _build_estimator(family: str, params: dict[str, Any], y_train: np.ndarray, seed: int) -> Any:
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
    estimator = _build_estimator(family, full, y_train, seed)
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


def train_candidate(
    family: str,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    budget: Budget,
    seed: int,
    progress: bool = True,
    n_folds: int = DEFAULT_FOLDS,
) -> CandidateResult:
    """Tune ``family`` on the training split within ``budget``, refit with the best parameters, score validation.

    ``y_val`` is not used to choose anything; it is accepted so every family shares one signature.
    """
    _check_family(family)
    started = time.perf_counter()
    y_train = np.asarray(y_train, dtype=np.int64)
    tuned = tune(
        family,
        X_train,
        y_train,
        fit=lambda params, X, y: fit_with_params(family, params, X, y, seed=seed),
        predict=lambda model, X: predict_raw(family, model, X),
        trials=budget.trials,
        seconds=budget.seconds,
        seed=seed,
        n_folds=n_folds,
        progress=progress,
    )
    estimator = fit_with_params(family, tuned.params, X_train, y_train, seed=seed)
    return CandidateResult(
        family=family,
        estimator=estimator,
        params=tuned.params,
        cv_roc_auc=tuned.cv_roc_auc,
        cv_roc_auc_std=tuned.cv_roc_auc_std,
        val_raw=predict_raw(family, estimator, X_val),
        fit_seconds=time.perf_counter() - started,
        trials=tuned.trials,
    )


# ---- soft-vote ensemble ---------------------------------------------------------------------
def _fit_soft_vote(params: dict[str, Any], X_train: np.ndarray, y_train: np.ndarray, *, seed: int) -> SoftVote:
    members = []
    for member in params["members"]:
        estimator = fit_with_params(member["family"], member["params"], X_train, y_train, seed=seed)
        members.append((member["family"], estimator, float(member["weight"])))
    return SoftVote(members=members)


def _validation_auc(result: CandidateResult, y_val: np.ndarray) -> float:
    return float(roc_auc_score(y_val, result.val_raw))


def soft_vote_members(results: list[CandidateResult], y_val: np.ndarray) -> list[CandidateResult]:
    """The best result (validation ROC-AUC) of each slot in ``SOFT_VOTE_SLOTS``; empty if a slot has none."""
    chosen = []
    for slot in SOFT_VOTE_SLOTS:
        in_slot = [result for result in results if result.family in slot]
        if not in_slot:
            return []
        chosen.append(max(in_slot, key=lambda result: _validation_auc(result, y_val)))
    return chosen


def build_soft_vote(
    results: list[CandidateResult],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    seed: int,
    n_folds: int = DEFAULT_FOLDS,
) -> CandidateResult | None:
    """Equal-weight soft vote of the chosen members, or None when a member slot has no trained family.

    The members' fitted estimators are reused for the artifact and the validation scores; the
    cross-validated ROC-AUC refits every member on the same stratified folds tuning used, so it is
    as honest as the families' own.
    """
    members = soft_vote_members(results, np.asarray(y_val))
    if not members:
        return None
    started = time.perf_counter()
    y_train = np.asarray(y_train, dtype=np.int64)
    weight = 1.0 / len(members)
    params = {"members": [{"family": m.family, "params": m.params, "weight": weight} for m in members]}
    vote = SoftVote(members=[(m.family, m.estimator, weight) for m in members])
    cv_mean, cv_std = cross_validated_auc(
        lambda p, X, y: fit_with_params(SOFT_VOTE, p, X, y, seed=seed),
        lambda model, X: predict_raw(SOFT_VOTE, model, X),
        params,
        X_train,
        y_train,
        stratified_folds(y_train, n_folds, seed),
    )
    return CandidateResult(
        family=SOFT_VOTE,
        estimator=vote,
        params=params,
        cv_roc_auc=cv_mean,
        cv_roc_auc_std=cv_std,
        val_raw=predict_raw(SOFT_VOTE, vote, X_val),
        fit_seconds=time.perf_counter() - started,
        trials=1,  # one configuration cross-validated, nothing searched
    )
