"""Permutation importance finds the feature the model relies on and moves one-hot groups together."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from bundle.features import FeatureSchema, fit_feature
from training.importance import permutation_importance_by_feature, permuted_feature_matrix


def planted_table(n: int = 800, seed: int = 0) -> tuple[FeatureSchema, dict[str, list], np.ndarray]:
    """Churn driven by 'tenure' (strongly) and 'contract' (mildly); 'noise' and 'region' are irrelevant."""
    rng = np.random.default_rng(seed)
    tenure = rng.uniform(0, 72, n)
    contract = rng.choice(["monthly", "yearly", "two-year"], n)
    noise = rng.normal(0, 1, n)
    region = rng.choice(["north", "south", "east", "west"], n)
    logit = 2.5 - 0.09 * tenure + 0.8 * (contract == "monthly")
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    columns = {
        "tenure": tenure.tolist(),
        "contract": contract.tolist(),
        "noise": noise.tolist(),
        "region": region.tolist(),
    }
    schema = FeatureSchema(
        features=[
            fit_feature("tenure", "numeric", columns["tenure"]),
            fit_feature("contract", "categorical", columns["contract"]),
            fit_feature("noise", "numeric", columns["noise"]),
            fit_feature("region", "categorical", columns["region"]),
        ],
        target="churn",
        positive_label=1,
    )
    return schema, columns, y


def fitted_scorer(schema: FeatureSchema, columns: dict[str, list], y: np.ndarray):
    model = LogisticRegression(max_iter=1000).fit(schema.encode(columns, y.size).matrix, y)
    return lambda matrix: model.predict_proba(matrix)[:, 1]


def test_planted_feature_ranks_first_and_irrelevant_ones_near_zero() -> None:
    schema, columns, y = planted_table()
    scorer = fitted_scorer(schema, columns, y)
    _, val_columns, y_val = planted_table(seed=1)
    importance = permutation_importance_by_feature(scorer, schema, val_columns, y_val, seed=0)
    assert next(iter(importance)) == "tenure"
    assert importance["tenure"] > 0.1
    assert importance["contract"] > 0.005
    assert abs(importance["noise"]) < 0.02 and abs(importance["region"]) < 0.02
    assert set(importance) == set(schema.names)  # one entry per input feature, not per one-hot column
    assert list(importance.values()) == sorted(importance.values(), reverse=True)


def test_results_are_reproducible_for_a_seed() -> None:
    schema, columns, y = planted_table()
    scorer = fitted_scorer(schema, columns, y)
    first = permutation_importance_by_feature(scorer, schema, columns, y, seed=7, repeats=2)
    second = permutation_importance_by_feature(scorer, schema, columns, y, seed=7, repeats=2)
    assert first == second


def test_permuting_encoded_groups_equals_re_encoding_permuted_values() -> None:
    schema, columns, y = planted_table(n=200)
    columns["tenure"][3] = None  # a missing value travels with its row, imputation included
    base = schema.encode(columns, y.size).matrix
    order = np.random.default_rng(3).permutation(y.size)
    for name, group in schema.encoded_groups():
        shuffled = dict(columns)
        shuffled[name] = [columns[name][i] for i in order]
        re_encoded = schema.encode(shuffled, y.size).matrix
        np.testing.assert_array_equal(permuted_feature_matrix(base, group, order), re_encoded)


def test_single_class_validation_is_rejected() -> None:
    schema, columns, _ = planted_table(n=100)
    with pytest.raises(ValueError, match="churners and non-churners"):
        permutation_importance_by_feature(lambda m: m[:, 0], schema, columns, np.zeros(100), seed=0)
