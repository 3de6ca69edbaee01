"""Hyperparameter search for each model family: Optuna TPE maximising cross-validated ROC-AUC.

Every trial is scored on the same folds (see :mod:`training.crossval`), so configurations are
compared on identical data. The family's starting points (its default and the untuned settings
practitioners reach for first) are the first trials, so the chosen configuration can never score
below any of them on cross-validation. Boosted trees do not search their number of trees: early
stopping inside the folds chooses it for every trial.

A budget is a number of trials and/or a number of seconds, whichever runs out first. A trial
that is still running when the seconds run out is abandoned (pruned) between folds, so the time
cap is overrun by at most one model fit; the first starting point is always completed.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from training.crossval import CrossValidated, CrossValidatedResult

# Scores one configuration; the callable tells it when the time budget has run out.
Evaluate = Callable[[dict[str, Any], Callable[[], bool]], CrossValidated]

DEFAULT_TRIALS = 20  # used when a budget gives neither trials nor seconds

# The untuned starting point of each family. The boosted trees start from the settings most
# practitioners try first (learning rate 0.03, moderate depth, 0.8 row and column sampling); their
# ``n_estimators`` is only a fallback for fits outside cross-validation, which otherwise chooses it.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"C": 1.0, "l1_ratio": 0.0, "class_weight": None},
    "random_forest": {
        "n_estimators": 200,
        "max_depth": 0,  # 0 means unlimited depth (Optuna needs a number to search over)
        "min_samples_leaf": 15,
        "max_features": 0.3,
        "class_weight": "balanced_subsample",
    },
    "xgboost": {
        "learning_rate": 0.03,
        "max_depth": 4,
        "min_child_weight": 1.0,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "reg_lambda": 1.0,
        "balance_classes": False,
        "n_estimators": 400,
    },
    "lightgbm": {
        "learning_rate": 0.03,
        "num_leaves": 15,
        "min_child_samples": 20,
        "colsample_bytree": 0.8,
        "subsample": 0.8,
        "reg_lambda": 1.0,
        "balance_classes": False,
        "n_estimators": 400,
    },
    "mlp": {"hidden_size": 32, "n_layers": 1, "dropout": 0.3, "lr": 3e-3, "weight_decay": 1e-3},
}

# Further starting points tried right after the default: shallow boosted trees with column sampling,
# which suit tables with few informative columns, and a more strongly regularised linear model.
EXTRA_STARTING_POINTS: dict[str, list[dict[str, Any]]] = {
    "logistic_regression": [{"C": 0.1, "l1_ratio": 0.0, "class_weight": None}],
    "xgboost": [{**DEFAULT_PARAMS["xgboost"], "max_depth": 2, "colsample_bytree": 0.5}],
    "lightgbm": [{**DEFAULT_PARAMS["lightgbm"], "num_leaves": 4, "colsample_bytree": 0.5}],
}


def starting_points(family: str) -> list[dict[str, Any]]:
    """The configurations every search of ``family`` tries first, the default first of all."""
    return [dict(DEFAULT_PARAMS[family]), *(dict(p) for p in EXTRA_STARTING_POINTS.get(family, []))]


def searched(family: str, params: dict[str, Any]) -> dict[str, Any]:
    """The part of ``params`` the search space covers (what a trial can be seeded with)."""
    fixed = {"n_estimators"} if family in ("xgboost", "lightgbm") else set()
    return {key: value for key, value in params.items() if key not in fixed}


def suggest_params(family: str, trial: optuna.Trial) -> dict[str, Any]:
    """Draw one configuration of ``family`` from its search space (ranges contain the defaults)."""
    if family == "logistic_regression":
        return {
            "C": trial.suggest_float("C", 1e-3, 10.0, log=True),
            "l1_ratio": trial.suggest_categorical("l1_ratio", [0.0, 1.0]),  # pure l2 or pure l1
            "class_weight": trial.suggest_categorical("class_weight", [None, "balanced"]),
        }
    if family == "random_forest":
        return {
            "n_estimators": trial.suggest_int("n_estimators", 100, 300, step=50),
            "max_depth": trial.suggest_int("max_depth", 0, 16),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 40, log=True),
            "max_features": trial.suggest_float("max_features", 0.1, 0.8),
            "class_weight": trial.suggest_categorical("class_weight", ["balanced", "balanced_subsample", None]),
        }
    if family == "xgboost":
        return {
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
            "max_depth": trial.suggest_int("max_depth", 2, 6),
            "min_child_weight": trial.suggest_float("min_child_weight", 0.5, 30.0, log=True),
            "subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.3, 1.0),
            "reg_lambda": trial.suggest_float("reg_lambda", 1e-2, 30.0, log=True),
            "balance_classes": trial.suggest_categorical("balance_classes", [False, True]),
        }
    if family == "lightgbm":
        return {
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 4, 48, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 5, 150, log=True),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.3, 1.0),
            "subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "reg_lambda": trial.suggest_float("reg_lambda", 1e-2, 30.0, log=True),
            "balance_classes": trial.suggest_categorical("balance_classes", [False, True]),
        }
    if family == "mlp":
        return {
            "hidden_size": trial.suggest_categorical("hidden_size", [32, 64, 128]),
            "n_layers": trial.suggest_int("n_layers", 1, 3),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        }
    raise ValueError(f"unknown model family {family!r}")


@dataclass
class TuningResult(CrossValidatedResult):
    """The chosen configuration's cross-validation, and how the default scored."""

    family: str
    cross_validated: CrossValidated
    default_cv_roc_auc: float
    trials: int  # completed trials, the starting points included
    seconds: float


