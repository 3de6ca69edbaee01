"""Risk bands and the playbook."""

from __future__ import annotations

import numpy as np
import pytest

from app.serving.risk import RiskPolicy

POLICY = RiskPolicy({"high": 0.6, "low": 0.0, "medium": 0.3}, {"high": ["Call"], "low": []})


@pytest.mark.parametrize(
    ("probability", "band"),
    [(0.0, "low"), (0.2999, "low"), (0.3, "medium"), (0.59, "medium"), (0.6, "high"), (1.0, "high")],
)
def test_the_highest_lower_bound_not_above_the_probability_wins(probability: float, band: str) -> None:
    assert POLICY.band(probability) == band
    assert POLICY.bands_of(np.array([probability])) == [band]


def test_bands_without_a_playbook_entry_recommend_nothing() -> None:
    assert POLICY.actions("medium") == []
    assert POLICY.actions("high") == ["Call"]


def test_bands_must_cover_zero() -> None:
    with pytest.raises(ValueError, match=r"starts at 0\.0"):
        RiskPolicy({"medium": 0.3}, {})
