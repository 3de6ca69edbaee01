"""Each model family trains, beats chance clearly, saves an artifact serving can load, and is reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bundle.drift_reference import DriftReference, numeric_reference
from bundle.features import FeatureSchema, fit_feature
from bundle.manifest import Manifest
from bundle.scoring import load_raw_model
from training.candidates import (
    BUDGET_SHARES,
    DEFAULT_TOTAL_SECONDS,
    DEFAULT_TRIAL_CAPS,
    FAMILIES,
    Budget,
    default_budget,
    fit_with_params,
    predict_raw,
    save_artifact,
    screen,
    tune_family,
)
from training.crossval import MAX_TREES
from training.split import cross_validation_folds
from training.tuning import DEFAULT_PARAMS

N_FEATURES = 6


def planted_signal(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardised features where churn depends on three of them (one through an interaction)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, N_FEATURES))
    X[:, 5] = rng.integers(0, 2, size=n_rows)  # a one-hot-like column, as the encoder produces
    logit = 1.6 * X[:, 0] - 1.2 * X[:, 1] + 0.8 * X[:, 2] * X[:, 5] - 1.0
    y = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return X, y


@pytest.fixture(scope="module")
def splits() -> dict[str, np.ndarray]:
    X, y = planted_signal(400, seed=7)
    return {"X_train": X[:300], "y_train": y[:300], "X_val": X[300:], "y_val": y[300:]}


def tiny_manifest(family: str, artifact: str, artifact_format: str) -> Manifest:
    rng = np.random.default_rng(0)
    features = [fit_feature(f"x{i}", "numeric", list(rng.normal(size=20))) for i in range(N_FEATURES)]
    return Manifest(
        version="test",
        created_at="2026-01-01T00:00:00+00:00",
        model_family=family,
        artifact=artifact,
        artifact_format=artifact_format,
        schema=FeatureSchema(features=features, target="churn", positive_label=1),
        drift_reference=DriftReference(features=[], score=numeric_reference("score", np.linspace(0, 1, 50))),
        threshold=0.5,
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_tuned_candidate_beats_chance_out_of_fold(family: str, splits: dict[str, np.ndarray]) -> None:
    # Two folds keep the slower families quick; the default plus one sampled trial exercise the search.
    X, y = splits["X_train"], splits["y_train"]
    folds = cross_validation_folds(y, seed=0, n_folds=2)
    result = tune_family(family, X, y, folds, budget=Budget(trials=2), seed=0)

    assert result.family == family
    assert result.trials == 2
    oof = result.cross_validated.oof
    assert oof.shape == (folds.repeats, len(y))
    assert np.all((oof >= 0) & (oof <= 1))
    assert roc_auc_score(y, oof[0]) > 0.7
    assert 0.7 < result.cv_roc_auc <= 1.0
    assert len(result.cross_validated.fold_roc_auc) == len(folds.splits)
    assert json.loads(json.dumps(result.params)) == result.params
    assert set(result.params) == set(DEFAULT_PARAMS[family])


@pytest.mark.parametrize("family", ["xgboost", "lightgbm"])
def test_boosted_trees_choose_their_tree_count_inside_the_folds(family: str, splits: dict[str, np.ndarray]) -> None:
    X, y = splits["X_train"], splits["y_train"]
    folds = cross_validation_folds(y, seed=0)

    screened = screen(family, X, y, folds, seed=0)
    refit = fit_with_params(family, screened.params, X, y, seed=0)

    assert 1 <= screened.params["n_estimators"] < MAX_TREES
    assert refit.n_estimators == screened.params["n_estimators"]
    # The out-of-fold scores come from models that never saw the rows they score.
    assert screened.roc_auc == pytest.approx(np.mean(screened.fold_roc_auc))


def test_tuning_seeds_the_search_with_the_screened_default(splits: dict[str, np.ndarray]) -> None:
    X, y = splits["X_train"], splits["y_train"]
    folds = cross_validation_folds(y, seed=0, n_folds=3)
    screened = screen("logistic_regression", X, y, folds, seed=0)

    tuned = tune_family("logistic_regression", X, y, folds, budget=Budget(trials=3), seed=0, first=screened)

    assert tuned.default_cv_roc_auc == screened.roc_auc
    assert tuned.cv_roc_auc >= screened.roc_auc


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("family", FAMILIES)
def test_saved_artifact_scores_like_predict_raw_when_loaded_by_serving(
    family: str, splits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    estimator = fit_with_params(family, {}, splits["X_train"], splits["y_train"], seed=0)
    expected = predict_raw(family, estimator, splits["X_val"])

    artifact, artifact_format = save_artifact(family, estimator, tmp_path)
    loaded = load_raw_model(tmp_path, tiny_manifest(family, artifact, artifact_format))

    assert (tmp_path / artifact).is_file()
    assert (artifact, artifact_format) == (
        ("model.pt", "torchscript") if family == "mlp" else ("model.joblib", "joblib")
    )
    np.testing.assert_allclose(loaded.raw_proba(splits["X_val"]), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_gives_identical_predictions(family: str, splits: dict[str, np.ndarray]) -> None:
    first = fit_with_params(family, {}, splits["X_train"], splits["y_train"], seed=3)
    second = fit_with_params(family, {}, splits["X_train"], splits["y_train"], seed=3)

    np.testing.assert_array_equal(
        predict_raw(family, first, splits["X_val"]), predict_raw(family, second, splits["X_val"])
    )


def test_tuned_run_is_reproducible_with_a_trial_budget(splits: dict[str, np.ndarray]) -> None:
    X, y = splits["X_train"], splits["y_train"]
    folds = cross_validation_folds(y, seed=11, n_folds=3)
    runs = [tune_family("lightgbm", X, y, folds, budget=Budget(trials=4), seed=11) for _ in range(2)]

    assert runs[0].params == runs[1].params
    assert runs[0].cv_roc_auc == runs[1].cv_roc_auc
    np.testing.assert_array_equal(runs[0].cross_validated.oof, runs[1].cross_validated.oof)


def test_explicit_parameters_override_the_defaults(splits: dict[str, np.ndarray]) -> None:
    estimator = fit_with_params(
        "xgboost", {"n_estimators": 60, "max_depth": 2}, splits["X_train"], splits["y_train"], seed=0
    )

    assert estimator.n_estimators == 60
    assert estimator.max_depth == 2
    assert estimator.learning_rate == DEFAULT_PARAMS["xgboost"]["learning_rate"]


def test_class_balancing_weights_positives_by_the_imbalance_ratio(splits: dict[str, np.ndarray]) -> None:
    y = splits["y_train"]
    estimator = fit_with_params("lightgbm", {"balance_classes": True}, splits["X_train"], y, seed=0)

    assert estimator.scale_pos_weight == pytest.approx((y == 0).sum() / (y == 1).sum())


def test_unknown_family_is_rejected(splits: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="unknown model family 'svm'"):
        fit_with_params("svm", {}, splits["X_train"], splits["y_train"], seed=0)


def test_default_budget_shares_the_total_time_and_caps_trials() -> None:
    budgets = default_budget(None, None)

    assert set(budgets) == set(FAMILIES)
    assert sum(b.seconds for b in budgets.values()) == pytest.approx(DEFAULT_TOTAL_SECONDS)
    assert {family: b.trials for family, b in budgets.items()} == DEFAULT_TRIAL_CAPS
    # The cheap linear model needs the least time, the boosted trees the most.
    assert budgets["logistic_regression"].seconds == min(b.seconds for b in budgets.values())
    assert budgets["xgboost"].seconds == max(b.seconds for b in budgets.values())


def test_default_budget_follows_an_explicit_total_and_trial_count() -> None:
    budgets = default_budget(50.0, 7)

    assert sum(b.seconds for b in budgets.values()) == pytest.approx(50.0)
    assert all(b.trials == 7 for b in budgets.values())
    assert budgets["lightgbm"].seconds == pytest.approx(50.0 * BUDGET_SHARES["lightgbm"])


def test_default_budget_with_only_trials_has_no_time_limit() -> None:
    budgets = default_budget(None, 5)

    assert all(b == Budget(trials=5, seconds=None) for b in budgets.values())
