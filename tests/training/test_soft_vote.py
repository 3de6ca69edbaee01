"""The soft-vote ensemble: member choice, log-odds averaging, honest cross-validation, saving and serving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bundle.manifest import BundleError, Manifest
from bundle.scoring import EnsembleModel, SoftVote, load_raw_model, wrap_estimator
from tests.training.test_candidates import planted_signal, tiny_manifest
from training.candidates import (
    SOFT_VOTE,
    CandidateResult,
    build_soft_vote,
    fit_with_params,
    predict_raw,
    save_artifact,
)
from training.tuning import DEFAULT_PARAMS


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


@pytest.fixture(scope="module")
def splits() -> dict[str, np.ndarray]:
    X, y = planted_signal(400, seed=11)
    return {"X_train": X[:300], "y_train": y[:300], "X_val": X[300:], "y_val": y[300:]}


def fitted_result(
    family: str, splits: dict[str, np.ndarray], y_fit: np.ndarray | None = None, **overrides: Any
) -> CandidateResult:
    """A family fitted with its defaults (no search: the ensemble only reuses what was trained)."""
    y_train = splits["y_train"] if y_fit is None else y_fit
    params = {**DEFAULT_PARAMS[family], **overrides}
    estimator = fit_with_params(family, params, splits["X_train"], y_train, seed=0)
    return CandidateResult(
        family=family,
        estimator=estimator,
        params=params,
        cv_roc_auc=0.8,
        cv_roc_auc_std=0.01,
        val_raw=predict_raw(family, estimator, splits["X_val"]),
        fit_seconds=0.1,
        trials=1,
    )


@pytest.fixture(scope="module")
def members(splits: dict[str, np.ndarray]) -> list[CandidateResult]:
    return [fitted_result("logistic_regression", splits), fitted_result("lightgbm", splits)]


@pytest.fixture(scope="module")
def ensemble(members: list[CandidateResult], splits: dict[str, np.ndarray]) -> CandidateResult:
    result = build_soft_vote(members, **splits, seed=0)
    assert result is not None
    return result


def test_raw_proba_is_the_weighted_mean_of_the_members(
    members: list[CandidateResult], splits: dict[str, np.ndarray]
) -> None:
    linear, boosted = members
    vote = SoftVote(members=[(linear.family, linear.estimator, 1.0), (boosted.family, boosted.estimator, 3.0)])
    # Weights are normalised, so 1 : 3 means a quarter and three quarters of the log-odds.
    expected = sigmoid(0.25 * logit(linear.val_raw) + 0.75 * logit(boosted.val_raw))

    np.testing.assert_allclose(wrap_estimator(SOFT_VOTE, vote).raw_proba(splits["X_val"]), expected, rtol=1e-10)


def test_built_ensemble_reuses_the_fitted_members_without_refitting(
    ensemble: CandidateResult, members: list[CandidateResult], splits: dict[str, np.ndarray]
) -> None:
    assert ensemble.family == SOFT_VOTE
    assert [(family, weight) for family, _, weight in ensemble.estimator.members] == [
        ("logistic_regression", 0.5),
        ("lightgbm", 0.5),
    ]
    saved_estimators = [estimator for _, estimator, _ in ensemble.estimator.members]
    assert all(saved is member.estimator for saved, member in zip(saved_estimators, members, strict=True))
    expected = sigmoid((logit(members[0].val_raw) + logit(members[1].val_raw)) / 2)
    np.testing.assert_allclose(ensemble.val_raw, expected, rtol=1e-10)


def test_ensemble_cross_validation_refits_members_and_beats_chance(ensemble: CandidateResult) -> None:
    # Reusing the fitted members would score training rows they saw; a refit per fold does not.
    assert 0.7 < ensemble.cv_roc_auc < 1.0
    assert ensemble.cv_roc_auc_std > 0.0
    assert ensemble.trials == 1


def test_params_are_json_and_name_every_member(ensemble: CandidateResult, members: list[CandidateResult]) -> None:
    assert json.loads(json.dumps(ensemble.params)) == ensemble.params
    assert ensemble.params == {
        "members": [{"family": m.family, "params": m.params, "weight": 0.5} for m in members],
    }


def test_fit_with_params_refits_the_same_ensemble(
    ensemble: CandidateResult, members: list[CandidateResult], splits: dict[str, np.ndarray]
) -> None:
    refitted = fit_with_params(SOFT_VOTE, ensemble.params, splits["X_train"], splits["y_train"], seed=0)

    assert isinstance(refitted, SoftVote)
    new_estimators = [estimator for _, estimator, _ in refitted.members]
    assert all(new is not member.estimator for new, member in zip(new_estimators, members, strict=True))
    np.testing.assert_allclose(predict_raw(SOFT_VOTE, refitted, splits["X_val"]), ensemble.val_raw, rtol=1e-9)


def test_saved_artifact_loads_as_serving_does(
    ensemble: CandidateResult, splits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    artifact, artifact_format = save_artifact(SOFT_VOTE, ensemble.estimator, tmp_path)
    manifest = Manifest.from_dict(json.loads(json.dumps(tiny_manifest(SOFT_VOTE, artifact, artifact_format).to_dict())))

    served = load_raw_model(tmp_path, manifest)

    assert (artifact, artifact_format) == ("model.joblib", "joblib")
    assert manifest.framework == "ensemble"
    assert isinstance(served, EnsembleModel)
    np.testing.assert_array_equal(served.raw_proba(splits["X_val"]), ensemble.val_raw)


def test_best_boosted_tree_on_validation_joins_the_linear_model(
    members: list[CandidateResult], splits: dict[str, np.ndarray]
) -> None:
    # XGBoost fitted on shuffled labels ranks validation rows at chance, so LightGBM must be chosen.
    shuffled = np.random.default_rng(0).permutation(splits["y_train"])
    # Few trees keep the distractors cheap; the forest is strong but is not a boosted tree.
    weak_xgboost = fitted_result("xgboost", splits, y_fit=shuffled, n_estimators=50)
    forest = fitted_result("random_forest", splits, n_estimators=20)

    result = build_soft_vote([weak_xgboost, forest, *members], **splits, seed=0)

    assert result is not None
    assert [member["family"] for member in result.params["members"]] == ["logistic_regression", "lightgbm"]


def _placeholder(family: str, splits: dict[str, np.ndarray]) -> CandidateResult:
    """A result whose estimator is never touched: the ensemble must decline before using it."""
    return CandidateResult(family, None, {}, 0.8, 0.01, np.linspace(0, 1, len(splits["y_val"])), 0.1, 1)


@pytest.mark.parametrize(
    "families",
    [
        [],
        ["logistic_regression"],
        ["logistic_regression", "mlp"],  # the MLP is TorchScript: it cannot be a member
        ["logistic_regression", "random_forest"],  # no boosted tree
        ["xgboost", "lightgbm", "random_forest"],  # no linear model
    ],
)
def test_no_ensemble_without_a_linear_model_and_a_boosted_tree(
    families: list[str], splits: dict[str, np.ndarray]
) -> None:
    results = [_placeholder(family, splits) for family in families]

    assert build_soft_vote(results, **splits, seed=0) is None


@pytest.mark.parametrize(
    ("artifact", "reason"),
    [
        ({"not": "a vote"}, "must hold a SoftVote"),
        (SoftVote(members=[("mlp", None, 1.0), ("lightgbm", None, 1.0)]), "cannot be a soft-vote member"),
    ],
)
def test_serving_rejects_an_artifact_that_is_not_a_valid_vote(artifact: Any, reason: str) -> None:
    with pytest.raises(BundleError, match=reason):
        wrap_estimator(SOFT_VOTE, artifact)


def test_serving_rejects_an_ensemble_without_usable_weights(members: list[CandidateResult]) -> None:
    linear, boosted = members
    vote = SoftVote(members=[(linear.family, linear.estimator, 0.0), (boosted.family, boosted.estimator, 0.0)])

    with pytest.raises(BundleError, match="weights"):
        wrap_estimator(SOFT_VOTE, vote)
