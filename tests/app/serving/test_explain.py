"""Explanations are Shapley values of the log-odds against a reference customer at every imputation value.

Every family is checked against the ``shap`` package run on the same model with that reference as
its single background row, and every family's contributions plus the base value add up to the
log-odds of the raw score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shap
from sklearn.linear_model import LogisticRegression
from xgboost import XGBClassifier

from app.serving.explain import Explainer, reference_row
from app.serving.predictor import Predictor, build_predictor
from bundle.features import FeatureSchema, fit_feature
from bundle.scoring import EnsembleModel, logit, wrap_estimator
from tests.conftest import service_settings

FAMILIES = ["logistic_regression", "random_forest", "xgboost", "lightgbm", "mlp"]


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


@pytest.fixture(scope="module")
def predictors(family_models_dirs: dict[str, Path]) -> dict[str, Predictor]:
    return {family: build_predictor(service_settings(family_models_dirs[family])) for family in FAMILIES}


def customers_near_reference(explainer: Explainer, n_rows: int, seed: int) -> np.ndarray:
    """Rows around the reference: about half the encoded columns moved, the others exactly at it."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(explainer.reference[None, :], n_rows, axis=0)
    moved = rng.random(rows.shape) < 0.5
    rows[moved] += rng.normal(scale=1.5, size=moved.sum())
    return rows


def per_feature(values: np.ndarray, schema: FeatureSchema) -> np.ndarray:
    """Per-column values summed over each feature's encoded columns, as shap users group one-hot columns."""
    return np.stack([values[:, columns].sum(axis=1) for _, columns in schema.encoded_groups()], axis=1)


def shap_log_odds_values(family: str, explainer: Explainer, rows: np.ndarray) -> np.ndarray:
    """The shap package's per-column values of the log-odds, with the reference as the only background row."""
    background = explainer.reference[None, :]
    model = explainer.model
    if family == "logistic_regression":
        return shap.LinearExplainer((model.coef, model.intercept), background).shap_values(rows)
    estimator = model.native.estimator
    tree = shap.TreeExplainer(estimator, data=background, feature_perturbation="interventional", model_output="raw")
    values = np.asarray(tree.shap_values(rows))
    if family != "random_forest":
        return values
    # A forest's values are in probability; each row's are scaled by the logit's slope between p_ref and p.
    probability, reference_probability = model.raw_proba(rows), model.raw_proba(background)[0]
    slope = (logit(probability) - logit(reference_probability)) / (probability - reference_probability)
    return values[..., 1] * slope[:, None]


@pytest.mark.parametrize("family", ["logistic_regression", "random_forest", "xgboost", "lightgbm"])
def test_exact_families_equal_the_shap_package(family: str, predictors: dict[str, Predictor]) -> None:
    explainer = predictors[family].explainer
    rows = customers_near_reference(explainer, 25, seed=1)

    _, contributions = explainer.score_and_explain(rows)

    expected = per_feature(shap_log_odds_values(family, explainer, rows), predictors[family].schema)
    np.testing.assert_allclose(contributions, expected, rtol=0, atol=1e-6)


def test_the_mlp_estimate_is_close_to_the_shap_package_exact_values(predictors: dict[str, Predictor]) -> None:
    """Customers who differ from the reference in six columns (the others are null players): shap's
    KernelExplainer with the one background row and a budget above 2**6 enumerates every coalition,
    which makes its values the exact Shapley values of those columns."""
    predictor = predictors["mlp"]
    explainer = predictor.explainer
    rng = np.random.default_rng(2)
    for _ in range(5):
        row = explainer.reference.copy()
        differing = rng.choice(row.size, size=6, replace=False)
        row[differing] += rng.normal(scale=2.0, size=6)

        def log_odds(subset: np.ndarray, differing: np.ndarray = differing) -> np.ndarray:
            full = np.repeat(explainer.reference[None, :], len(subset), axis=0)
            full[:, differing] = subset
            return logit(explainer.model.raw_proba(full))

        kernel = shap.KernelExplainer(log_odds, explainer.reference[None, differing])
        exact_values = np.zeros((1, row.size))
        exact_values[0, differing] = kernel.shap_values(row[None, differing], nsamples=1000, silent=True)[0]
        expected = per_feature(exact_values, predictor.schema)

        _, contributions = explainer.score_and_explain(row[None, :])

        # A sampling estimate: 32 seeded permutations land within a few per cent of the largest value;
        # 10% leaves room for that, while a wrong coalition weight or step is off by far more.
        scale = np.abs(expected).max()
        np.testing.assert_allclose(contributions, expected, rtol=0, atol=0.1 * scale)
        assert np.argmax(contributions) == np.argmax(expected)


