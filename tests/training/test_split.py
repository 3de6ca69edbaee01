"""The stratified 70/15/15 split, its minimum sizes, and that nothing is learned from test rows."""

from __future__ import annotations

import numpy as np
import pytest

from training.cleaning import clean_table, drop_rows_without_target
from training.data import TrainingDataError
from training.pipeline import fit_schema
from training.roles import infer_feature_roles, infer_target, target_vector
from training.split import (
    REPEAT_BELOW_ROWS,
    SMALL_TABLE_REPEATS,
    cross_validation_folds,
    holdout_split,
    min_rows_per_class,
    search_sample,
)
from training.synthetic import generate_customers


def labels(n: int, positives: int) -> np.ndarray:
    y = np.zeros(n, dtype=np.int64)
    y[:positives] = 1
    return np.random.default_rng(0).permutation(y)


def test_sizes_stratification_and_no_overlap() -> None:
    y = labels(2000, 530)
    split = holdout_split(y, seed=42)
    assert split.sizes() == {"development": 1600, "test": 400}
    parts = [split.development, split.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(2000))
    for part in parts:
        assert abs(y[part].mean() - y.mean()) < 0.01


def test_same_seed_same_split_other_seed_differs() -> None:
    y = labels(1000, 250)
    first, again, other = holdout_split(y, 1), holdout_split(y, 1), holdout_split(y, 2)
    assert np.array_equal(first.test, again.test) and np.array_equal(first.development, again.development)
    assert not np.array_equal(first.test, other.test)


def test_smallest_splittable_table() -> None:
    needed = min_rows_per_class()
    y = labels(100, needed)
    split = holdout_split(y, seed=0)
    assert y[split.test].sum() >= 5 and (1 - y[split.test]).sum() >= 5


@pytest.mark.parametrize(
    ("n", "positives", "message"),
    [
        (60, 30, "too few rows to train: 60 usable rows, need at least 100"),
        (500, 20, "too few churned customers to keep a test split: 20, need at least 25"),
        (500, 480, "too few retained customers to keep a test split: 20, need at least 25"),
    ],
)
def test_too_small_to_split(n: int, positives: int, message: str) -> None:
    with pytest.raises(TrainingDataError, match=message):
        holdout_split(labels(n, positives), seed=0)


def test_small_tables_repeat_their_folds_and_large_ones_do_not() -> None:
    small, large = labels(REPEAT_BELOW_ROWS - 1, 800), labels(REPEAT_BELOW_ROWS, 800)

    small_folds, large_folds = cross_validation_folds(small, seed=0), cross_validation_folds(large, seed=0)

    assert small_folds.describe() == {"folds": 5, "repeats": SMALL_TABLE_REPEATS, "fits": 5 * SMALL_TABLE_REPEATS}
    assert large_folds.describe() == {"folds": 5, "repeats": 1, "fits": 5}
    for repeat in range(SMALL_TABLE_REPEATS):  # every repeat holds each row out exactly once
        held_out = np.concatenate([test for _, test in small_folds.repeat(repeat)])
        assert sorted(held_out.tolist()) == list(range(len(small)))


def test_folds_shrink_when_a_class_is_rare() -> None:
    assert cross_validation_folds(np.array([0] * 20 + [1] * 2), seed=0).n_folds == 2
    with pytest.raises(TrainingDataError, match="at least two rows of each class"):
        cross_validation_folds(np.array([0] * 20 + [1]), seed=0)


def test_search_uses_every_row_until_the_limit_then_a_stratified_sample() -> None:
    y = labels(1000, 300)
    assert np.array_equal(search_sample(y, seed=0, limit=1000), np.arange(1000))
    sample = search_sample(y, seed=0, limit=500)
    assert len(sample) == 500 and len(set(sample.tolist())) == 500
    assert y[sample].mean() == pytest.approx(0.3, abs=0.01)


def test_schema_is_fitted_on_development_rows_only() -> None:
    table, report = clean_table(generate_customers(600, seed=4))
    target = infer_target(table, None, None)
    table = drop_rows_without_target(table, target.column, report)
    split = holdout_split(target_vector(table[target.column], target), seed=0)
    # Give the test rows values no development row has: none of them may reach the schema.
    table = table.copy()
    table.loc[split.test, "MonthlyCharges"] = 5000.0
    table.loc[split.test, "PaymentMethod"] = "Gold bars"
    development = table.iloc[split.development]
    schema = fit_schema(infer_feature_roles(development, target), development)
    assert schema["MonthlyCharges"].maximum < 200
    assert "Gold bars" not in schema["PaymentMethod"].categories
    tenure = np.asarray(development["tenure"].tolist(), dtype=float)
    assert schema["tenure"].impute == float(np.median(tenure))
