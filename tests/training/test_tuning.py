"""The search respects its budget, starts from its starting points and never ends below them on cross-validation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
import pytest
from sklearn.linear_model import LogisticRegression

from training.candidates import FAMILIES, evaluator, fit_with_params, predict_raw
from training.crossval import CrossValidated, cross_validate
from training.split import Folds, cross_validation_folds
from training.tuning import DEFAULT_PARAMS, DEFAULT_TRIALS, searched, starting_points, suggest_params, tune


def planted_signal(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, 5))
    logit = 1.5 * X[:, 0] - 1.0 * X[:, 1] + 0.5 * X[:, 2] - 0.8
    y = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return X, y


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return planted_signal(300, seed=1)


def folds_of(y: np.ndarray, seed: int = 0) -> Folds:
    return cross_validation_folds(y, seed, n_folds=3)


class RecordingLogisticEvaluate:
    """Real logistic-regression cross-validation that remembers every fit it was asked to make."""

    def __init__(self, X: np.ndarray, y: np.ndarray, folds: Folds, sleep_seconds: float = 0.0) -> None:
        self.X, self.y, self.folds = X, y, folds
        self.calls: list[dict[str, Any]] = []
        self.sleep_seconds = sleep_seconds

    def fit(self, params: dict[str, Any], X: np.ndarray, y: np.ndarray) -> Any:
        self.calls.append(dict(params))
        time.sleep(self.sleep_seconds)
        return fit_with_params("logistic_regression", params, X, y, seed=0)

    def __call__(self, params: dict[str, Any], stop: Callable[[], bool]) -> CrossValidated:
        return cross_validate(self.fit, self.predict, params, self.X, self.y, self.folds, stop)

    @staticmethod
    def predict(model: Any, X: np.ndarray) -> np.ndarray:
        return predict_raw("logistic_regression", model, X)


@pytest.mark.parametrize("trials", [1, 4])
def test_trial_budget_is_respected_exactly(trials: int, data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    folds = folds_of(y)
    evaluate = evaluator("logistic_regression", X, y, folds, seed=0)
    result = tune("logistic_regression", evaluate, trials=trials, seconds=None, seed=0)

    assert result.trials == trials
    assert len(result.cross_validated.fold_roc_auc) == len(folds.splits)


def test_time_budget_stops_the_search(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    evaluate = RecordingLogisticEvaluate(X, y, cross_validation_folds(y, 0, n_folds=3), sleep_seconds=0.05)
    result = tune("logistic_regression", evaluate, trials=1000, seconds=0.6, seed=0)
    folds = len(evaluate.folds.splits)

    assert 1 <= result.trials < 1000
    # Abandoned trials are not counted: every counted trial fitted every fold.
    assert len(evaluate.calls) >= folds * result.trials
    # A running trial is abandoned between folds: at most one trial stops part-way, and none starts after it.
    assert len(evaluate.calls) < folds * (result.trials + 1)


def test_default_configuration_is_always_the_first_trial_even_without_time(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    evaluate = RecordingLogisticEvaluate(X, y, folds_of(y))
    result = tune("logistic_regression", evaluate, trials=None, seconds=0.0, seed=0)

    assert result.trials == 1
    assert evaluate.calls == [DEFAULT_PARAMS["logistic_regression"]] * len(evaluate.folds.splits)
    assert result.params == DEFAULT_PARAMS["logistic_regression"]


def test_starting_points_are_tried_first_in_order(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    evaluate = RecordingLogisticEvaluate(X, y, folds_of(y))
    points = starting_points("logistic_regression")
    tune("logistic_regression", evaluate, trials=len(points), seconds=None, seed=0)

    per_trial = evaluate.calls[:: len(evaluate.folds.splits)]
    assert per_trial == points


@pytest.mark.parametrize("family", ["logistic_regression", "lightgbm"])
def test_tuning_never_ends_below_any_starting_point(family: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    evaluate = evaluator(family, X, y, folds_of(y, seed=2), seed=0)
    result = tune(family, evaluate, trials=5, seconds=None, seed=2)

    for point in starting_points(family):
        assert result.cv_roc_auc >= evaluate(point, lambda: False).roc_auc
    assert result.default_cv_roc_auc == pytest.approx(evaluate(DEFAULT_PARAMS[family], lambda: False).roc_auc)
    assert result.cv_roc_auc > 0.7


def test_a_known_first_trial_is_not_refitted(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    evaluate = RecordingLogisticEvaluate(X, y, folds_of(y))
    first = evaluate(DEFAULT_PARAMS["logistic_regression"], lambda: False)
    evaluate.calls.clear()

    result = tune("logistic_regression", evaluate, trials=1, seconds=None, seed=0, first=first)

    assert evaluate.calls == []
    assert result.cross_validated is first


def test_chosen_score_is_the_cross_validated_score_of_the_chosen_parameters(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    X, y = data
    evaluate = evaluator("xgboost", X, y, folds_of(y, seed=4), seed=0)
    result = tune("xgboost", evaluate, trials=3, seconds=None, seed=4)

    again = evaluate(result.params, lambda: False)
    assert result.cv_roc_auc == pytest.approx(again.roc_auc)
    assert result.cv_roc_auc_std == pytest.approx(again.roc_auc_std)


def test_same_seed_gives_the_same_search(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    evaluate = evaluator("logistic_regression", X, y, folds_of(y), seed=0)
    runs = [tune("logistic_regression", evaluate, trials=6, seconds=None, seed=5) for _ in range(2)]

    assert runs[0].params == runs[1].params
    assert runs[0].cv_roc_auc == runs[1].cv_roc_auc


@pytest.mark.parametrize("family", FAMILIES)
def test_search_space_contains_every_starting_point(family: str) -> None:
    for point in starting_points(family):
        study = optuna.create_study(direction="maximize")
        study.enqueue_trial(searched(family, point))
        study.optimize(lambda trial: float(len(suggest_params(family, trial))), n_trials=1)
        trial = study.trials[0]
        assert trial.params == searched(family, point)
        for name, value in trial.params.items():
            distribution = trial.distributions[name]
            assert distribution._contains(distribution.to_internal_repr(value)), name


def test_progress_reports_one_line_with_the_score_and_time(
    data: tuple[np.ndarray, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    X, y = data
    evaluate = evaluator("logistic_regression", X, y, folds_of(y), seed=0)
    tune("logistic_regression", evaluate, trials=2, seconds=None, seed=0, progress=True)

    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "logistic_regression" in lines[0]
    assert "cv roc-auc 0." in lines[0]
    assert lines[0].endswith("s")


def test_cross_validation_scores_a_perfect_ranking_as_one() -> None:
    X = np.arange(60, dtype=np.float64).reshape(-1, 1)
    y = (X[:, 0] >= 40).astype(np.int64)
    result = cross_validate(
        lambda params, X_fit, y_fit: LogisticRegression().fit(X_fit, y_fit),
        lambda model, X_test: model.predict_proba(X_test)[:, 1],
        {},
        X,
        y,
        cross_validation_folds(y, 0),
    )

    assert result.roc_auc == 1.0
    assert result.roc_auc_std == 0.0


def test_a_budget_without_trials_is_rejected(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    with pytest.raises(ValueError, match="at least one trial"):
        tune(
            "logistic_regression",
            evaluator("logistic_regression", X, y, folds_of(y), seed=0),
            trials=0,
            seconds=None,
            seed=0,
        )


def test_an_empty_budget_runs_the_default_number_of_trials(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    evaluate = evaluator("logistic_regression", X, y, folds_of(y), seed=0)
    result = tune("logistic_regression", evaluate, trials=None, seconds=None, seed=0)

    assert result.trials == DEFAULT_TRIALS
