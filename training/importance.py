"""Permutation importance per input feature: how much validation ROC-AUC drops when a feature is scrambled.

Importance is measured per *input* feature, not per encoded column, so a categorical feature's
one-hot columns (and a numeric feature's missing-value indicator) are shuffled together, the
way a customer's value would really change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from bundle.features import FeatureSchema
from training.evaluation import as_labels

ScorerFn = Callable[[np.ndarray], np.ndarray]


def permuted_feature_matrix(base: np.ndarray, columns: slice, order: np.ndarray) -> np.ndarray:
    """The matrix with one feature's encoded columns taken from the rows in ``order``.

    Encoding is row by row and feature by feature (imputation, caps and scaling are fixed by the
    schema), so this equals re-encoding the permuted cleaned values with ``schema.encode`` while
    costing one copy instead of a full encode per repeat.
    """
    matrix = base.copy()
    matrix[:, columns] = base[order, columns]
    return matrix


def auc(y: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64).ravel()))


def permutation_importance_by_feature(
    scorer_fn: ScorerFn,
    schema: FeatureSchema,
    columns_val: Mapping[str, Sequence[Any]],
    y_val: Any,
    *,
    seed: int,
    repeats: int = 3,
) -> dict[str, float]:
    """Mean drop in validation ROC-AUC when each input feature's values are shuffled across customers.

    ``scorer_fn`` maps an encoded matrix to churn probabilities; ``columns_val`` holds the cleaned
    validation values per feature (what :meth:`FeatureSchema.encode` takes). Returns feature name
    -> importance, most important first. Near-zero or negative values mean the model does not rely
    on the feature (a negative value is noise: shuffling happened to help).
    """
    y = as_labels(y_val)
    if not 0 < y.sum() < y.size:
        raise ValueError("permutation importance needs churners and non-churners in the validation set")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    base = schema.encode(columns_val, y.size).matrix
    baseline = auc(y, scorer_fn(base))
    rng = np.random.default_rng(seed)
    importance: dict[str, float] = {}
    for name, columns in schema.encoded_groups():
        drops = [
            baseline - auc(y, scorer_fn(permuted_feature_matrix(base, columns, rng.permutation(y.size))))
            for _ in range(repeats)
        ]
        importance[name] = float(np.mean(drops))
    return dict(sorted(importance.items(), key=lambda item: item[1], reverse=True))
