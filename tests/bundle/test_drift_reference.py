"""Frozen drift bins: built once from training values, applied identically to live values."""

import numpy as np

from bundle.drift_reference import (
    MISSING_BIN,
    UNSEEN_BIN,
    DriftReference,
    categorical_reference,
    numeric_reference,
)


def test_numeric_bins_have_overflow_and_missing():
    values = np.arange(100, dtype=float)
    values[:5] = np.nan
    reference = numeric_reference("tenure", values, n_bins=4)
    assert reference.n_bins == len(reference.edges) + 2
    assert sum(reference.proportions) == np.float64(1.0) or abs(sum(reference.proportions) - 1) < 1e-12
    assert reference.proportions[-1] == 0.05  # the missing bin
    low, high, missing = reference.bin_index([-1e6, 1e6, None])
    assert low == 0 and high == reference.n_bins - 2 and missing == reference.n_bins - 1
    assert reference.bin_labels()[-1] == MISSING_BIN


def test_categorical_bins_have_unseen_and_missing():
    values = ["a"] * 60 + ["b"] * 30 + [None] * 10
    reference = categorical_reference("plan", values)
    assert reference.categories == ["a", "b"]
    assert reference.proportions == [0.6, 0.3, 0.0, 0.1]
    assert list(reference.bin_index(["b", "zzz", None])) == [1, 2, 3]
    assert reference.bin_labels()[2] == UNSEEN_BIN


def test_booleans_bin_the_same_whether_given_as_bool_or_text():
    reference = categorical_reference("partner", [True, False, True, None])
    assert list(reference.bin_index([True, "True", False])) == list(reference.bin_index(["True", True, "False"]))


def test_reference_round_trips():
    reference = DriftReference(
        features=[numeric_reference("x", np.linspace(0, 1, 50))],
        score=numeric_reference("score", np.linspace(0, 1, 50), kind="score"),
    )
    restored = DriftReference.from_dict(reference.to_dict())
    assert restored.features[0].edges == reference.features[0].edges
    assert restored.score.kind == "score"
