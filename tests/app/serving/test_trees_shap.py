"""The TreeSHAP kernel gives the exact Shapley values of a tree ensemble against one reference row.

Checked against the definition itself: every coalition of columns scored as a hybrid row (its
columns from the row, the others from the reference), on random trees that split on the same
column more than once along a path, with lone leaves among them.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from app.serving.trees import CompiledTrees

N_COLUMNS = 4


def random_ensemble(seed: int, n_trees: int = 6, *, average: bool = False, float32: bool = False) -> CompiledTrees:
    rng = np.random.default_rng(seed)
    feature, threshold, left, right, value, roots = [], [], [], [], [], []

    def grow(depth: int) -> int:
        index = len(feature)
        feature.append(0)
        threshold.append(0.0)
        left.append(index)
        right.append(index)
        value.append(float(rng.normal()))
        if depth > 0 and rng.random() < 0.8:
            feature[index] = int(rng.integers(N_COLUMNS))  # repeats along a path are likely
            threshold[index] = float(rng.normal())
            left[index], right[index] = grow(depth - 1), grow(depth - 1)
        return index

    for _ in range(n_trees):
        roots.append(grow(int(rng.integers(0, 6))))
    nodes = {
        "feature": np.asarray(feature, dtype=np.intp),
        "threshold": np.asarray(threshold, dtype=np.float32 if float32 else np.float64),
        "left": np.asarray(left, dtype=np.intp),
        "right": np.asarray(right, dtype=np.intp),
        "value": np.asarray(value),
    }
    return CompiledTrees(None, nodes, roots, strict_less=float32, float32=float32, average=average)


def brute_force_shapley(trees: CompiledTrees, row: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The Shapley values of ``v(S) = output(row on S, reference elsewhere)``, summed over every coalition."""

    def output(coalition: tuple[int, ...]) -> float:
        hybrid = reference.copy()
        hybrid[list(coalition)] = row[list(coalition)]
        return float(trees.outputs(trees.leaf_sums(hybrid[None, :]))[0])

    values = np.zeros(N_COLUMNS)
    for column in range(N_COLUMNS):
        others = [c for c in range(N_COLUMNS) if c != column]
        for size in range(N_COLUMNS):
            weight = math.factorial(size) * math.factorial(N_COLUMNS - size - 1) / math.factorial(N_COLUMNS)
            for coalition in itertools.combinations(others, size):
                values[column] += weight * (output((*coalition, column)) - output(coalition))
    return values


@pytest.mark.parametrize(
    ("seed", "average", "float32"), [(0, False, False), (1, False, True), (2, True, True), (3, True, False)]
)
def test_kernel_values_are_the_exact_shapley_values(seed: int, average: bool, float32: bool) -> None:
    trees = random_ensemble(seed, average=average, float32=float32)
    rng = np.random.default_rng(seed + 100)
    rows, reference = rng.normal(size=(12, N_COLUMNS)), rng.normal(size=N_COLUMNS)
    rows[::3, 1] = reference[1]  # a column at the reference is a null player

    outputs, values = trees.shap_values(rows, reference, np.arange(N_COLUMNS), N_COLUMNS)

    for row, row_values in zip(rows, values, strict=True):
        np.testing.assert_allclose(row_values, brute_force_shapley(trees, row, reference), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(values[::3, 1], 0.0)
    reference_output = trees.outputs(trees.leaf_sums(reference[None, :]))[0]
    np.testing.assert_allclose(values.sum(axis=1) + reference_output, outputs, rtol=0, atol=1e-9)
    np.testing.assert_allclose(outputs, trees.outputs(trees.leaf_sums(rows)), rtol=0, atol=1e-12)


def test_grouped_values_are_the_sums_of_their_columns() -> None:
    trees = random_ensemble(5)
    rng = np.random.default_rng(6)
    rows, reference = rng.normal(size=(300, N_COLUMNS)), rng.normal(size=N_COLUMNS)  # the GIL-releasing entry too

    _, per_column = trees.shap_values(rows, reference, np.arange(N_COLUMNS), N_COLUMNS)
    _, grouped = trees.shap_values(rows, reference, np.array([0, 1, 1, 2]), 3)

    expected = np.stack([per_column[:, 0], per_column[:, 1] + per_column[:, 2], per_column[:, 3]], axis=1)
    np.testing.assert_allclose(grouped, expected, rtol=0, atol=1e-12)
