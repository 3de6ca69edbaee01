"""The search respects its budget, starts from the default and never ends below it on cross-validation."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import optuna
import pytest
from sklearn.linear_model import LogisticRegression

from training.candidates import FAMILIES, fit_with_params, predict_raw
from training.tuning import DEFAULT_PARAMS, DEFAULT_TRIALS, cross_validated_auc, stratified_folds, suggest_params, tune


def planted_signal(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, 5))
    logit = 1.5 * X[:, 0] - 1.0 * X[:, 1] + 0.5 * X[:, 2] - 0.8
    y = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return X, y


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return planted_signal(300, seed=1)


def family_fit(family: str, seed: int = 0) -> dict[str, Any]:
    return {
        "fit": lambda params, X, y: fit_with_params(family, params, X, y, seed=seed),
        "predict": lambda model, X: predict_raw(family, model, X),
    }


class RecordingLogisticFit:
    """A real logistic-regression fit that remembers every configuration it was asked to train."""

    def __init__(self, sleep_seconds: float = 0.0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.sleep_seconds = sleep_seconds

    def __call__(self, params: dict[str, Any], X: np.ndarray, y: np.ndarray) -> Any:
        self.calls.append(dict(params))
        time.sleep(self.sleep_seconds)
        return fit_with_params("logistic_regression", params, X, y, seed=0)


@pytest.mark.parametrize("trials", [1, 4])
def test_trial_budget_is_respected_exactly(trials: int, data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    result = tune("logistic_regression", X, y, **family_fit("logistic_regression"), trials=trials, seconds=None, seed=0)

    assert result.trials == trials
    assert result.folds == 3


def test_time_budget_stops_the_search(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    fit = RecordingLogisticFit(sleep_seconds=0.05)  # each fold costs at least 50 ms
    started = time.perf_counter()
    result = tune(
        "logistic_regression",
        X,
        y,
        fit=fit,
        predict=family_fit("logistic_regression")["predict"],
        trials=1000,
        seconds=0.6,
        seed=0,
    )
    elapsed = time.perf_counter() - started

    assert 1 <= result.trials < 1000
    # A running trial is abandoned between folds, so the overrun is at most one fit plus bookkeeping.
    assert elapsed < 0.6 + 1.0
    # Abandoned trials are not counted: every counted trial fitted all three folds.
    assert len(fit.calls) >= 3 * result.trials


def test_default_configuration_is_always_the_first_trial_even_without_time(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    fit = RecordingLogisticFit()
    result = tune(
        "logistic_regression",
        X,
        y,
        fit=fit,
        predict=family_fit("logistic_regression")["predict"],
        trials=None,
        seconds=0.0,
        seed=0,
    )

    assert result.trials == 1
    assert fit.calls == [DEFAULT_PARAMS["logistic_regression"]] * 3
    assert result.params == DEFAULT_PARAMS["logistic_regression"]


@pytest.mark.parametrize("family", ["logistic_regression", "lightgbm"])
def test_tuning_never_ends_below_the_default_on_cross_validation(
    family: str, data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = data
    fns = family_fit(family)
    result = tune(family, X, y, **fns, trials=5, seconds=None, seed=2)
    default_mean, _ = cross_validated_auc(
        fns["fit"], fns["predict"], DEFAULT_PARAMS[family], X, y, stratified_folds(y, 3, seed=2)
    )

    assert result.default_cv_roc_auc == pytest.approx(default_mean)
    assert result.cv_roc_auc >= default_mean
    assert result.cv_roc_auc > 0.7


def test_chosen_score_is_the_cross_validated_score_of_the_chosen_parameters(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    X, y = data
    fns = family_fit("xgboost")
    result = tune("xgboost", X, y, **fns, trials=3, seconds=None, seed=4)
    mean, std = cross_validated_auc(fns["fit"], fns["predict"], result.params, X, y, stratified_folds(y, 3, seed=4))

    assert result.cv_roc_auc == pytest.approx(mean)
    assert result.cv_roc_auc_std == pytest.approx(std)


def test_same_seed_gives_the_same_search(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    runs = [tune("logistic_regression", X, y, **family_fit("logistic_regression"), trials=6, seconds=None, seed=5)]
    runs.append(tune("logistic_regression", X, y, **family_fit("logistic_regression"), trials=6, seconds=None, seed=5))

    assert runs[0].params == runs[1].params
    assert runs[0].cv_roc_auc == runs[1].cv_roc_auc


@pytest.mark.parametrize("family", FAMILIES)
def test_search_space_contains_the_default(family: str) -> None:
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(dict(DEFAULT_PARAMS[family]))
    study.optimize(lambda trial: float(len(suggest_params(family, trial))), n_trials=1)
    trial = study.trials[0]

    assert trial.params == DEFAULT_PARAMS[family]
    for name, value in trial.params.items():
        distribution = trial.distributions[name]
        assert distribution._contains(distribution.to_internal_repr(value)), name


def test_progress_reports_one_line_with_the_score_and_time(
    data: tuple[np.ndarray, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    X, y = data
    tune(
        "logistic_regression", X, y, **family_fit("logistic_regression"), trials=2, seconds=None, seed=0, progress=True
    )
    lines = capsys.readouterr().err.strip().splitlines()

    assert len(lines) == 1
    assert "logistic_regression" in lines[0]
    assert "cv roc-auc 0." in lines[0]
    assert lines[0].endswith("s")


def test_cross_validation_scores_a_perfect_ranking_as_one() -> None:
    X = np.arange(60, dtype=np.float64).reshape(-1, 1)
    y = (X[:, 0] >= 40).astype(np.int64)
    mean, std = cross_validated_auc(
        lambda params, X_fit, y_fit: LogisticRegression().fit(X_fit, y_fit),
        lambda model, X_test: model.predict_proba(X_test)[:, 1],
        {},
        X,
        y,
        stratified_folds(y, 5, seed=0),
    )

    assert mean == 1.0
    assert std == 0.0


def test_folds_shrink_when_a_class_is_rare() -> None:
    y = np.array([0] * 20 + [1] * 2)

    assert len(stratified_folds(y, 5, seed=0)) == 2
    with pytest.raises(ValueError, match="at least two rows of each class"):
        stratified_folds(np.array([0] * 20 + [1]), 3, seed=0)


def test_a_budget_without_trials_is_rejected(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    with pytest.raises(ValueError, match="at least one trial"):
        tune("logistic_regression", X, y, **family_fit("logistic_regression"), trials=0, seconds=None, seed=0)


def test_an_empty_budget_runs_the_default_number_of_trials(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    result = tune("logistic_regression", X, y, **family_fit("logistic_regression"), trials=None, seconds=None, seed=0)

    assert result.trials == DEFAULT_TRIALS
