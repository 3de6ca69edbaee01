"""Winner selection: validation decides unless its verdict is within its own noise."""

from types import SimpleNamespace

import numpy as np

from training.pipeline import leaderboard_entry, pick_winner


def _candidate(family: str, val_raw: np.ndarray, cv_auc: float) -> SimpleNamespace:
    return SimpleNamespace(
        family=family, val_raw=val_raw, cv_roc_auc=cv_auc, cv_roc_auc_std=0.01, fit_seconds=1.0, trials=1, params={}
    )


def _validation(seed: int = 0, n: int = 1000):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    signal = y + rng.normal(scale=1.0, size=n)
    return y, signal, rng


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def test_clear_validation_winner_wins_even_with_a_lower_cv_score():
    y, signal, rng = _validation()
    strong = _candidate("xgboost", _sigmoid(signal), cv_auc=0.70)
    weak = _candidate("logistic_regression", _sigmoid(signal + rng.normal(scale=3.0, size=len(y))), cv_auc=0.90)
    results = [weak, strong]
    winner, reason = pick_winner(results, [leaderboard_entry(r, y) for r in results], y, seed=0)
    assert winner is strong
    assert "more than the validation noise" in reason


def test_candidates_tied_on_validation_are_separated_by_cross_validation():
    y, signal, rng = _validation(1)
    noise = rng.normal(scale=0.02, size=len(y))
    first = _candidate("lightgbm", _sigmoid(signal), cv_auc=0.80)
    second = _candidate("soft_vote", _sigmoid(signal + noise), cv_auc=0.85)
    results = [first, second]
    winner, reason = pick_winner(results, [leaderboard_entry(r, y) for r in results], y, seed=0)
    assert winner is second
    assert "tied" in reason and "lightgbm" in reason


def test_winner_choice_is_reproducible_for_a_seed():
    y, signal, rng = _validation(2)
    results = [
        _candidate(f"family{i}", _sigmoid(signal + rng.normal(scale=0.3, size=len(y))), cv_auc=0.8 + i / 100)
        for i in range(3)
    ]
    board = [leaderboard_entry(r, y) for r in results]
    assert pick_winner(results, board, y, seed=5)[0] is pick_winner(results, board, y, seed=5)[0]
