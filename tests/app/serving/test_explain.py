"""Explanations are measured against a reference customer who sits at every imputation value."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from xgboost import XGBClassifier

from app.serving.explain import Explainer, reference_row
from bundle.features import FeatureSchema, fit_feature
from bundle.scoring import wrap_estimator


@pytest.fixture(scope="module")
def schema_and_data():
    rng = np.random.default_rng(0)
    n = 400
    charges = [None if i % 40 == 0 else float(v) for i, v in enumerate(rng.gamma(2.0, 400.0, n))]
    tenure = rng.integers(0, 72, n).astype(float).tolist()
    plan = rng.choice(["basic", "plus", "pro"], n).tolist()
    schema = FeatureSchema(
        [
            fit_feature("charges", "numeric", charges),
            fit_feature("tenure", "numeric", tenure),
            fit_feature("plan", "categorical", plan),
        ],
        target="churn",
        positive_label=1,
    )
    matrix = schema.encode({"charges": charges, "tenure": tenure, "plan": plan}, n).matrix
    y = (np.asarray(tenure) < 20).astype(int) ^ (rng.random(n) < 0.1)
    return schema, matrix, y


def test_reference_has_no_missing_indicator_set(schema_and_data):
    schema, _, _ = schema_and_data
    assert schema["charges"].missing_indicator
    reference = reference_row(schema)
    assert reference[schema.encoded_names().index("charges__missing")] == 0.0


@pytest.mark.parametrize("family", ["logistic_regression", "xgboost"])
def test_customer_at_every_imputation_value_has_no_reasons(schema_and_data, family):
    schema, matrix, y = schema_and_data
    estimator = (
        LogisticRegression().fit(matrix, y)
        if family == "logistic_regression"
        else XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(matrix, y)
    )
    explainer = Explainer(schema, wrap_estimator(family, estimator))
    typical = schema.encode({spec.name: [spec.impute] for spec in schema.features}, 1).matrix
    _, contributions = explainer.score_and_explain(typical)
    np.testing.assert_allclose(contributions, 0.0, atol=1e-12)


def test_a_missing_value_is_itself_a_reason_candidate(schema_and_data):
    schema, matrix, y = schema_and_data
    explainer = Explainer(schema, wrap_estimator("logistic_regression", LogisticRegression().fit(matrix, y)))
    values = {spec.name: [spec.impute] for spec in schema.features}
    values["charges"] = [None]  # imputed with the median, but the missing indicator is set
    _, contributions = explainer.score_and_explain(schema.encode(values, 1).matrix)
    assert contributions[0, schema.names.index("charges")] != 0.0
    assert contributions[0, schema.names.index("tenure")] == 0.0


@pytest.mark.parametrize("limit", [0, 1, 3, 25])
def test_top_features_of_a_batch_equal_those_of_each_row(limit: int) -> None:
    """Ties (in feature order), zeros, negatives and tiny positives ranked as the one-row version ranks them."""
    rng = np.random.default_rng(4)
    contributions = rng.integers(-3, 4, size=(200, 19)) / 4.0  # many exact ties
    contributions[::7] = 0.0
    contributions[1::9, 5] = 1e-9  # positive, but below the threshold of a reason

    ranked = Explainer.top_features_many(contributions, limit)

    assert ranked == [Explainer.top_features(row, limit) for row in contributions]
    assert all(len(top) <= limit for top in ranked)
