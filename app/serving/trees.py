"""Tree ensembles as flat node arrays, scored and explained (exact Shapley values) by compiled loops.

XGBoost, LightGBM and scikit-learn's random forest are read once, at load, into flat arrays (leaves
point to themselves) that two small numba kernels walk: one sums each row's leaves (the score), the
other computes, in the same walk, exact interventional TreeSHAP against one reference row:

Walk each tree following the row and the reference together. Where they part at a split on
column ``c``, follow both: one path takes ``c`` from the row, the other from the reference, and
a column already decided on the path keeps its side. A leaf reached with the set ``A`` of columns
from the row and ``B`` from the reference is the only leaf of that tree for every coalition holding
``A`` and none of ``B``, so its value ``v`` adds ``v (|A|-1)! |B|! / (|A|+|B|)!`` to each column of
``A`` and subtracts ``v |A|! (|B|-1)! / (|A|+|B|)!`` from each column of ``B`` (the Shapley weights of
the coalitions that reach it). The values are added per feature group as they are found.

The result is the model's raw output: a margin for boosted trees, a probability for a random forest
(the mean of its trees). A model is compiled only when its trees can be expressed exactly (binary
objective, numeric ``<=``/``<`` splits) and reproduce the native scores on a probe set at load time;
anything else stays with the native library. The kernels are compiled on first use and cached on
disk beside this module when it is writable (``python -m app.serving.trees`` fills the cache).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from numba import njit

from bundle.scoring import EnsembleModel, RawModel


@njit(cache=True)
def _goes_left(value, limit, strict_less):  # pragma: no cover
    return value < limit if strict_less else value <= limit


# Rows walked together: enough independent walks for the processor to overlap.
_BLOCK_ROWS = 32


@njit(cache=True)
def _leaf_sums(x, roots, depths, feature, threshold, children, value, strict_less):  # pragma: no cover
    """Each row's sum of leaf values over all trees.

    One row's walk down a tree is a chain of dependent loads and unpredictable branches, so each
    tree is walked by a block of rows a level at a time: their walks are independent and the
    processor overlaps them, the child is picked by index arithmetic (``children[2 * node + right]``)
    instead of a branch, a leaf is its own child, and a level where no row moved ends the tree.
    """
    n_rows = x.shape[0]
    sums = np.zeros(n_rows)
    nodes = np.empty(_BLOCK_ROWS, dtype=np.intp)
    for start in range(0, n_rows, _BLOCK_ROWS):
        count = min(_BLOCK_ROWS, n_rows - start)
        for tree in range(roots.size):
            nodes[:count] = roots[tree]
            for _ in range(depths[tree]):
                moved = False
                for r in range(count):
                    node = nodes[r]
                    goes_right = not _goes_left(x[start + r, feature[node]], threshold[node], strict_less)
                    child = children[2 * node + goes_right]
                    moved |= child != node
                    nodes[r] = child
                if not moved:
                    break
            for r in range(count):
                sums[start + r] += value[nodes[r]]
    return sums


@njit(cache=True)
def _tree_shap(
    x, reference, column_group, n_groups, max_depth, roots, feature, threshold, left, right, value, strict_less
):  # pragma: no cover
    """Each row's leaf sum and its exact interventional Shapley values against ``reference``, per group."""
    n_rows = x.shape[0]
    sums = np.zeros(n_rows)
    contributions = np.zeros((n_rows, n_groups))
    factorial = np.ones(max_depth + 2)
    for k in range(1, max_depth + 2):
        factorial[k] = factorial[k - 1] * k
    # Pending walks (node, path length, column decided on entering, from the row?) and the current path.
    stack_node = np.empty(2 * max_depth + 2, dtype=np.intp)
    stack_length = np.empty(2 * max_depth + 2, dtype=np.intp)
    stack_column = np.empty(2 * max_depth + 2, dtype=np.intp)
    stack_from_row = np.empty(2 * max_depth + 2, dtype=np.bool_)
    path_column = np.empty(max_depth + 1, dtype=np.intp)
    path_from_row = np.empty(max_depth + 1, dtype=np.bool_)
    for row in range(n_rows):
        for tree in range(roots.size):
            stack_node[0], stack_length[0], stack_column[0], top = roots[tree], 0, -1, 1
            while top > 0:
                top -= 1
                node, length, column = stack_node[top], stack_length[top], stack_column[top]
                if column >= 0:
                    path_column[length], path_from_row[length] = column, stack_from_row[top]
                    length += 1
                if left[node] == node:
                    from_row = 0
                    for i in range(length):
                        from_row += path_from_row[i]
                    from_reference = length - from_row
                    if from_reference == 0:
                        sums[row] += value[node]
                    if length == 0:
                        continue
                    gain = value[node] * factorial[max(from_row - 1, 0)] * factorial[from_reference] / factorial[length]
                    loss = value[node] * factorial[from_row] * factorial[max(from_reference - 1, 0)] / factorial[length]
                    for i in range(length):
                        group = column_group[path_column[i]]
                        contributions[row, group] += gain if path_from_row[i] else -loss
                    continue
                column = feature[node]
                row_left = _goes_left(x[row, column], threshold[node], strict_less)
                reference_left = _goes_left(reference[column], threshold[node], strict_less)
                decided = -1
                for i in range(length):
                    if path_column[i] == column:
                        decided = 1 if path_from_row[i] else 0
                if decided >= 0 or row_left == reference_left:
                    goes_left = reference_left if decided == 0 else row_left
                    stack_node[top], stack_length[top], stack_column[top] = (
                        left[node] if goes_left else right[node],
                        length,
                        -1,
                    )
                    top += 1
                    continue
                for take_row in (True, False):
                    goes_left = row_left if take_row else reference_left
                    stack_node[top], stack_length[top] = left[node] if goes_left else right[node], length
                    stack_column[top], stack_from_row[top] = column, take_row
                    top += 1
    return sums, contributions


