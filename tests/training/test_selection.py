"""Model selection out of fold: which families get tuned, the blend, the winner, and the soft vote it saves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bundle.manifest import BundleError, Manifest
from bundle.scoring import EnsembleModel, SoftVote, load_raw_model, wrap_estimator
from tests.training.test_candidates import planted_signal, tiny_manifest
from training import selection
from training.candidates import SOFT_VOTE, fit_with_params, predict_raw, save_artifact
from training.crossval import CrossValidated, fold_scores
from training.selection import (
    EQUAL_VOTE,
    LEADER_MARGIN,
    Candidate,
    best_blend,
    choose_winner,
    leaders,
    linear_and_tree_vote,
    select_model,
    standard_error,
)
from training.split import Folds, cross_validation_folds


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def candidate(family: str, oof: np.ndarray, y: np.ndarray, folds: Folds, params: Any = None) -> Candidate:
    scores = np.tile(oof, (folds.repeats, 1))
    cross_validated = CrossValidated(params or {}, fold_scores(y, scores, folds), scores)
    return Candidate(family, cross_validated, "tuned", trials=1, seconds=0.1)


@pytest.fixture(scope="module")
def signal() -> tuple[np.ndarray, np.ndarray, Folds]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 6000)
    return y, y + rng.normal(size=len(y)), cross_validation_folds(y, seed=0)


def test_only_families_near_the_best_default_are_tuned(signal: tuple[np.ndarray, np.ndarray, Folds]) -> None:
    y, truth, folds = signal
    rng = np.random.default_rng(1)
    screened = [
        candidate(family, sigmoid(truth + rng.normal(scale=noise, size=len(y))), y, folds)
        for family, noise in (("logistic_regression", 0.3), ("xgboost", 0.35), ("mlp", 3.0))
    ]

    chosen = leaders(screened)

    best = max(c.cv_roc_auc for c in screened)
    assert chosen[0] == max(screened, key=lambda c: c.cv_roc_auc).family
    assert set(chosen) == {c.family for c in screened if c.cv_roc_auc >= best - LEADER_MARGIN}
    assert "mlp" not in chosen


def test_a_blend_of_models_with_different_errors_wins_out_of_fold(signal: tuple[np.ndarray, np.ndarray, Folds]) -> None:
    y, truth, folds = signal
    rng = np.random.default_rng(2)
    linear = candidate("logistic_regression", sigmoid(truth + rng.normal(size=len(y))), y, folds, {"C": 1.0})
    boosted = candidate("lightgbm", sigmoid(truth + rng.normal(size=len(y))), y, folds, {"num_leaves": 4})

    blend = best_blend([linear, boosted], y, folds)

    assert blend is not None and blend.family == SOFT_VOTE
    assert blend.cv_roc_auc > max(linear.cv_roc_auc, boosted.cv_roc_auc)
    members = blend.params["members"]
    assert [m["family"] for m in members] == ["logistic_regression", "lightgbm"] or [m["family"] for m in members] == [
        "lightgbm",
        "logistic_regression",
    ]
    assert sum(m["weight"] for m in members) == pytest.approx(1.0)
    assert json.loads(json.dumps(blend.params)) == blend.params


def test_the_equal_vote_of_linear_and_tree_models_wins_when_the_folds_cannot_tell_it_from_the_best(
    signal: tuple[np.ndarray, np.ndarray, Folds],
) -> None:
    y, truth, folds = signal
    rng = np.random.default_rng(3)
    linear = candidate("logistic_regression", sigmoid(truth + rng.normal(size=len(y))), y, folds, {"C": 1.0})
    forest = candidate("random_forest", sigmoid(truth + 1.5 * rng.normal(size=len(y))), y, folds)
    boosted = candidate("xgboost", sigmoid(truth + 1.02 * rng.normal(size=len(y))), y, folds, {"max_depth": 2})

    vote = linear_and_tree_vote([linear, forest, boosted], y, folds)
    assert vote is not None and vote.family == SOFT_VOTE and vote.stage == EQUAL_VOTE
    assert [(m["family"], m["weight"]) for m in vote.params["members"]] == [
        ("logistic_regression", 0.5),
        ("xgboost", 0.5),
    ]
    # A candidate ahead of the vote by less than one standard error of its own mean.
    ahead = CrossValidated(
        {},
        [score + 0.2 * standard_error(vote) for score in vote.cross_validated.fold_roc_auc],
        vote.cross_validated.oof,
    )
    slightly_better = Candidate("mlp", ahead, "tuned", trials=1, seconds=0.1)

    winner, reason = choose_winner([linear, forest, boosted, slightly_better, vote], vote)

    assert slightly_better.cv_roc_auc > vote.cv_roc_auc
    assert winner is vote and "within one standard error" in reason


def test_a_candidate_clearly_ahead_of_the_equal_vote_wins(signal: tuple[np.ndarray, np.ndarray, Folds]) -> None:
    y, truth, folds = signal
    rng = np.random.default_rng(4)
    weak_linear = candidate("logistic_regression", sigmoid(rng.normal(size=len(y))), y, folds)
    boosted = candidate("lightgbm", sigmoid(truth + 0.5 * rng.normal(size=len(y))), y, folds)

    vote = linear_and_tree_vote([weak_linear, boosted], y, folds)
    winner, reason = choose_winner([weak_linear, boosted, vote], vote)

    assert vote is not None and vote.cv_roc_auc < boosted.cv_roc_auc - standard_error(boosted)
    assert winner is boosted and "highest cross-validated ROC-AUC" in reason


def test_no_equal_vote_without_both_a_linear_and_a_tree_model(signal: tuple[np.ndarray, np.ndarray, Folds]) -> None:
    y, truth, folds = signal
    trees = [candidate("xgboost", sigmoid(truth), y, folds), candidate("lightgbm", sigmoid(truth), y, folds)]

    assert linear_and_tree_vote(trees, y, folds) is None
    assert choose_winner(trees, None)[0] is trees[0]


def test_no_blend_when_it_does_not_beat_the_best_single_model(signal: tuple[np.ndarray, np.ndarray, Folds]) -> None:
    y, truth, folds = signal
    same = sigmoid(truth)
    twins = [candidate("logistic_regression", same, y, folds), candidate("xgboost", same, y, folds)]

    assert best_blend(twins, y, folds) is None


def test_the_mlp_never_joins_a_blend(signal: tuple[np.ndarray, np.ndarray, Folds]) -> None:
    y, truth, folds = signal
    rng = np.random.default_rng(3)
    pool = [candidate(f, sigmoid(truth + rng.normal(size=len(y))), y, folds) for f in ("logistic_regression", "mlp")]

    assert best_blend(pool, y, folds) is None


def test_blended_scores_are_what_the_served_soft_vote_computes(tmp_path: Path) -> None:
    X, y = planted_signal(300, seed=11)
    params = {
        "members": [
            {"family": "logistic_regression", "params": {}, "weight": 0.3},
            {"family": "lightgbm", "params": {"n_estimators": 50}, "weight": 0.7},
        ]
    }
    vote = fit_with_params(SOFT_VOTE, params, X, y, seed=0)
    member_scores = [predict_raw(family, estimator, X) for family, estimator, _ in vote.members]
    log_odds = [np.log(scores / (1 - scores)) for scores in member_scores]
    expected = sigmoid(0.3 * log_odds[0] + 0.7 * log_odds[1])

    artifact, artifact_format = save_artifact(SOFT_VOTE, vote, tmp_path)
    manifest = Manifest.from_dict(json.loads(json.dumps(tiny_manifest(SOFT_VOTE, artifact, artifact_format).to_dict())))
    served = load_raw_model(tmp_path, manifest)

    assert isinstance(vote, SoftVote) and isinstance(served, EnsembleModel)
    np.testing.assert_allclose(served.raw_proba(X), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(predict_raw(SOFT_VOTE, vote, X), expected, rtol=0, atol=1e-9)


def test_select_model_screens_tunes_and_picks_the_best_cross_validated_candidate() -> None:
    X, y = planted_signal(400, seed=7)
    folds = cross_validation_folds(y, seed=0, n_folds=3)
    messages: list[str] = []

    trials = {"logistic_regression": 2, "lightgbm": 2}
    families = ("logistic_regression", "lightgbm")
    chosen = select_model(families, X, y, folds, seed=0, total_seconds=None, trials=trials, say=messages.append)

    assert chosen.winner is not None
    best = max(chosen.candidates, key=lambda c: c.cv_roc_auc)
    assert chosen.winner is best or (
        chosen.winner.stage == EQUAL_VOTE and chosen.winner.cv_roc_auc >= best.cv_roc_auc - standard_error(best)
    )
    assert {row["family"] for row in chosen.leaderboard} >= {"logistic_regression", "lightgbm"}
    for row in chosen.leaderboard:
        assert row["stage"] in ("screened", "tuned", "blended", EQUAL_VOTE)
        assert row["cv_fits"] == len(folds.splits)
    assert "cross-validated ROC-AUC" in chosen.reason
    assert roc_auc_score(y, chosen.winner.cross_validated.oof[0]) > 0.7
    assert any(message.startswith("logistic_regression: default configuration") for message in messages)


def test_a_failing_family_is_recorded_and_the_others_continue(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = planted_signal(300, seed=7)
    folds = cross_validation_folds(y, seed=0, n_folds=3)
    real_screen = selection.screen

    def flaky(family: str, *args: Any, **kwargs: Any) -> CrossValidated:
        if family == "xgboost":
            raise RuntimeError("library crashed")
        return real_screen(family, *args, **kwargs)

    monkeypatch.setattr(selection, "screen", flaky)
    trials = {"logistic_regression": 1, "xgboost": 1}
    families = ("xgboost", "logistic_regression")
    chosen = select_model(families, X, y, folds, seed=0, total_seconds=None, trials=trials, say=lambda _: None)

    assert chosen.winner is not None and chosen.winner.family == "logistic_regression"
    failed = [row for row in chosen.leaderboard if row["status"] == "failed"]
    assert failed == [{"family": "xgboost", "status": "failed", "error": "RuntimeError: library crashed"}]


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
