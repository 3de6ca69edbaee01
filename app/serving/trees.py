"""Tree ensembles compiled to flat arrays and walked by machine code, for scoring and explaining.

XGBoost, LightGBM and scikit-learn's random forest each ship a native predictor, but their Python
wrappers cost tens to hundreds of microseconds per call (array interfaces, configuration, ctypes)
before the first tree is walked, and none of them can say "what would this customer score with one
feature set to the reference value" without building and scoring extra rows. So the service reads
each model's trees into flat arrays once, at load, and walks them with small loops that numba
compiles to machine code: one customer is scored and explained (each feature group occluded in
each tree that splits on it) in microseconds, and batches are walked a block of rows at a time.

A model is compiled only when its trees can be expressed exactly (binary objective, numeric
``<=``/``<`` splits) and only used after it reproduced the native scores on a probe set at load
time; anything else stays with the native library. The kernels are compiled on first use (the
service's warm-up, before it reports ready) and cached on disk beside this module when writable.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
from numba import njit

from bundle.scoring import EnsembleModel, RawModel


# ---- kernels (compiled; plain loops over the flat arrays) -----------------------------------------
@njit(cache=True)
def _goes_left(value, limit, strict_less):  # pragma: no cover
    return value < limit if strict_less else value <= limit


@njit(cache=True)
def _leaf(x, offset, node, feature, threshold, left, right, strict_less):  # pragma: no cover
    """The leaf that row ``x[offset:]`` reaches from ``node`` (leaves point to themselves)."""
    while left[node] != node:
        go_left = _goes_left(x[offset + feature[node]], threshold[node], strict_less)
        node = left[node] if go_left else right[node]
    return node


@njit(cache=True)
def _leaf_sums(x, n_rows, width, roots, feature, threshold, left, right, value, strict_less):  # pragma: no cover
    """Each row's sum of leaf values over all trees."""
    sums = np.zeros(n_rows)
    for row in range(n_rows):
        offset = row * width
        total = 0.0
        for tree in range(roots.size):
            total += value[_leaf(x, offset, roots[tree], feature, threshold, left, right, strict_less)]
        sums[row] = total
    return sums


# Rows walked together by the batch kernel: enough independent walks for the processor to overlap.
_BLOCK_ROWS = 32


@njit(cache=True)
def _leaf_sums_blocked(
    x, n_rows, width, roots, depths, feature, threshold, children, value, strict_less
):  # pragma: no cover
    """``_leaf_sums`` for many rows, the same sums (trees added in the same order), about twice as fast.

    One row's walk down a tree is a chain of dependent loads and unpredictable branches, so the
    processor mostly waits. Here each tree is walked by a block of rows a level at a time: the
    block's walks are independent, so the processor overlaps them, and the child is picked by index
    arithmetic (``children[2 * node + goes_right]``) instead of a branch. A leaf is its own child, so
    a row that reached its leaf stays there while the others go on; a level where no row moved ends
    the tree early (random forests' deep, unbalanced trees).
    """
    sums = np.zeros(n_rows)
    nodes = np.empty(_BLOCK_ROWS, dtype=np.intp)
    offsets = np.empty(_BLOCK_ROWS, dtype=np.intp)
    for start in range(0, n_rows, _BLOCK_ROWS):
        count = min(_BLOCK_ROWS, n_rows - start)
        for r in range(count):
            offsets[r] = (start + r) * width
        for tree in range(roots.size):
            for r in range(count):
                nodes[r] = roots[tree]
            for _ in range(depths[tree]):
                moved = False
                for r in range(count):
                    node = nodes[r]
                    goes_right = not _goes_left(x[offsets[r] + feature[node]], threshold[node], strict_less)
                    child = children[2 * node + goes_right]
                    moved |= child != node
                    nodes[r] = child
                if not moved:
                    break
            for r in range(count):
                sums[start + r] += value[nodes[r]]
    return sums


@njit(cache=True)
def _occluded_leaf(x, offset, reference, group, column_group, node, tree):  # pragma: no cover
    """``_leaf`` with the columns of ``group`` read from the reference row instead of the row."""
    feature, threshold, left, right, strict_less = tree
    while left[node] != node:
        column = feature[node]
        value = reference[column] if column_group[column] == group else x[offset + column]
        node = left[node] if _goes_left(value, threshold[node], strict_less) else right[node]
    return node


