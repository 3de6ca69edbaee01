"""CBPE: estimates against exact computations, the band's coverage, binning, the manifest reference."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bundle.manifest import Manifest
from bundle.performance_estimate import (
    METRICS,
    ScoreBins,
    estimate_performance,
    reference_figures,
)
from bundle.store import read_manifest
from tests.bundle.tiny_bundle import publish_tiny_bundle

THRESHOLD = 0.37


def calibrated_scores(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).beta(0.8, 2.2, n)


def exact_cbpe(scores: np.ndarray, threshold: float) -> dict[str, float]:
    """CBPE on every score: each counts as p of a positive and 1 - p of a negative."""
    weights = np.concatenate([scores, 1 - scores])
    labels = np.concatenate([np.ones(scores.size), np.zeros(scores.size)])
    flagged = scores >= threshold
    true_pos = scores[flagged].sum()
    return {
        "roc_auc": roc_auc_score(labels, np.concatenate([scores, scores]), sample_weight=weights),
        "precision": true_pos / flagged.sum(),
        "recall": true_pos / scores.sum(),
        "f1": 2 * true_pos / (flagged.sum() + scores.sum()),
    }


@pytest.mark.parametrize("n", [300, 20_000])
def test_binned_estimate_matches_the_exact_one(n):
    scores = calibrated_scores(n, seed=n)
    estimate = estimate_performance(ScoreBins.for_threshold(THRESHOLD).summarise(scores))
    exact = exact_cbpe(scores, THRESHOLD)
    assert estimate.roc_auc.value == pytest.approx(exact["roc_auc"], abs=1e-3)
    for name in ("precision", "recall", "f1"):  # the threshold is a bin edge: exact up to the sums' rounding
        assert getattr(estimate, name).value == pytest.approx(exact[name], abs=1e-6)
    assert estimate.predictions == n
    assert estimate.expected_churn_rate == pytest.approx(scores.mean(), abs=1e-6)


def test_estimate_tracks_realized_metrics_on_calibrated_labels():
    rng = np.random.default_rng(3)
    scores = calibrated_scores(50_000, seed=3)
    labels = rng.random(scores.size) < scores
    estimate = estimate_performance(ScoreBins.for_threshold(THRESHOLD).summarise(scores))
    assert estimate.roc_auc.value == pytest.approx(roc_auc_score(labels, scores), abs=0.01)
    assert estimate.precision.value == pytest.approx(labels[scores >= THRESHOLD].mean(), abs=0.01)


def test_band_covers_the_realized_metric_about_as_often_as_stated():
    rng = np.random.default_rng(11)
    scores = calibrated_scores(2_000, seed=11)
    estimate = estimate_performance(ScoreBins.for_threshold(THRESHOLD).summarise(scores), confidence=0.9)
    flagged = scores >= THRESHOLD
    inside = dict.fromkeys(METRICS, 0)
    draws = 300
    for _ in range(draws):
        labels = rng.random(scores.size) < scores
        true_pos = labels[flagged].sum()
        realized = {
            "roc_auc": roc_auc_score(labels, scores),
            "precision": true_pos / flagged.sum(),
            "recall": true_pos / labels.sum(),
            "f1": 2 * true_pos / (flagged.sum() + labels.sum()),
        }
        for name in METRICS:
            band = getattr(estimate, name)
            inside[name] += band.lower <= realized[name] <= band.upper
    for name in METRICS:
        assert 0.82 <= inside[name] / draws <= 0.97, (name, inside[name] / draws)


def test_band_narrows_as_the_window_grows_and_is_reproducible():
    bins = ScoreBins.for_threshold(THRESHOLD)
    small = estimate_performance(bins.summarise(calibrated_scores(500, seed=1)))
    large = estimate_performance(bins.summarise(calibrated_scores(50_000, seed=1)))
    assert (large.roc_auc.upper - large.roc_auc.lower) < (small.roc_auc.upper - small.roc_auc.lower) / 5
    again = estimate_performance(bins.summarise(calibrated_scores(500, seed=1)))
    assert again == small
    assert small.roc_auc.lower <= small.roc_auc.value <= small.roc_auc.upper


def test_window_columns_add_up_like_the_scores_they_count():
    bins = ScoreBins.for_threshold(THRESHOLD)
    first, second = calibrated_scores(400, seed=5), calibrated_scores(700, seed=6)
    summed = bins.window(bins.columns(first) + bins.columns(second))
    together = bins.summarise(np.concatenate([first, second]))
    np.testing.assert_allclose(summed.counts, together.counts)
    np.testing.assert_allclose(summed.sums, together.sums)


def test_threshold_is_a_bin_edge_so_flagged_bins_hold_exactly_the_flagged_scores():
    bins = ScoreBins.for_threshold(0.4321)
    scores = np.array([0.0, 0.4320999, 0.4321, 0.9, 1.0])
    window = bins.summarise(scores)
    assert window.counts[window.flagged].sum() == 3


def test_empty_window_and_undefined_metrics_are_none():
    bins = ScoreBins.for_threshold(0.99)
    empty = estimate_performance(bins.summarise(np.array([])))
    assert empty.predictions == 0 and empty.roc_auc.value is None
    nothing_flagged = estimate_performance(bins.summarise(np.array([0.1, 0.2, 0.3])))
    assert nothing_flagged.precision.value is None
    assert nothing_flagged.recall.value == 0.0
    assert nothing_flagged.roc_auc.value is not None


def test_reference_figures_hold_the_estimate_beside_the_realized_figures():
    rng = np.random.default_rng(8)
    scores = calibrated_scores(3_000, seed=8)
    labels = rng.random(scores.size) < scores
    figures = reference_figures(scores, labels, THRESHOLD)
    assert figures["realized"]["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert figures["estimated"]["roc_auc"] == pytest.approx(figures["realized"]["roc_auc"], abs=0.03)
    assert figures["threshold"] == THRESHOLD
    json.dumps(figures)  # stored in the manifest as plain JSON


def test_manifest_round_trips_the_reference_and_reads_old_manifests_without_it(tmp_path):
    published = publish_tiny_bundle(tmp_path)
    data = json.loads((published / "manifest.json").read_text())
    assert "performance_reference" in data
    old = {key: value for key, value in data.items() if key != "performance_reference"}
    assert Manifest.from_dict(old).performance_reference == {}
    figures = {"estimated": {"roc_auc": 0.8}, "realized": {"roc_auc": 0.81}, "threshold": 0.4}
    manifest = read_manifest(published)
    manifest.performance_reference = figures
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))).performance_reference == figures
