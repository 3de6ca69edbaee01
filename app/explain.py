"""Per-prediction reasons: how much each input feature raises this customer's churn risk.

A contribution is measured in log-odds of the model's raw score against a reference customer
whose every feature takes its training imputation value (median or most common category):

* logistic regression: exact, ``coef · (x - x_ref)`` summed over the feature's encoded columns;
* every other family: occlusion, ``logit p(x) - logit p(x with feature j set to its reference)``,
  scored in the same single model call as the prediction itself (one extra row per feature that
  differs from the reference; a feature at its reference value contributes exactly 0).

Both are per input feature (a one-hot category group counts once), model-agnostic where needed,
and honest about what they measure. Calibration is monotone, so a feature that raises the raw
score raises the calibrated probability too.
"""

from __future__ import annotations

import numpy as np

from models.features import FeatureSchema
from models.scoring import LinearModel, RawModel

_EPSILON = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPSILON, 1.0 - _EPSILON)
    return np.log(p / (1.0 - p))


class Explainer:
    """Scores a matrix and, on request, attributes each row's score to its input features."""

    def __init__(self, schema: FeatureSchema, model: RawModel) -> None:
        self.model = model
        self.feature_names = schema.names
        groups = schema.encoded_groups()
        self._slices = [columns for _, columns in groups]
        self._group_starts = np.array([columns.start for columns in self._slices], dtype=np.intp)
        # The reference customer: every value missing, so each feature takes its imputation value.
        self.reference = schema.encode({}, 1).matrix[0]
        self.method = "exact_linear" if isinstance(model, LinearModel) else "occlusion"
        # Compiled tree ensembles re-walk only the trees that split on the occluded feature.
        self._group_trees = [model.trees_using(columns) for columns in self._slices] if self._compiled() else None

    def _compiled(self) -> bool:
        return hasattr(self.model, "occlusion") and hasattr(self.model, "trees_using")

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """Raw (uncalibrated) probabilities only."""
        return self.model.raw_proba(matrix)

    def score_and_explain(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw probabilities (n,) and per-feature log-odds contributions (n, features)."""
        if isinstance(self.model, LinearModel):
            contributions = self.model.logit_contributions(matrix, self.reference)
            return self.model.raw_proba(matrix), np.add.reduceat(contributions, self._group_starts, axis=1)
        return self._occlusion(matrix)

    def _occlusion(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_rows, n_groups = matrix.shape[0], len(self._slices)
        # Only features that differ from the reference can contribute; the others are exactly 0
        # and need no model row (typically half of a customer's features sit at the reference).
        differs = np.add.reduceat(matrix != self.reference, self._group_starts, axis=1) > 0
        rows, groups = np.nonzero(differs)
        occluded = matrix[rows]
        for group, columns in enumerate(self._slices):
            occluded[groups == group, columns] = self.reference[columns]
        if self._group_trees is not None and n_rows <= self.model.max_rows:
            scores, occluded_scores = self.model.occlusion(
                matrix, occluded, rows, [self._group_trees[group] for group in groups.tolist()]
            )
        else:
            both = self.model.raw_proba(np.concatenate([matrix, occluded]))
            scores, occluded_scores = both[:n_rows], both[n_rows:]
        contributions = np.zeros((n_rows, n_groups))
        contributions[rows, groups] = _logit(scores)[rows] - _logit(occluded_scores)
        return scores, contributions

    @staticmethod
    def top_features(contributions: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """(feature position, contribution) of the ``limit`` features that raise this row's risk most.

        Only positive contributions count: a reason is something that makes churn more likely.
        """
        if limit <= 0:
            return []
        order = (
            np.argpartition(-contributions, limit - 1)[:limit]
            if limit < contributions.size
            else np.arange(contributions.size)
        )
        ranked = sorted(((int(i), float(contributions[i])) for i in order), key=lambda item: -item[1])
        return [(position, value) for position, value in ranked if value > _EPSILON]
