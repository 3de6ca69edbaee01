"""The encoder: one row by its loop gives exactly what the column path gives for that row."""

from __future__ import annotations

import numpy as np

from bundle.encoding import Encoder
from bundle.features import FeatureSchema, clean_boolean, fit_feature


def _schema(rng: np.random.Generator, n: int = 500) -> FeatureSchema:
    usage = rng.lognormal(3.0, 1.2, n).tolist()  # skewed and non-negative: log-transformed
    charges = [None if i % 40 == 0 else float(x) for i, x in enumerate(rng.gamma(2.0, 40.0, n))]
    plan = rng.choice(["basic", "plus", "pro", "family"], n, p=[0.5, 0.3, 0.19, 0.01]).tolist()
    region = rng.choice(["north", "south"], n).tolist()  # never missing in training
    partner = rng.choice(["Yes", "No"], n).tolist()
    specs = [
        fit_feature("usage", "numeric", usage),
        fit_feature("charges", "numeric", charges),
        fit_feature("plan", "categorical", plan),
        fit_feature("region", "categorical", region),
        fit_feature("partner", "boolean", [clean_boolean(v) for v in partner], true_label="Yes", false_label="No"),
    ]
    return FeatureSchema(specs, target="churn", positive_label="yes")


def _random_columns(rng: np.random.Generator, n: int) -> dict[str, list]:
    """Ordinary values, gaps, NaN, huge and negative numbers, unseen and rare categories."""
    numbers = [None, float("nan"), -5.0, 0.0, 3.5, 40.0, 1e9, 250.0]
    categories = [None, "basic", "plus", "pro", "family", "lifetime", "north", "south", "east"]
    return {
        "usage": [numbers[i] for i in rng.integers(0, len(numbers), n)],
        "charges": [numbers[i] for i in rng.integers(0, len(numbers), n)],
        "plan": [categories[i] for i in rng.integers(0, len(categories), n)],
        "region": [categories[i] for i in rng.integers(0, len(categories), n)],
        "partner": [[None, True, False][i] for i in rng.integers(0, 3, n)],
    }


def test_one_row_encodes_exactly_like_its_row_in_a_batch():
    rng = np.random.default_rng(0)
    schema = _schema(rng)
    assert schema["usage"].log_transform and schema["charges"].missing_indicator
    encoder = Encoder(schema)
    columns = _random_columns(rng, 300)
    batch = encoder.encode_columns(columns, 300)
    for row in range(300):
        one = encoder.encode_row({name: [values[row]] for name, values in columns.items()})
        np.testing.assert_array_equal(one.matrix[0], batch.matrix[row])
        assert one.warnings == [batch.warnings[row]]
        for kind in ("imputed", "unseen", "out_of_range"):
            expected = [(0, name) for at, name in getattr(batch, kind) if at == row]
            assert getattr(one, kind) == expected, (row, kind)


def test_an_absent_feature_is_missing_in_both_paths():
    schema = _schema(np.random.default_rng(1))
    encoder = Encoder(schema)
    columns = {"usage": [12.0], "plan": ["pro"]}
    one, batch = encoder.encode_row(columns), encoder.encode_columns(columns, 1)
    np.testing.assert_array_equal(one.matrix, batch.matrix)
    assert one.imputed == batch.imputed == [(0, "charges"), (0, "region"), (0, "partner")]
    assert one.warnings == batch.warnings and len(one.warnings[0]) == 3


def test_encode_picks_the_row_path_for_one_row_with_the_same_result():
    schema = _schema(np.random.default_rng(2))
    columns = _random_columns(np.random.default_rng(3), 1)
    np.testing.assert_array_equal(schema.encode(columns, 1).matrix, Encoder(schema).encode_columns(columns, 1).matrix)
