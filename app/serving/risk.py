"""Risk bands and the retention playbook: turning a churn probability into a category and actions."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence

import numpy as np


class RiskPolicy:
    """Configurable bands (name -> lower bound of the probability) and the actions for each band."""

    def __init__(self, bands: Mapping[str, float], playbook: Mapping[str, Sequence[str]]) -> None:
        ordered = sorted(bands.items(), key=lambda item: item[1])
        if not ordered or ordered[0][1] != 0.0:
            raise ValueError("risk bands must include one that starts at 0.0")
        self.bands = dict(ordered)
        self.playbook = {name: list(playbook.get(name, [])) for name in self.bands}
        self._names = [name for name, _ in ordered]
        self._bounds = [bound for _, bound in ordered]

    def band(self, probability: float) -> str:
        """The band with the highest lower bound not above ``probability``."""
        return self._names[max(bisect_right(self._bounds, probability) - 1, 0)]

    def bands_of(self, probabilities: np.ndarray) -> list[str]:
        """``band`` for many probabilities at once."""
        if probabilities.size == 1:  # /predict: a bisect costs a fraction of the numpy calls below
            return [self.band(float(probabilities[0]))]
        positions = np.maximum(np.searchsorted(self._bounds, probabilities, side="right") - 1, 0)
        return [self._names[position] for position in positions.tolist()]

    def actions(self, band: str) -> list[str]:
        return self.playbook[band]
