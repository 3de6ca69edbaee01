"""Scorers give the same probabilities as the libraries' own predict_proba, and calibration maps apply."""

import numpy as np
import pytest

from bundle.manifest import Calibration
from bundle.scoring import apply_calibration, logit, member_logits, wrap_estimator


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = (x[:, 0] - x[:, 1] + rng.normal(scale=0.7, size=300) > 0).astype(int)
    return x, y


def test_linear_scorer_is_the_dot_product_of_predict_proba(data):
    from sklearn.linear_model import LogisticRegression

    x, y = data
    estimator = LogisticRegression().fit(x, y)
    np.testing.assert_allclose(
        wrap_estimator("logistic_regression", estimator).raw_proba(x), estimator.predict_proba(x)[:, 1], atol=1e-12
    )


def test_xgboost_scorer_matches_predict_proba(data):
    from xgboost import XGBClassifier

    x, y = data
    estimator = XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(x, y)
    np.testing.assert_allclose(
        wrap_estimator("xgboost", estimator).raw_proba(x), estimator.predict_proba(x)[:, 1], atol=1e-6
    )


def test_lightgbm_scorer_matches_predict_proba(data):
    from lightgbm import LGBMClassifier

    x, y = data
    estimator = LGBMClassifier(n_estimators=20, verbose=-1).fit(x, y)
    np.testing.assert_allclose(
        wrap_estimator("lightgbm", estimator).raw_proba(x), estimator.predict_proba(x)[:, 1], atol=1e-9
    )


def test_calibration_maps():
    raw = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(apply_calibration(Calibration(), raw), raw)
    platt = Calibration(method="platt", platt_a=1.0, platt_b=0.0)
    np.testing.assert_allclose(apply_calibration(platt, raw), raw, atol=1e-9)
    isotonic = Calibration(method="isotonic", isotonic_x=[0.0, 0.5, 1.0], isotonic_y=[0.0, 0.2, 1.0])
    np.testing.assert_allclose(apply_calibration(isotonic, raw), [0.04, 0.2, 0.84])


def test_logit_bounds_like_clip_and_member_logits_stack_each_members():
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.random(997), [0.0, 1.0, -0.5, 1.5, 1e-300, np.nan, 1e-7, 1 - 1e-7]])
    clipped = np.clip(values, 1e-7, 1 - 1e-7)
    np.testing.assert_array_equal(logit(values), np.log(clipped / (1 - clipped)))  # NaN stays NaN
    for size in (1, 7, 500):
        members = [rng.random(size), rng.random(size), rng.random(size)]
        expected = np.stack([logit(scores) for scores in members])
        np.testing.assert_array_equal(member_logits(members), expected)  # bit for bit, any batch size