class _Deadline:
    """Wall-clock limit shared by the trials of one search (None means no limit)."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.perf_counter() + seconds

    def passed(self) -> bool:
        return self.end is not None and time.perf_counter() >= self.end

    def remaining(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - time.perf_counter())


def _new_study(family: str, seed: int, seeds: list[dict[str, Any]]) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True)
    study = optuna.create_study(direction="maximize", sampler=sampler, study_name=f"tune-{family}")
    for params in seeds:
        study.enqueue_trial(searched(family, params))
    return study


def tune(
    family: str,
    evaluate: Evaluate,
    *,
    trials: int | None,
    seconds: float | None,
    seed: int,
    first: CrossValidated | None = None,
    progress: bool = False,
) -> TuningResult:
    """Search ``family``'s hyperparameters under the budget, starting from :func:`starting_points`.

    ``first`` is the default configuration's cross-validation when it is already known (it then
    counts as the first trial without being refitted). With neither ``trials`` nor ``seconds`` the
    search runs ``DEFAULT_TRIALS`` trials.
    """
    if trials is not None and trials < 1:
        raise ValueError("a tuning budget needs at least one trial")
    started = time.perf_counter()
    deadline = _Deadline(seconds)
    study = _new_study(family, seed, starting_points(family))
    outcomes: dict[int, CrossValidated] = {}

    def objective(trial: optuna.Trial) -> float:
        params = {**DEFAULT_PARAMS[family], **suggest_params(family, trial)}
        if trial.number == 0 and first is not None:
            outcome = first
        else:
            # The default is never abandoned: it is the floor the search must beat.
            outcome = evaluate(params, (lambda: False) if trial.number == 0 else deadline.passed)
        best = max((o.roc_auc for o in outcomes.values()), default=-np.inf)
        if outcome.roc_auc > best:
            outcomes.clear()  # only the best trial's out-of-fold scores are worth their memory
            outcomes[trial.number] = outcome
        return outcome.roc_auc

    if trials is None and seconds is None:
        trials = DEFAULT_TRIALS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
        study.optimize(objective, n_trials=1)  # the default, whatever the time budget says
        remaining_trials = None if trials is None else trials - 1
        if remaining_trials != 0 and not deadline.passed():
            study.optimize(objective, n_trials=remaining_trials, timeout=deadline.remaining())
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    result = TuningResult(
        family=family,
        cross_validated=next(iter(outcomes.values())),
        default_cv_roc_auc=float(study.trials[0].value),
        trials=len(completed),
        seconds=time.perf_counter() - started,
    )
    if progress:
        print(
            f"  {family:<20} cv roc-auc {result.cv_roc_auc:.4f} ± {result.cv_roc_auc_std:.4f}"
            f" (default {result.default_cv_roc_auc:.4f}) {result.trials} trials, {result.seconds:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    return result