@njit(cache=True)
def _occlusion_sums(
    x, reference, n_rows, width, n_groups, column_group, roots, feature, threshold, left, right, value, strict_less
):  # pragma: no cover
    """Each row's leaf sum, and per feature group the change in it when that group takes the reference values.

    A group changes a tree's leaf only if the row differs from the reference in that group and
    the row's own path through the tree splits on it; every other (tree, group) pair keeps its
    leaf and is not walked again.
    """
    tree_arrays = (feature, threshold, left, right, strict_less)
    sums = np.zeros(n_rows)
    changes = np.zeros((n_rows, n_groups))
    differs = np.zeros(n_groups, dtype=np.bool_)
    # The last (row, tree) whose path split on each group, as row * trees + tree: no reset needed.
    on_path = np.full(n_groups, -1, dtype=np.int64)
    for row in range(n_rows):
        offset = row * width
        differs[:] = False
        for column in range(width):
            group = column_group[column]
            if group >= 0 and x[offset + column] != reference[column]:
                differs[group] = True
        total = 0.0
        for tree in range(roots.size):
            stamp = row * roots.size + tree
            node = roots[tree]
            while left[node] != node:
                column = feature[node]
                group = column_group[column]
                if group >= 0:
                    on_path[group] = stamp
                go_left = _goes_left(x[offset + column], threshold[node], strict_less)
                node = left[node] if go_left else right[node]
            base = value[node]
            total += base
            for group in range(n_groups):
                if differs[group] and on_path[group] == stamp:
                    leaf = _occluded_leaf(x, offset, reference, group, column_group, roots[tree], tree_arrays)
                    changes[row, group] += value[leaf] - base
        sums[row] = total
    return sums, changes


@njit(cache=True)
def _bounded_log_odds(sums, changes, offset, limit):  # pragma: no cover
    """Boosted trees' probabilities and per-group log-odds changes, clipped to +-``limit``, in one call.

    ``1 / (1 + exp(-margin))`` and ``clip(margin) - clip(margin + change)``: what a dozen numpy
    calls would compute, without their per-call cost (most of the work for one row).
    """
    n_rows, n_groups = changes.shape
    probabilities = np.empty(n_rows)
    contributions = np.empty((n_rows, n_groups))
    for row in range(n_rows):
        margin = sums[row] + offset
        probabilities[row] = 1.0 / (1.0 + np.exp(-margin))
        bounded = min(max(margin, -limit), limit)
        for group in range(n_groups):
            contributions[row, group] = bounded - min(max(changes[row, group] + margin, -limit), limit)
    return probabilities, contributions


# Entry points. Releasing the GIL costs little for a batch (other threads, /health and /predict
# among them, run meanwhile) but hurts a single record: the microseconds of machine code become a
# chance for a background thread to take the interpreter, and getting it back can take
# milliseconds. So each kernel has a GIL-holding entry for small inputs and a releasing one.
_RELEASE_GIL_FROM_ROWS = 256


@njit(cache=True, nogil=True)
def _leaf_sums_releasing(
    x, n_rows, width, roots, depths, feature, threshold, children, value, strict_less
):  # pragma: no cover
    return _leaf_sums_blocked(x, n_rows, width, roots, depths, feature, threshold, children, value, strict_less)


@njit(cache=True, nogil=True)
def _occlusion_sums_releasing(
    x, reference, n_rows, width, n_groups, column_group, roots, feature, threshold, left, right, value, strict_less
):  # pragma: no cover
    return _occlusion_sums(
        x, reference, n_rows, width, n_groups, column_group, roots, feature, threshold, left, right, value, strict_less
    )


# ---- the compiled model -------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _logit_limit(epsilon: float) -> float:
    """The logit of ``1 - epsilon``: log-odds are clipped to +-this."""
    return float(np.log((1.0 - epsilon) / epsilon))


