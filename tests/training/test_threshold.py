"""The decision threshold is the validation optimum of its strategy, and degenerate inputs are handled."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from training.threshold import choose_threshold, threshold_curve


def scored_sample(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    p = np.clip(0.3 * y + rng.beta(2, 5, n), 0, 1).round(3)  # rounding creates tied scores
    return y, p


def f1(y: np.ndarray, flagged: np.ndarray) -> float:
    """F1 straight from its definition (0 when nothing is flagged and nobody churned)."""
    tp = np.sum(flagged & (y == 1))
    denominator = np.sum(flagged) + np.sum(y == 1)
    return float(2 * tp / denominator) if denominator else 0.0


def brute_force_best(y: np.ndarray, p: np.ndarray, objective) -> float:
    """Best objective over every threshold that changes who is flagged, plus a fine grid and 'flag nobody'."""
    candidates = np.r_[np.unique(p), np.linspace(0, 1, 1001), 1.5]
    return max(objective((p >= t).astype(int)) for t in candidates)


def profit(y: np.ndarray, flagged: np.ndarray, cost: float, value: float, acceptance: float = 1.0) -> float:
    return float(acceptance * value * np.sum(flagged & (y == 1)) - cost * np.sum(flagged))


def test_max_f1_equals_brute_force_and_the_threshold_reproduces_it() -> None:
    y, p = scored_sample()
    result = choose_threshold(y, p, strategy="max_f1")
    best = brute_force_best(y, p, lambda flagged: f1(y, flagged.astype(bool)))
    assert result["f1"] == pytest.approx(best)
    assert f1_score(y, (p >= result["threshold"]).astype(int)) == pytest.approx(result["f1"])
    flagged = p >= result["threshold"]
    assert result["precision"] == pytest.approx(y[flagged].mean())
    assert result["recall"] == pytest.approx(flagged[y == 1].mean())
    assert result["strategy"] == "max_f1" and result["offer_cost"] is None and "expected_profit" not in result


def test_max_profit_equals_brute_force() -> None:
    y, p = scored_sample(seed=1)
    result = choose_threshold(y, p, strategy="max_profit", offer_cost=10.0, saved_value=80.0, acceptance_rate=0.5)
    best = brute_force_best(y, p, lambda flagged: profit(y, flagged.astype(bool), 10.0, 80.0, 0.5))
    assert result["expected_profit"] == pytest.approx(best)
    assert profit(y, p >= result["threshold"], 10.0, 80.0, 0.5) == pytest.approx(best)
    assert result["expected_profit_per_customer"] == pytest.approx(best / y.size)
    assert (result["offer_cost"], result["saved_value"], result["acceptance_rate"]) == (10.0, 80.0, 0.5)


def test_costlier_offers_raise_the_threshold_and_valuable_customers_lower_it() -> None:
    y, p = scored_sample(seed=2)
    by_cost = [
        choose_threshold(y, p, strategy="max_profit", offer_cost=cost, saved_value=100.0)["threshold"]
        for cost in (5.0, 20.0, 40.0, 60.0)
    ]
    by_value = [
        choose_threshold(y, p, strategy="max_profit", offer_cost=20.0, saved_value=value)["threshold"]
        for value in (30.0, 60.0, 120.0, 400.0)
    ]
    assert by_cost == sorted(by_cost) and by_cost[0] < by_cost[-1]
    assert by_value == sorted(by_value, reverse=True) and by_value[0] > by_value[-1]


def test_free_offers_reach_every_churner_and_unprofitable_offers_reach_nobody() -> None:
    y, p = scored_sample(seed=3)
    free = choose_threshold(y, p, strategy="max_profit", offer_cost=0.0, saved_value=50.0)
    assert free["recall"] == 1.0
    hopeless = choose_threshold(y, p, strategy="max_profit", offer_cost=60.0, saved_value=50.0)
    assert hopeless["threshold"] > p.max()
    assert hopeless["expected_profit"] == 0.0 and hopeless["flagged_rate"] == 0.0


@pytest.mark.parametrize(
    ("offer_cost", "saved_value"),
    [(None, 100.0), (10.0, None), (None, None)],
)
def test_max_profit_requires_cost_and_value(offer_cost: float | None, saved_value: float | None) -> None:
    y, p = scored_sample()
    with pytest.raises(ValueError, match=r"offer_cost.*saved_value"):
        choose_threshold(y, p, strategy="max_profit", offer_cost=offer_cost, saved_value=saved_value)


def test_unknown_strategy_and_bad_parameters_are_rejected() -> None:
    y, p = scored_sample()
    with pytest.raises(ValueError, match="unknown threshold strategy"):
        choose_threshold(y, p, strategy="max_accuracy")
    with pytest.raises(ValueError, match="acceptance_rate"):
        choose_threshold(y, p, strategy="max_profit", offer_cost=1.0, saved_value=2.0, acceptance_rate=1.5)


def test_single_class_and_constant_scores_still_give_a_usable_threshold() -> None:
    p = np.linspace(0.1, 0.9, 50)
    only_stayers = choose_threshold(np.zeros(50, dtype=int), p)
    assert only_stayers["threshold"] > p.max()  # F1 cannot improve by flagging: nobody is flagged
    assert "only non-churners" in only_stayers["note"]
    only_churners = choose_threshold(np.ones(50, dtype=int), p)
    assert only_churners["threshold"] <= p.min() and only_churners["f1"] == 1.0
    y = np.r_[np.ones(10, dtype=int), np.zeros(40, dtype=int)]
    constant = choose_threshold(y, np.full(50, 0.3))
    assert constant["threshold"] <= 0.3 and constant["recall"] == 1.0
    assert "same" in constant["note"]


def test_threshold_curve_agrees_with_direct_counts() -> None:
    y, p = scored_sample(seed=4)
    curve = threshold_curve(y, p, offer_cost=5.0, saved_value=40.0, points=21)
    for index, t in enumerate(curve["threshold"]):
        flagged = p >= t
        assert curve["recall"][index] == pytest.approx(flagged[y == 1].mean())
        assert curve["f1"][index] == pytest.approx(f1_score(y, flagged.astype(int), zero_division=0))
        assert curve["expected_profit"][index] == pytest.approx(profit(y, flagged, 5.0, 40.0))
