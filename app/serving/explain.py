"""Per-prediction reasons: how much each input feature raises this customer's churn risk.

A contribution is measured in log-odds of the model's raw score against a reference customer
whose every feature takes its training imputation value (median or most common category):

* logistic regression: exact, ``coef · (x - x_ref)`` summed over the feature's encoded columns;
* every other family: occlusion, ``logit p(x) - logit p(x with feature j set to its reference)``;
  compiled tree ensembles re-walk, in machine code, only the trees whose path for this row splits
  on the feature (see ``app.serving.trees``), other models score one extra row per feature that
  differs from the reference in the same model call as the prediction; a feature at its reference
  value contributes exactly 0;
* soft-vote ensemble: its log-odds are the weighted mean of its members' log-odds, so its
  occlusion is exactly the weighted mean of the members' own attributions, each member explained
  by its own family's rule above (exact for the linear part, tree-by-tree for compiled trees).

Both are per input feature (a one-hot category group counts once), model-agnostic where needed,
and honest about what they measure. Calibration is monotone, so a feature that raises the raw
score raises the calibrated probability too.
"""

from __future__ import annotations

import sys

import numpy as np

from bundle.features import FeatureSchema
from bundle.scoring import LOGIT_EPSILON, EnsembleModel, LinearModel, RawModel, logit

_EPSILON = LOGIT_EPSILON


class Explainer:
    """Scores a matrix and, on request, attributes each row's score to its input features."""

    def __init__(self, schema: FeatureSchema, model: RawModel) -> None:
        self.model = model
        self.feature_names = schema.names
        groups = schema.encoded_groups()
        self._slices = [columns for _, columns in groups]
        self._group_starts = np.array([columns.start for columns in self._slices], dtype=np.intp)
        # The reference customer: every feature present at its imputation value (median or most common
        # category). Present, not missing: a missing value also sets its missing-indicator column, and
        # an ordinary customer at the median must not differ from the reference there.
        self.reference = reference_row(schema)
        self.method = "exact_linear" if isinstance(model, LinearModel) else "occlusion"
        # Each matrix column's feature group: compiled tree ensembles occlude by it (see
        # app.serving.trees), and as masks it builds every occluded row in one step.
        self._column_group = column_groups(schema)
        self._group_masks = self._column_group[None, :] == np.arange(len(self._slices))[:, None]
        self._members = (
            [Explainer(schema, member) for _, member, _ in model.members] if isinstance(model, EnsembleModel) else None
        )

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """Raw (uncalibrated) probabilities only."""
        return self.model.raw_proba(matrix)

    def score_and_explain(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw probabilities (n,) and per-feature log-odds contributions (n, features)."""
        if isinstance(self.model, LinearModel):
            contributions = self.model.logit_contributions(matrix, self.reference)
            return self.model.raw_proba(matrix), np.add.reduceat(contributions, self._group_starts, axis=1)
        if self._members is not None:
            return self._vote(matrix)
        return self._occlusion(matrix)

    def _vote(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A soft vote's score and attributions from its members' (log-odds are weighted means)."""
        assert isinstance(self.model, EnsembleModel) and self._members is not None
        explained = [member.score_and_explain(matrix) for member in self._members]
        # EnsembleModel.raw_proba's own vote, so the score equals the plain call's.
        scores = self.model.vote([scores for scores, _ in explained])
        weights = self.model.weights.tolist()
        contributions = sum(weight * part for weight, (_, part) in zip(weights, explained, strict=True))
        return scores, contributions

    def _occlusion(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_rows, n_groups = matrix.shape[0], len(self._slices)
        if _is_compiled_trees(self.model):
            return self.model.explain_log_odds(matrix, self.reference, self._column_group, n_groups, _EPSILON)
        # Only features that differ from the reference can contribute; the others are exactly 0
        # and need no model row (typically half of a customer's features sit at the reference).
        differs = np.add.reduceat(matrix != self.reference, self._group_starts, axis=1) > 0
        rows, groups = np.nonzero(differs)
        occluded = np.where(self._group_masks[groups], self.reference, matrix[rows])
        both = self.model.raw_proba(np.concatenate([matrix, occluded]))
        scores, occluded_scores = both[:n_rows], both[n_rows:]
        contributions = np.zeros((n_rows, n_groups))
        contributions[rows, groups] = logit(scores)[rows] - logit(occluded_scores)
        return scores, contributions

    @staticmethod
    def top_features(contributions: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """(feature position, contribution) of the ``limit`` features that raise this row's risk most.

        Only positive contributions count: a reason is something that makes churn more likely.
        """
        if limit <= 0:
            return []
        # Plain Python: a row has tens of features, where numpy's per-call cost exceeds the work.
        # sorted()[:limit] is what heapq.nlargest is defined as (ties included), three times faster
        # for a few dozen values.
        values = contributions.tolist()
        ranked = sorted(range(len(values)), key=values.__getitem__, reverse=True)[:limit]
        return [(position, values[position]) for position in ranked if values[position] > _EPSILON]

    @staticmethod
    def top_features_many(contributions: np.ndarray, limit: int) -> list[list[tuple[int, float]]]:
        """:meth:`top_features` of every row of a batch, ranked by one numpy sort for all of them.

        A stable sort of the negated contributions orders each row from largest to smallest with
        ties in feature order, exactly as ``sorted(..., reverse=True)`` does for one row.
        """
        n_rows, n_features = contributions.shape
        if limit <= 0 or n_features == 0:
            return [[] for _ in range(n_rows)]
        order = np.argsort(-contributions, axis=1, kind="stable")[:, :limit]
        values = np.take_along_axis(contributions, order, axis=1)
        return [
            [(position, value) for position, value in zip(positions, row_values, strict=True) if value > _EPSILON]
            for positions, row_values in zip(order.tolist(), values.tolist(), strict=True)
        ]


def _is_compiled_trees(model: RawModel) -> bool:
    # Without looking at app.serving.trees unless it is loaded: a bundle without trees never
    # imports it (nor numba, over 100 MiB per worker).
    module = sys.modules.get("app.serving.trees")
    return module is not None and isinstance(model, module.CompiledTrees)


def column_groups(schema: FeatureSchema) -> np.ndarray:
    """The feature (its position in the schema) that each encoded matrix column belongs to."""
    groups = np.full(schema.n_encoded, -1, dtype=np.intp)
    for group, (_, columns) in enumerate(schema.encoded_groups()):
        groups[columns] = group
    return groups


def reference_row(schema: FeatureSchema) -> np.ndarray:
    """The encoded reference customer that contributions are measured against."""
    return schema.encode({spec.name: [spec.impute] for spec in schema.features}, 1).matrix[0]