def test_a_soft_vote_explains_as_the_weighted_mean_of_its_members(predictors: dict[str, Predictor]) -> None:
    members = [
        (family, predictors[family].scorer.model, weight)
        for family, weight in [("lightgbm", 2.0), ("logistic_regression", 1.0), ("random_forest", 1.0)]
    ]
    vote = EnsembleModel(members)
    schema = predictors["lightgbm"].schema
    explainer = Explainer(schema, vote)
    rows = customers_near_reference(explainer, 10, seed=3)

    scores, contributions = explainer.score_and_explain(rows)

    member_explainers = [Explainer(schema, model) for _, model, _ in members]
    expected = sum(w * e.score_and_explain(rows)[1] for w, e in zip(vote.weights, member_explainers, strict=True))
    np.testing.assert_allclose(contributions, expected, rtol=0, atol=1e-12)
    assert explainer.base_value == pytest.approx(
        sum(w * e.base_value for w, e in zip(vote.weights, member_explainers, strict=True))
    )
    np.testing.assert_allclose(scores, vote.raw_proba(rows), rtol=0, atol=1e-12)
    np.testing.assert_allclose(contributions.sum(axis=1) + explainer.base_value, logit(scores), rtol=0, atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_contributions_and_base_value_add_up_to_the_raw_log_odds(family: str, predictors: dict[str, Predictor]) -> None:
    explainer = predictors[family].explainer
    rows = customers_near_reference(explainer, 40, seed=4)

    scores, contributions = explainer.score_and_explain(rows)

    np.testing.assert_allclose(scores, explainer.score(rows), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        contributions.sum(axis=1) + explainer.base_value, logit(explainer.score(rows)), rtol=0, atol=1e-6
    )
    assert explainer.base_value == pytest.approx(logit(explainer.score(explainer.reference[None, :]))[0], abs=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_reference_customer_has_no_reasons(family: str, predictors: dict[str, Predictor]) -> None:
    predictor = predictors[family]
    typical = predictor.schema.encode({spec.name: [spec.impute] for spec in predictor.schema.features}, 1).matrix

    _, contributions = predictor.explainer.score_and_explain(typical)

    np.testing.assert_allclose(contributions, 0.0, atol=1e-12)


def test_describe_publishes_the_method_base_value_and_reference(predictors: dict[str, Predictor]) -> None:
    predictor = predictors["xgboost"]

    described = predictor.explainer.describe()

    assert described["method"] == predictor.explainer.method == "exact_tree_shap"
    assert described["base_value"] == predictor.explainer.base_value
    assert described["reference"] == {spec.name: spec.impute for spec in predictor.schema.features}


def test_reference_has_no_missing_indicator_set(schema_and_data):
    schema, _, _ = schema_and_data
    assert schema["charges"].missing_indicator
    reference = reference_row(schema)
    assert reference[schema.encoded_names().index("charges__missing")] == 0.0


@pytest.mark.parametrize("family", ["logistic_regression", "xgboost"])
def test_a_missing_value_is_itself_a_reason_candidate(schema_and_data, family):
    schema, matrix, y = schema_and_data
    estimator = (
        LogisticRegression().fit(matrix, y)
        if family == "logistic_regression"
        else XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(matrix, y)
    )
    explainer = Explainer(schema, wrap_estimator(family, estimator))
    values = {spec.name: [spec.impute] for spec in schema.features}
    values["charges"] = [None]  # imputed with the median, but the missing indicator is set
    _, contributions = explainer.score_and_explain(schema.encode(values, 1).matrix)
    assert contributions[0, schema.names.index("tenure")] == 0.0
    if family == "logistic_regression":
        assert contributions[0, schema.names.index("charges")] != 0.0


def test_top_reasons_are_the_positive_contributions_largest_first(predictors: dict[str, Predictor]) -> None:
    explainer = predictors["lightgbm"].explainer
    _, contributions = explainer.score_and_explain(customers_near_reference(explainer, 30, seed=6))

    for row in contributions:
        top = Explainer.top_features(row, 3)
        positive = sorted((value for value in row if value > 1e-7), reverse=True)[:3]
        assert [value for _, value in top] == positive
        assert all(row[position] == value for position, value in top)


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


def test_metadata_publishes_the_explanation(linear_models_dir: Path, serve: Any) -> None:
    client = serve(linear_models_dir)

    explanation = client.get("/metadata").json()["explanation"]

    assert explanation["method"] == "exact_linear_shap"
    assert isinstance(explanation["base_value"], float)
    assert set(explanation["reference"]) == {item["name"] for item in client.get("/metadata").json()["inputs"]}
