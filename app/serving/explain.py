"""Per-prediction reasons: each input feature's Shapley value in the model's log-odds.

One definition for every family: the exact Shapley values of the raw (uncalibrated) model's
log-odds against one reference customer, whose every feature takes its training imputation value
(median or most common category), i.e. baseline (interventional) SHAP with that single background
row. Values are computed per encoded column and summed per input feature (a one-hot group is one
feature), so each row's contributions plus :attr:`Explainer.base_value` (the log-odds at the
reference) add up to its log-odds. Calibration is monotone and applied after, so a feature that
raises the log-odds raises the calibrated probability too. How each family gets there:

* logistic regression: exact, ``coef · (x - x_ref)`` (linear SHAP);
* XGBoost, LightGBM (margins add up over trees): exact interventional TreeSHAP with the one
  reference row, by the compiled kernel in ``app.serving.trees``;
* random forest (a mean of trees' probabilities, not additive in log-odds): the same exact values
  in probability space, each scaled by ``(logit p - logit p_ref) / (p - p_ref)`` so that they add
  up to the log-odds exactly (the slope of the logit between the two points);
* soft vote: its log-odds are the weighted mean of its members' log-odds, and Shapley values are
  linear in the game, so its values and base value are the same weighted mean of its members';
* MLP and any model the tree compiler does not express: sampled permutation Shapley. Each of a
  fixed set of antithetic permutation pairs (a permutation and its reverse) of the encoded columns
  walks from the reference to the row one column at a time; a column's value is its mean log-odds
  step. Columns equal to the reference are null players (exactly 0); the sums telescope, so the
  values add up exactly; every coalition row of a batch is scored in one model call. The estimate
  is unbiased, and exact whenever at most two columns differ from the reference.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from bundle.features import FeatureSchema
from bundle.scoring import LOGIT_EPSILON, EnsembleModel, LinearModel, RawModel, logit

# The log-odds of the bounds ``logit`` holds probabilities to.
_LOWEST, _HIGHEST = (float(bound) for bound in logit(np.array([0.0, 1.0])))


def _sigmoid(log_odds: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-log_odds))


# Permutation pairs of the sampled method, and the most coalition rows scored in one model call.
_PERMUTATION_PAIRS = 16
_ROWS_PER_CALL = 65_536


class Explainer:
    """Scores a matrix and, on request, attributes each row's log-odds to its input features."""

    def __init__(self, schema: FeatureSchema, model: RawModel) -> None:
        self.model = model
        self.feature_names = schema.names
        self.reference = reference_row(schema)
        self.reference_values = {spec.name: spec.impute for spec in schema.features}
        self._attribution = _attribution(model, self.reference, column_groups(schema), len(schema.names))
        self.method: str = self._attribution.method
        self.base_value: float = self._attribution.base_value

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """Raw (uncalibrated) probabilities only."""
        return self.model.raw_proba(matrix)

    def score_and_explain(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw probabilities (n,) and per-feature log-odds contributions (n, features)."""
        return self._attribution.explain(matrix)

    def describe(self) -> dict[str, Any]:
        """What /metadata publishes about explanations."""
        return {"method": self.method, "base_value": self.base_value, "reference": self.reference_values}

    @staticmethod
    def top_features(contributions: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """(feature position, contribution) of the ``limit`` features that raise this row's risk most.

        Only positive contributions count: a reason is something that makes churn more likely.
        """
        if limit <= 0:
            return []
        # Plain Python: a row has tens of features, where numpy's per-call cost exceeds the work.
        values = contributions.tolist()
        ranked = sorted(range(len(values)), key=values.__getitem__, reverse=True)[:limit]
        return [(position, values[position]) for position in ranked if values[position] > LOGIT_EPSILON]

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
            [(position, value) for position, value in zip(positions, row_values, strict=True) if value > LOGIT_EPSILON]
            for positions, row_values in zip(order.tolist(), values.tolist(), strict=True)
        ]


class _Linear:
    """Logistic regression: linear SHAP against the reference."""

    method = "exact_linear_shap"

    def __init__(self, model: LinearModel, reference: np.ndarray, column_group: np.ndarray, n_groups: int) -> None:
        self.model, self.reference = model, reference
        self.base_value = float(reference @ model.coef + model.intercept)
        # One product gives every feature's coef · x summed over its columns, and the log-odds last.
        weights = np.zeros((reference.size, n_groups + 1))
        weights[np.arange(reference.size), column_group] = model.coef
        weights[:, -1] = model.coef
        self.weights = weights
        self.at_reference = reference @ weights[:, :-1]

    def explain(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        log_odds, contributions = self.explain_log_odds(matrix)
        return _sigmoid(log_odds), contributions

    def explain_log_odds(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        products = matrix @ self.weights
        return products[:, -1] + self.model.intercept, products[:, :-1] - self.at_reference


class _Trees:
    """A compiled tree ensemble: exact interventional TreeSHAP, mapped to log-odds for a forest."""

    def __init__(self, model: Any, reference: np.ndarray, column_group: np.ndarray, n_groups: int) -> None:
        self.model, self.reference, self.column_group, self.n_groups = model, reference, column_group, n_groups
        self.forest = model.average  # its outputs are probabilities, not margins
        self.method = "exact_tree_shap_probability_scaled" if self.forest else "exact_tree_shap"
        self.reference_output = float(model.shap_values(reference[None, :], reference, column_group, n_groups)[0][0])
        self.base_value = float(logit(np.array(self.reference_output))) if self.forest else self.reference_output

    def explain_log_odds(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.forest:
            probabilities, values = self.explain(matrix)
            return logit(probabilities), values
        return self.model.shap_values(matrix, self.reference, self.column_group, self.n_groups)  # margins

    def explain(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs, values = self.model.shap_values(matrix, self.reference, self.column_group, self.n_groups)
        if not self.forest:
            return _sigmoid(outputs), values
        step = outputs - self.reference_output
        # The logit's slope between p_ref and p; its derivative where the two (nearly) coincide.
        near = np.abs(step) < 1e-12
        bounded = np.clip(outputs, LOGIT_EPSILON, 1.0 - LOGIT_EPSILON)
        slope = np.where(
            near, 1.0 / (bounded * (1.0 - bounded)), (logit(outputs) - self.base_value) / np.where(near, 1.0, step)
        )
        return outputs, values * slope[:, None]


class _Vote:
    """A soft vote: the weights' combination of its members' values and base values."""

    def __init__(self, model: EnsembleModel, members: list[Any]) -> None:
        self.model, self.members = model, members
        self.method = "soft_vote(" + ", ".join(member.method for member in members) + ")"
        self.base_value = float(model.weights @ [member.base_value for member in members])

    def explain(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The members' log-odds straight from their explanations, bounded as ``EnsembleModel.vote``
        # bounds their probabilities; no round trip through probabilities.
        log_odds: Any = 0.0
        contributions: Any = 0.0
        for weight, member in zip(self.model.weights.tolist(), self.members, strict=True):
            member_log_odds, part = member.explain_log_odds(matrix)
            log_odds = log_odds + weight * np.minimum(np.maximum(member_log_odds, _LOWEST), _HIGHEST)
            contributions = contributions + weight * part
        return _sigmoid(log_odds), contributions


class _SampledPermutations:
    """Any other model: antithetic permutation sampling of the Shapley values (see the module docstring)."""

    method = "sampled_permutation_shap"

    def explain_log_odds(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, contributions = self.explain(matrix)
        return logit(probabilities), contributions

    def __init__(self, model: RawModel, reference: np.ndarray, column_group: np.ndarray, n_groups: int) -> None:
        self.model, self.reference, self.column_group, self.n_groups = model, reference, column_group, n_groups
        forward = np.argsort(np.random.default_rng(0).random((_PERMUTATION_PAIRS, reference.size)), axis=1)
        # Each column's step in every permutation: a permutation then its reverse.
        self.position = np.argsort(np.concatenate([forward, forward[:, ::-1]]), axis=1)
        self.base_value = float(logit(model.raw_proba(reference[None, :]))[0])

    def explain(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.empty(len(matrix))
        contributions = np.zeros((len(matrix), self.n_groups))
        start = 0
        while start < len(matrix):
            chunk = self._chunk(matrix, start)
            scores[chunk], contributions[chunk] = self._explain_rows(matrix[chunk])
            start = chunk.stop
        return scores, contributions

    def _chunk(self, matrix: np.ndarray, start: int) -> slice:
        rows_each = len(self.position) * (matrix.shape[1] + 1)
        return slice(start, min(len(matrix), start + max(1, _ROWS_PER_CALL // rows_each)))

    def _explain_rows(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_permutations = len(self.position)
        coalitions, plans = [], []
        for row in matrix:
            differs = np.flatnonzero(row != self.reference)
            # Coalition k of a permutation takes from the row the first k differing columns in its order.
            by_order = np.argsort(self.position[:, differs], axis=1)
            order, rank = differs[by_order], np.argsort(by_order, axis=1)
            from_row = rank[:, None, :] < np.arange(differs.size + 1)[None, :, None]
            coalition = np.repeat(self.reference[None, None, :], differs.size + 1, axis=1).repeat(n_permutations, 0)
            coalition[:, :, differs] = np.where(from_row, row[differs], self.reference[differs])
            coalitions.append(coalition.reshape(-1, row.size))
            plans.append(order)
        probabilities = self.model.raw_proba(np.concatenate(coalitions))
        log_odds = logit(probabilities)
        scores = np.empty(len(matrix))
        contributions = np.zeros((len(matrix), self.n_groups))
        start = 0
        for index, order in enumerate(plans):
            walk = log_odds[start : start + order.size + n_permutations].reshape(n_permutations, -1)
            scores[index] = probabilities[start + walk.shape[1] - 1]  # the first walk's last step is the row itself
            start += walk.size
            walk[:, 0] = self.base_value  # the reference's log-odds, scored once, so every row adds up to it
            np.add.at(contributions[index], self.column_group[order], np.diff(walk, axis=1) / n_permutations)
        return scores, contributions


def _attribution(model: RawModel, reference: np.ndarray, column_group: np.ndarray, n_groups: int) -> Any:
    if isinstance(model, LinearModel):
        return _Linear(model, reference, column_group, n_groups)
    if isinstance(model, EnsembleModel):
        return _Vote(model, [_attribution(member, reference, column_group, n_groups) for _, member, _ in model.members])
    if _is_compiled_trees(model):
        return _Trees(model, reference, column_group, n_groups)
    return _SampledPermutations(model, reference, column_group, n_groups)


def _is_compiled_trees(model: RawModel) -> bool:
    # Without importing app.serving.trees unless it is loaded: a bundle without trees never
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
    """The encoded reference customer: every feature present at its imputation value.

    Present, not missing: a missing value also sets its missing-indicator column, and an ordinary
    customer at the median must not differ from the reference there.
    """
    return schema.encode({spec.name: [spec.impute] for spec in schema.features}, 1).matrix[0]
