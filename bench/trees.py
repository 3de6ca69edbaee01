"""Compiled tree ensembles against their native library, in one process, on one bundle.

    python -m bench.trees --model-dir DIR    # a directory with a `current` bundle (e.g. from bench.serving)

For the bundle's tree model (a soft vote's tree member when it is an ensemble) it times, on the
same rows: one record and 10,000 records through the native library (``raw_proba``) and through
the compiled kernels (``app.serving.trees``), and one record's explanation (every feature group
occluded) through the kernels and through the general way, one extra scored row per feature that
differs from the reference. Each figure is the median of repeated calls; ratios are what to read.
Also checks that both give the same numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.serving.explain import column_groups, reference_row
from app.serving.trees import CompiledTrees, compile_trees
from bundle.scoring import EnsembleModel, load_raw_model
from bundle.store import current_bundle_dir, verify_bundle


def median_seconds(call: Callable[[], Any], repeats: int) -> float:
    call()  # first call: compilation or caches
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def tree_member(family: str, native: Any, width: int) -> tuple[Any, CompiledTrees]:
    """The native tree model and its compiled form (a soft vote's tree member)."""
    members = native.members if isinstance(native, EnsembleModel) else [(family, native, 1.0)]
    for member_family, model, _ in members:
        compiled = compile_trees(member_family, model, width)
        if isinstance(compiled, CompiledTrees):
            return model, compiled
    raise SystemExit("this bundle has no tree model the service compiles")


def general_occlusion(model: Any, row: np.ndarray, reference: np.ndarray, groups: list[slice]) -> np.ndarray:
    """Each group's occluded probability the general way: one extra scored row per differing feature."""
    occluded = []
    for columns in groups:
        if np.array_equal(row[0, columns], reference[columns]):
            continue
        copy = row.copy()
        copy[0, columns] = reference[columns]
        occluded.append(copy)
    return model.raw_proba(np.concatenate([row, *occluded]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2000, help="calls per single-record figure")
    args = parser.parse_args(argv)

    bundle = current_bundle_dir(args.model_dir)
    manifest = verify_bundle(bundle)
    width = manifest.schema.n_encoded
    native, compiled = tree_member(manifest.model_family, load_raw_model(bundle, manifest), width)
    groups = [columns for _, columns in manifest.schema.encoded_groups()]
    column_group = column_groups(manifest.schema)
    reference = reference_row(manifest.schema)
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(10_000, width))
    indicator_like = rng.random(width) < 0.7  # most encoded columns are 0/1 one-hot columns
    rows[:, indicator_like] = np.round(rows[:, indicator_like].clip(0, 1))
    one = rows[:1]

    # Same numbers both ways before any timing.
    assert np.allclose(compiled.raw_proba(rows), native.raw_proba(rows), rtol=0, atol=1e-6)
    _, occluded = compiled.explain(one, reference, column_group, len(groups))
    for group, columns in enumerate(groups):
        copy = one.copy()
        copy[0, columns] = reference[columns]
        assert abs(occluded[0, group] - native.raw_proba(copy)[0]) < 1e-6, group

    figures = [
        ("1 record: native raw_proba", median_seconds(lambda: native.raw_proba(one), args.repeats), "us"),
        ("1 record: compiled raw_proba", median_seconds(lambda: compiled.raw_proba(one), args.repeats), "us"),
        (
            "1 record explained: general occlusion (extra rows, native)",
            median_seconds(lambda: general_occlusion(native, one, reference, groups), args.repeats // 4),
            "us",
        ),
        (
            "1 record explained: compiled occlusion",
            median_seconds(lambda: compiled.explain(one, reference, column_group, len(groups)), args.repeats),
            "us",
        ),
        ("10,000 records: native raw_proba", median_seconds(lambda: native.raw_proba(rows), 9), "ms"),
        ("10,000 records: compiled raw_proba", median_seconds(lambda: compiled.raw_proba(rows), 9), "ms"),
    ]
    print(f"bundle {manifest.version} ({manifest.model_family}), {compiled.roots.size} trees, {width} columns")
    for label, seconds, unit in figures:
        value = seconds * (1e6 if unit == "us" else 1e3)
        print(f"{label:<58} {value:10.1f} {unit}")
    for slow, fast in [(0, 1), (2, 3), (4, 5)]:
        print(f"{figures[slow][0]} / compiled: {figures[slow][1] / figures[fast][1]:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