class CompiledTrees:
    """A tree ensemble as flat node arrays, scored and explained by the kernels above.

    ``raw_proba`` has the same meaning as the native model's; ``explain`` gives each row's raw
    probability and, per feature group, the raw probability with that group at the reference.
    """

    def __init__(self, native: RawModel, nodes: dict[str, np.ndarray], roots: list[int], **rule: Any):
        self.native = native
        self.feature = nodes["feature"]
        self.threshold = nodes["threshold"]
        self.left, self.right, self.value = nodes["left"], nodes["right"], nodes["value"]
        self.roots = np.asarray(roots, dtype=np.intp)
        self.strict_less: bool = rule["strict_less"]  # XGBoost splits on x < t, the others on x <= t
        self.float32: bool = rule["float32"]  # XGBoost and scikit-learn compare in float32
        self.average: bool = rule["average"]  # random forest averages, boosting sums margins
        self.offset: float = rule.get("offset", 0.0)
        self.dtype = np.float32 if self.float32 else np.float64
        # For the batch kernel: node i's children at 2i (left) and 2i + 1 (right), and each tree's depth.
        self.children = np.ravel(np.column_stack([self.left, self.right]))
        self.depths = _tree_depths(self.left, self.right, self.roots)

    def _rows(self, matrix: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(matrix, dtype=self.dtype).ravel()

    def leaf_sums(self, matrix: np.ndarray) -> np.ndarray:
        n_rows, width = matrix.shape
        if n_rows >= _RELEASE_GIL_FROM_ROWS:
            return _leaf_sums_releasing(
                self._rows(matrix), n_rows, width, self.roots, self.depths, self.feature, self.threshold,
                self.children, self.value, self.strict_less,
            )  # fmt: skip
        return _leaf_sums(
            self._rows(matrix), n_rows, width, self.roots, self.feature, self.threshold, self.left, self.right,
            self.value, self.strict_less,
        )  # fmt: skip

    def raw_proba(self, matrix: np.ndarray) -> np.ndarray:
        return self.probability(self.leaf_sums(matrix))

    def probability(self, leaf_sum: np.ndarray) -> np.ndarray:
        if self.average:
            return leaf_sum / self.roots.size
        return 1.0 / (1.0 + np.exp(-(leaf_sum + self.offset)))

    def explain_log_odds(
        self, matrix: np.ndarray, reference: np.ndarray, column_group: np.ndarray, n_groups: int, epsilon: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(raw probabilities (n,), per group ``logit p(row) - logit p(row with the group at the reference)``).

        Probabilities are clipped to ``[epsilon, 1 - epsilon]`` before the logit. Boosted trees are
        margins already (``logit p`` is the leaf sum plus the offset), so no probability is formed
        and taken back through a logarithm.
        """
        if self.average:
            scores, occluded = self.explain(matrix, reference, column_group, n_groups)
            clipped = np.clip(scores, epsilon, 1.0 - epsilon)[:, None]
            occluded = np.clip(occluded, epsilon, 1.0 - epsilon)
            return scores, np.log(clipped / (1.0 - clipped)) - np.log(occluded / (1.0 - occluded))
        sums, changes = self._occlusion_sums(matrix, reference, column_group, n_groups)
        return _bounded_log_odds(sums, changes, self.offset, _logit_limit(epsilon))

    def explain(self, matrix: np.ndarray, reference: np.ndarray, column_group: np.ndarray, n_groups: int):
        """(raw probabilities (n,), raw probabilities with each group at the reference (n, groups)).

        ``column_group`` gives each matrix column's feature group (-1 for none).
        """
        sums, changes = self._occlusion_sums(matrix, reference, column_group, n_groups)
        return self.probability(sums), self.probability(sums[:, None] + changes)

    def _occlusion_sums(
        self, matrix: np.ndarray, reference: np.ndarray, column_group: np.ndarray, n_groups: int
    ) -> tuple[np.ndarray, np.ndarray]:
        n_rows, width = matrix.shape
        kernel = _occlusion_sums_releasing if n_rows >= _RELEASE_GIL_FROM_ROWS else _occlusion_sums
        return kernel(
            self._rows(matrix), np.ascontiguousarray(reference, dtype=self.dtype), n_rows, width, n_groups,
            column_group, self.roots, self.feature, self.threshold, self.left, self.right, self.value,
            self.strict_less,
        )  # fmt: skip


def _tree_depths(left: np.ndarray, right: np.ndarray, roots: np.ndarray) -> np.ndarray:
    """Each tree's depth (edges on its longest path; 0 for a lone leaf), without recursion."""
    depths = np.zeros(roots.size, dtype=np.intp)
    for tree, root in enumerate(roots.tolist()):
        level, deepest = [root], 0
        while True:
            below = [child for node in level if left[node] != node for child in (left[node], right[node])]
            if not below:
                break
            deepest += 1
            level = below
        depths[tree] = deepest
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
    # The base score's margin is not in the dump; the probe check below measures and verifies it.
    nodes = builder.arrays(True)
    return CompiledTrees(model, nodes, roots, strict_less=True, float32=True, average=False)


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
    nodes = builder.arrays(False)
    return CompiledTrees(model, nodes, roots, strict_less=False, float32=True, average=True)


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
    # Enough rows for the batch kernel; its first rows are scored by the small-input one too.
    probe = np.random.default_rng(0).normal(size=(_RELEASE_GIL_FROM_ROWS, width))
    probe *= (np.arange(len(probe)) % 2)[:, None]
    probe[::3] = np.round(probe[::3])  # one-hot-like 0/1 columns too
    native = model.raw_proba(probe)
    if family == "xgboost":
        compiled.offset = float(np.median(_margin(native) - _margin(compiled.raw_proba(probe))))
    small = slice(0, 64)
    if not (
        np.allclose(compiled.raw_proba(probe), native, rtol=0.0, atol=1e-6)
        and np.allclose(compiled.raw_proba(probe[small]), native[small], rtol=0.0, atol=1e-6)
    ):
        return model
    return compiled


def _margin(probability: np.ndarray) -> np.ndarray:
    return np.log(probability / (1.0 - probability))


def compile_kernels() -> None:
    """Compile (or load from the on-disk cache) every kernel for both value types, on a one-node tree."""
    one_leaf = {"feature": np.zeros(1, dtype=np.intp), "left": np.zeros(1, dtype=np.intp)}
    one_leaf["right"], one_leaf["value"] = one_leaf["left"], np.zeros(1)
    for float32 in (False, True):
        one_leaf["threshold"] = np.zeros(1, dtype=np.float32 if float32 else np.float64)
        trees = CompiledTrees(None, one_leaf, [0], strict_less=float32, float32=float32, average=False)
        for rows in (1, _RELEASE_GIL_FROM_ROWS):
            trees.explain(np.zeros((rows, 1)), np.zeros(1), np.zeros(1, dtype=np.intp), 1)
            trees.explain_log_odds(np.zeros((rows, 1)), np.zeros(1), np.zeros(1, dtype=np.intp), 1, 1e-7)
            trees.raw_proba(np.zeros((rows, 1)))


if __name__ == "__main__":  # the Dockerfile runs this at build time, so no container start compiles
    compile_kernels()