# Releasing the GIL lets other threads (/health, /predict) run during a long batch, but for a
# single record it invites a background thread to take the interpreter, and getting it back can
# take milliseconds: small inputs keep it.
_RELEASE_GIL_FROM_ROWS = 256


@njit(cache=True, nogil=True)
def _leaf_sums_releasing(x, roots, depths, feature, threshold, children, value, strict_less):  # pragma: no cover
    return _leaf_sums(x, roots, depths, feature, threshold, children, value, strict_less)


@njit(cache=True, nogil=True)
def _tree_shap_releasing(
    x, reference, column_group, n_groups, max_depth, roots, feature, threshold, left, right, value, strict_less
):  # pragma: no cover
    return _tree_shap(
        x, reference, column_group, n_groups, max_depth, roots, feature, threshold, left, right, value, strict_less
    )


class CompiledTrees:
    """A tree ensemble as flat node arrays: ``raw_proba`` as the native model's, plus exact Shapley values."""

    def __init__(self, native: RawModel, nodes: dict[str, np.ndarray], roots: list[int], **rule: Any):
        self.native = native
        self.feature, self.threshold = nodes["feature"], nodes["threshold"]
        self.left, self.right, self.value = nodes["left"], nodes["right"], nodes["value"]
        self.roots = np.asarray(roots, dtype=np.intp)
        self.strict_less: bool = rule["strict_less"]  # XGBoost splits on x < t, the others on x <= t
        self.float32: bool = rule["float32"]  # XGBoost and scikit-learn compare in float32
        self.average: bool = rule["average"]  # random forest averages probabilities, boosting sums margins
        self.offset: float = rule.get("offset", 0.0)
        # For the scorer: node i's children at 2i (left) and 2i + 1 (right), and each tree's depth.
        self.children = np.ravel(np.column_stack([self.left, self.right]))
        self.depths = _tree_depths(self.left, self.right, self.roots)
        self.max_depth = int(self.depths.max(initial=0))

    def _rows(self, matrix: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(matrix, dtype=np.float32 if self.float32 else np.float64).reshape(len(matrix), -1)

    def leaf_sums(self, matrix: np.ndarray) -> np.ndarray:
        kernel = _leaf_sums_releasing if len(matrix) >= _RELEASE_GIL_FROM_ROWS else _leaf_sums
        tree = (self.roots, self.depths, self.feature, self.threshold, self.children, self.value, self.strict_less)
        return kernel(self._rows(matrix), *tree)

    def outputs(self, leaf_sums: np.ndarray) -> np.ndarray:
        """The model's raw outputs (margins, or a forest's probabilities) from leaf sums."""
        return leaf_sums / self.roots.size if self.average else leaf_sums + self.offset

    def raw_proba(self, matrix: np.ndarray) -> np.ndarray:
        outputs = self.outputs(self.leaf_sums(matrix))
        return outputs if self.average else 1.0 / (1.0 + np.exp(-outputs))

    def shap_values(
        self, matrix: np.ndarray, reference: np.ndarray, column_group: np.ndarray, n_groups: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(raw outputs (n,), exact interventional Shapley values of the output against ``reference``, (n, groups)).

        ``column_group`` gives each matrix column's group; a group's value is the sum of its columns'.
        """
        kernel = _tree_shap_releasing if len(matrix) >= _RELEASE_GIL_FROM_ROWS else _tree_shap
        sums, contributions = kernel(
            self._rows(matrix), self._rows(reference[None, :])[0], column_group, n_groups, self.max_depth,
            self.roots, self.feature, self.threshold, self.left, self.right, self.value, self.strict_less,
        )  # fmt: skip
        return self.outputs(sums), contributions / self.roots.size if self.average else contributions


def _tree_depths(left: np.ndarray, right: np.ndarray, roots: np.ndarray) -> np.ndarray:
    """Each tree's depth (edges on its longest path; 0 for a lone leaf), without recursion."""
    depths = np.zeros(roots.size, dtype=np.intp)
    for tree, root in enumerate(roots.tolist()):
        level = [root]
        while True:
            level = [child for node in level if left[node] != node for child in (left[node], right[node])]
            if not level:
                break
            depths[tree] += 1
    return depths


class _TreeBuilder:
    """Collects nodes of many trees into flat arrays (leaves point to themselves)."""

    def __init__(self) -> None:
        self.feature: list[int] = []
        self.threshold: list[float] = []
        self.left: list[int] = []
        self.right: list[int] = []
        self.value: list[float] = []

    def add(self, feature: int, threshold: float, value: float) -> int:
        self.feature.append(feature)
        self.threshold.append(threshold)
        self.left.append(len(self.left))
        self.right.append(len(self.right))
        self.value.append(value)
        return len(self.feature) - 1

    def arrays(self, float32: bool) -> dict[str, np.ndarray]:
        return {
            "feature": np.asarray(self.feature, dtype=np.intp),
            "threshold": np.asarray(self.threshold, dtype=np.float32 if float32 else np.float64),
            "left": np.asarray(self.left, dtype=np.intp),
            "right": np.asarray(self.right, dtype=np.intp),
            "value": np.asarray(self.value, dtype=np.float64),
        }


def _lightgbm_trees(model: Any) -> CompiledTrees | None:
    dump = model.booster.dump_model()
    if not str(dump.get("objective", "")).startswith("binary"):
        return None
    builder = _TreeBuilder()

    def walk(node: dict[str, Any]) -> int | None:
        if "leaf_value" in node:
            return builder.add(0, 0.0, float(node["leaf_value"]))
        if node.get("decision_type") != "<=" or node.get("missing_type") not in ("None", "NaN"):
            return None  # categorical or zero-as-missing splits: leave them to LightGBM
        index = builder.add(int(node["split_feature"]), float(node["threshold"]), 0.0)
        left, right = walk(node["left_child"]), walk(node["right_child"])
        if left is None or right is None:
            return None
        builder.left[index], builder.right[index] = left, right
        return index

    roots = [walk(tree["tree_structure"]) for tree in dump["tree_info"]]
    if any(root is None for root in roots):
        return None
    return CompiledTrees(model, builder.arrays(False), roots, strict_less=False, float32=False, average=False)


def _xgboost_trees(model: Any) -> CompiledTrees | None:
    booster = model.booster
    if json.loads(booster.save_config())["learner"]["objective"]["name"] != "binary:logistic":
        return None
    names = booster.feature_names
    builder = _TreeBuilder()

    def column(split: str) -> int:
        return names.index(split) if names else int(split.lstrip("f"))

    def walk(node: dict[str, Any]) -> int:
        if "leaf" in node:
            return builder.add(0, 0.0, float(node["leaf"]))
        index = builder.add(column(node["split"]), float(node["split_condition"]), 0.0)
        children = {child["nodeid"]: walk(child) for child in node["children"]}
        builder.left[index], builder.right[index] = children[node["yes"]], children[node["no"]]
        return index

    roots = [walk(json.loads(tree)) for tree in booster.get_dump(dump_format="json")]
    # The base score's margin is not in the dump; compile_trees measures and verifies it on the probe.
    return CompiledTrees(model, builder.arrays(True), roots, strict_less=True, float32=True, average=False)


def _forest_trees(model: Any) -> CompiledTrees | None:
    forest = model.estimator
    if not hasattr(forest, "estimators_") or list(forest.classes_) != [0, 1]:
        return None
    builder = _TreeBuilder()
    roots = []
    for estimator in forest.estimators_:
        tree = estimator.tree_
        base = len(builder.feature)
        counts = tree.value[:, 0, :]
        positive = counts[:, 1] / np.maximum(counts.sum(axis=1), 1e-300)
        for node in range(tree.node_count):
            leaf = tree.children_left[node] < 0
            builder.add(0 if leaf else int(tree.feature[node]), float(tree.threshold[node]), float(positive[node]))
            if not leaf:
                builder.left[-1] = base + int(tree.children_left[node])
                builder.right[-1] = base + int(tree.children_right[node])
        roots.append(base)
    return CompiledTrees(model, builder.arrays(False), roots, strict_less=False, float32=True, average=True)


def compile_trees(family: str, model: RawModel, width: int) -> RawModel:
    """``model`` compiled when that reproduces the native scores, else ``model`` itself.

    A soft-vote ensemble keeps its members and weights; each tree member is compiled under its own
    family's rules.
    """
    if isinstance(model, EnsembleModel):
        return EnsembleModel(
            [(member, compile_trees(member, raw, width), weight) for member, raw, weight in model.members]
        )
    builders = {"lightgbm": _lightgbm_trees, "xgboost": _xgboost_trees, "random_forest": _forest_trees}
    if family not in builders:
        return model
    try:
        compiled = builders[family](model)
    except Exception:  # an unfamiliar dump layout: the native library still works
        return model
    if compiled is None:
        return model
    probe = np.random.default_rng(0).normal(size=(_RELEASE_GIL_FROM_ROWS, width))
    probe *= (np.arange(len(probe)) % 2)[:, None]
    probe[::3] = np.round(probe[::3])  # one-hot-like 0/1 columns too
    native = model.raw_proba(probe)
    if family == "xgboost":
        compiled.offset = float(np.median(_margin(native) - _margin(compiled.raw_proba(probe))))
    small = slice(0, 64)  # the GIL-holding entry's inputs too
    if not (
        np.allclose(compiled.raw_proba(probe), native, rtol=0.0, atol=1e-6)
        and np.allclose(compiled.raw_proba(probe[small]), native[small], rtol=0.0, atol=1e-6)
    ):
        return model
    return compiled


def _margin(probability: np.ndarray) -> np.ndarray:
    return np.log(probability / (1.0 - probability))


def compile_kernels() -> None:
    """Compile (or load from the on-disk cache) both kernels for every (row, threshold) value type in use."""
    one_leaf = {"feature": np.zeros(1, dtype=np.intp), "left": np.zeros(1, dtype=np.intp)}
    one_leaf["right"], one_leaf["value"] = one_leaf["left"], np.zeros(1)
    # LightGBM: float64 rows and thresholds; XGBoost: float32 both; random forest: float32 rows, float64 thresholds.
    for float32, float32_thresholds in ((False, False), (True, True), (True, False)):
        one_leaf["threshold"] = np.zeros(1, dtype=np.float32 if float32_thresholds else np.float64)
        trees = CompiledTrees(None, one_leaf, [0], strict_less=float32, float32=float32, average=False)
        for rows in (1, _RELEASE_GIL_FROM_ROWS):
            trees.raw_proba(np.zeros((rows, 1)))
            trees.shap_values(np.zeros((rows, 1)), np.zeros(1), np.zeros(1, dtype=np.intp), 1)


if __name__ == "__main__":  # the Dockerfile runs this at build time, so no container start compiles
    compile_kernels()
