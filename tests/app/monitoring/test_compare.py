"""Champion against challenger: figures match scikit-learn, the bootstrap is paired and seeded, and the verdict
has the right sign, or says how many more labels it needs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score

from app.monitoring.compare import (
    BETTER,
    MIN_LABELLED,
    MIN_PER_CLASS,
    NO_CLEAR_DIFFERENCE,
    NOT_ENOUGH_LABELS,
    WORSE,
    ModelScores,
    ProfitTerms,
    RankedScores,
    compare_models,
    draw_counts,
    labels_needed,
)


def customers(n: int, seed: int, churn_rate: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes and a hidden churn propensity."""
    rng = np.random.default_rng(seed)
    propensity = rng.normal(size=n)
    y = (propensity + rng.normal(scale=0.8, size=n) > np.quantile(propensity, 1 - churn_rate)).astype(int)
    return y, propensity


def scores(propensity: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """A model that sees the propensity through ``noise``: more noise, a worse model."""
    rng = np.random.default_rng(seed)
    return 1.0 / (1.0 + np.exp(-(propensity + rng.normal(scale=noise, size=propensity.size))))


def test_point_figures_match_scikit_learn_on_the_labelled_rows() -> None:
    y, propensity = customers(1500, seed=1)
    champion, challenger = scores(propensity, 1.5, seed=2), scores(propensity, 0.5, seed=3)
    outcomes = y.astype(object)
    outcomes[::3] = None  # a third not known yet
    labelled = np.arange(y.size) % 3 != 0
    terms = ProfitTerms(saved_value=300.0, offer_cost=20.0, acceptance_rate=0.5)
    result = compare_models(ModelScores(champion, 0.4), ModelScores(challenger, 0.6), outcomes, profit=terms)
    assert (result.rows, result.labelled, result.churners) == (1500, int(labelled.sum()), int(y[labelled].sum()))
    for p, threshold, side in ((champion, 0.4, "champion"), (challenger, 0.6, "challenger")):
        yl, pl, dl = y[labelled], p[labelled], p[labelled] >= threshold
        expected = {
            "roc_auc": roc_auc_score(yl, pl),
            "pr_auc": average_precision_score(yl, pl),
            "precision": precision_score(yl, dl),
            "recall": recall_score(yl, dl),
            "expected_profit": 0.5 * 300.0 * np.sum(dl & (yl == 1)) - 20.0 * np.sum(dl),
        }
        for name, value in expected.items():
            assert getattr(result.metrics[name], side) == pytest.approx(value, abs=1e-12), name
    assert result.agreement == pytest.approx(np.mean((champion >= 0.4) == (challenger >= 0.6)))
    assert result.mean_score_shift == pytest.approx(np.mean(challenger - champion))
    for figure in result.metrics.values():
        assert figure.difference == pytest.approx(figure.challenger - figure.champion)
        assert figure.ci_low <= figure.difference <= figure.ci_high


def test_each_bootstrap_draw_scores_like_scikit_learn_with_the_draw_counts_as_weights() -> None:
    y, propensity = customers(300, seed=4)
    p = np.round(scores(propensity, 1.0, seed=5), 2)  # rounded: many tied scores
    flagged = p >= 0.55
    counts = draw_counts(np.random.default_rng(0), y.size, 25)
    terms = ProfitTerms(saved_value=100.0, offer_cost=10.0)
    figures = RankedScores.of(y.astype(bool), p, flagged).weighted_figures(counts, terms)
    for row, weights in enumerate(counts):
        assert figures["roc_auc"][row] == pytest.approx(roc_auc_score(y, p, sample_weight=weights), abs=1e-12)
        assert figures["pr_auc"][row] == pytest.approx(average_precision_score(y, p, sample_weight=weights), abs=1e-12)
        assert figures["precision"][row] == pytest.approx(precision_score(y, flagged, sample_weight=weights))
        assert figures["recall"][row] == pytest.approx(recall_score(y, flagged, sample_weight=weights))
        hits, contacted = np.sum(weights * (y == 1) * flagged), np.sum(weights * flagged)
        assert figures["expected_profit"][row] == pytest.approx(100.0 * hits - 10.0 * contacted)
    assert np.all(counts.sum(axis=1) == y.size)


def test_a_draw_without_churners_or_flags_gives_undefined_figures() -> None:
    y, p = np.array([True, False, False]), np.array([0.9, 0.2, 0.1])
    weights = np.array([[0.0, 2.0, 1.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    figures = RankedScores.of(y, p, p >= 0.95).weighted_figures(weights, None)
    assert np.isnan(figures["roc_auc"][0]) and np.isnan(figures["pr_auc"][0]) and np.isnan(figures["recall"][0])
    assert np.isnan(figures["precision"]).all() and figures["roc_auc"][1] == 1.0


def test_the_bootstrap_is_seeded() -> None:
    y, propensity = customers(600, seed=6)
    args = (ModelScores(scores(propensity, 1.0, 7), 0.5), ModelScores(scores(propensity, 0.9, 8), 0.5), y)
    first, again = compare_models(*args, seed=3), compare_models(*args, seed=3)
    other = compare_models(*args, seed=4)
    assert first.to_dict() == again.to_dict()
    assert first.metrics["roc_auc"].ci_low != other.metrics["roc_auc"].ci_low


@pytest.mark.parametrize(("champion_noise", "challenger_noise", "expected"), [(2.0, 0.3, BETTER), (0.3, 2.0, WORSE)])
def test_the_verdict_names_the_better_model(champion_noise, challenger_noise, expected) -> None:
    y, propensity = customers(2000, seed=9)
    result = compare_models(
        ModelScores(scores(propensity, champion_noise, 10), 0.5),
        ModelScores(scores(propensity, challenger_noise, 11), 0.5),
        y,
        resamples=400,
    )
    assert result.verdict == expected and result.labels_needed == 0
    assert expected in result.explanation


def test_the_same_model_twice_shows_no_clear_difference() -> None:
    y, propensity = customers(800, seed=12)
    model = ModelScores(scores(propensity, 1.0, 13), 0.5)
    result = compare_models(model, model, y, resamples=200)
    assert result.verdict == NO_CLEAR_DIFFERENCE and result.agreement == 1.0 and result.mean_score_shift == 0.0


def test_few_labels_say_how_many_more_are_needed() -> None:
    y, propensity = customers(1000, seed=14, churn_rate=0.1)
    outcomes = [None] * y.size
    for i in range(60):
        outcomes[i] = int(y[i])
    result = compare_models(
        ModelScores(scores(propensity, 2.0, 15), 0.5), ModelScores(scores(propensity, 0.2, 16), 0.5), outcomes
    )
    churners = int(y[:60].sum())
    assert result.verdict == NOT_ENOUGH_LABELS and result.labelled == 60
    assert result.labels_needed == labels_needed(60, churners) >= MIN_LABELLED - 60
    assert f"about {result.labels_needed} more labelled rows" in result.explanation
    assert result.agreement is not None and result.metrics["roc_auc"].champion is not None


def test_labels_needed_rule() -> None:
    assert labels_needed(MIN_LABELLED, MIN_PER_CLASS) == 0
    assert labels_needed(0, 0) >= MIN_LABELLED
    assert labels_needed(150, 50) == MIN_LABELLED - 150
    # 400 labelled with 10 churners: 20 more churners at a 2.6% rate means hundreds more labels.
    assert labels_needed(400, 10) == int(np.ceil(20 / (10.5 / 401)))


def test_no_outcome_yet_still_compares_decisions() -> None:
    champion, challenger = ModelScores([0.1, 0.7, 0.4], 0.5), ModelScores([0.2, 0.3, 0.6], 0.5)
    result = compare_models(champion, challenger, [None, float("nan"), None])
    assert result.labelled == 0 and result.metrics == {} and result.verdict == NOT_ENOUGH_LABELS
    assert result.agreement == pytest.approx(1 / 3) and result.mean_score_shift == pytest.approx(-0.1 / 3)


@pytest.mark.parametrize(
    ("champion", "challenger", "outcomes", "message"),
    [
        ([0.1, 0.2], [0.1], [0, 1], "row counts differ"),
        ([0.1, 1.2], [0.1, 0.2], [0, 1], "between 0 and 1"),
        ([0.1, float("nan")], [0.1, 0.2], [0, 1], "between 0 and 1"),
        ([0.1, "high"], [0.1, 0.2], [0, 1], "between 0 and 1"),
        ([0.1, 0.2], [0.1, 0.2], [0, 2], "outcomes must be 0, 1"),
        ([0.1, 0.2], [0.1, 0.2], [0, "yes"], "outcomes must be 0, 1"),
    ],
)
def test_bad_inputs_are_refused_with_the_reason(champion, challenger, outcomes, message) -> None:
    with pytest.raises(ValueError, match=message):
        compare_models(ModelScores(champion, 0.5), ModelScores(challenger, 0.5), outcomes)


def test_profit_verdict_needs_profit_terms() -> None:
    with pytest.raises(ValueError, match="expected_profit needs profit terms"):
        compare_models(ModelScores([0.1], 0.5), ModelScores([0.2], 0.5), [1], verdict_metric="expected_profit")
