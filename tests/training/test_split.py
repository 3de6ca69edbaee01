"""The stratified 70/15/15 split, its minimum sizes, and that nothing is learned from test rows."""

from __future__ import annotations

import numpy as np
import pytest

from training.cleaning import clean_table, drop_rows_without_target
from training.data import TrainingDataError
from training.pipeline import fit_schema
from training.roles import infer_feature_roles, infer_target, target_vector
from training.split import min_rows_per_class, stratified_split
from training.synthetic import generate_customers


def labels(n: int, positives: int) -> np.ndarray:
    y = np.zeros(n, dtype=np.int64)
    y[:positives] = 1
    return np.random.default_rng(0).permutation(y)


def test_sizes_stratification_and_no_overlap() -> None:
    y = labels(2000, 530)
    split = stratified_split(y, seed=42)
    assert split.sizes() == {"train": 1400, "validation": 300, "test": 300}
    parts = [split.train, split.validation, split.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(2000))
    for part in parts:
        assert abs(y[part].mean() - y.mean()) < 0.01


def test_same_seed_same_split_other_seed_differs() -> None:
    y = labels(1000, 250)
    first, again, other = stratified_split(y, 1), stratified_split(y, 1), stratified_split(y, 2)
    assert np.array_equal(first.test, again.test) and np.array_equal(first.train, again.train)
    assert not np.array_equal(first.test, other.test)


def test_smallest_splittable_table() -> None:
    needed = min_rows_per_class()
    split = stratified_split(labels(100, needed), seed=0)
    y = labels(100, needed)
    assert y[split.validation].sum() >= 5 and y[split.test].sum() >= 5


@pytest.mark.parametrize(
    ("n", "positives", "message"),
    [
        (60, 30, "too few rows to train: 60 usable rows, need at least 100"),
        (500, 20, "too few churned customers for a 70/15/15 split: 20, need at least 34"),
        (500, 480, "too few retained customers for a 70/15/15 split: 20, need at least 34"),
    ],
)
def test_too_small_to_split(n: int, positives: int, message: str) -> None:
    with pytest.raises(TrainingDataError, match=message):
        stratified_split(labels(n, positives), seed=0)


def test_schema_is_fitted_on_training_rows_only() -> None:
    table, report = clean_table(generate_customers(600, seed=4))
    target = infer_target(table, None, None)
    table = drop_rows_without_target(table, target.column, report)
    split = stratified_split(target_vector(table[target.column], target), seed=0)
    # Give the test rows values no training row has: none of them may reach the schema.
    table = table.copy()
    table.loc[split.test, "MonthlyCharges"] = 5000.0
    table.loc[split.test, "PaymentMethod"] = "Gold bars"
    train = table.iloc[split.train]
    schema = fit_schema(infer_feature_roles(train, target), train)
    assert schema["MonthlyCharges"].maximum < 200
    assert "Gold bars" not in schema["PaymentMethod"].categories
    tenure = np.asarray(train["tenure"].tolist(), dtype=float)
    assert schema["tenure"].impute == float(np.median(tenure))
