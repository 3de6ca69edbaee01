"""Drift statistics: PSI and Jensen-Shannon against hand computation, the window-size-aware threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2

from app.monitoring.drift_stats import (
    PSI_EPSILON,
    jensen_shannon_distance,
    population_stability_index,
    psi_threshold,
)
from bundle.drift_reference import FeatureReference


def test_psi_and_js_match_hand_computation():
    live = np.array([30.0, 50.0, 20.0, 0.0])
    reference = [0.25, 0.25, 0.5, 0.0]
    p, q = live / live.sum(), np.array(reference)
    # The empty fourth bin is floored at PSI_EPSILON on both sides and contributes nothing.
    expected_psi = sum((pi - qi) * math.log(pi / qi) for pi, qi in zip(p[:3], q[:3], strict=True))
    assert population_stability_index(live, reference) == pytest.approx(expected_psi, rel=1e-12)
    m = (p + q) / 2
    kl = lambda a, b: sum(ai * math.log2(ai / bi) for ai, bi in zip(a, b, strict=True) if ai > 0)  # noqa: E731
    assert jensen_shannon_distance(live, reference) == pytest.approx(math.sqrt((kl(p, m) + kl(q, m)) / 2), rel=1e-9)


def test_psi_floors_bins_missing_on_one_side():
    live, reference = np.array([10.0, 0.0]), [0.5, 0.5]
    expected = (1 - 0.5) * math.log(1 / 0.5) + (PSI_EPSILON - 0.5) * math.log(PSI_EPSILON / 0.5)
    assert population_stability_index(live, reference) == pytest.approx(expected)
    assert jensen_shannon_distance(np.array([1.0, 0.0]), [0.0, 1.0]) == pytest.approx(1.0)


def test_threshold_follows_window_size():
    reference = FeatureReference("x", "numeric", [1.0, 2.0, 3.0], [], [0.25, 0.25, 0.25, 0.25, 0.0], count=10_000)
    small = psi_threshold(0.2, 30, reference)
    assert small == pytest.approx(chi2.ppf(0.999, 3) * (1 / 30 + 1 / 10_000))
    assert psi_threshold(0.2, 5000, reference) == 0.2  # large windows: the configured floor rules
    assert small > psi_threshold(0.2, 60, reference) >= 0.2
