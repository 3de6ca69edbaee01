"""Tree machinery bake-off: the service's compiled kernels against the libraries, on the same rows, in one run.

    python -m bench.trees                      # trains small LightGBM, XGBoost and random-forest bundles
    python -m bench.trees --data TELCO.csv     # the same three, trained on that table
    python -m bench.trees --model-dir DIR      # the tree model(s) of the bundle DIR/current names

For each tree model it times one record scored, 10,000 records scored, one record explained and
1,000 records explained through: the numba kernels (``app.serving.trees``); the native library
(``raw_proba``; its ``pred_contrib`` explanations are path-dependent TreeSHAP, other numbers than the
service's, timed for scale only); shap's ``TreeExplainer`` (interventional, the reference as the one
background row: the service's numbers); lleaves (LightGBM) and treelite + tl2cgen (compiled C, gcc),
with their compile times. Every engine's numbers are checked against the native ones first. Each
figure is the median of repeated calls; the ratio to the kernels is what to read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.serving.explain import column_groups, reference_row
from app.serving.trees import CompiledTrees, compile_trees
from bundle.features import FeatureSchema
from bundle.scoring import EnsembleModel, load_raw_model
from bundle.store import current_bundle_dir, verify_bundle

TREE_FAMILIES = ("lightgbm", "xgboost", "random_forest")
FIGURES = ("score 1 record", "score 10,000 records", "explain 1 record", "explain 1,000 records")
ENGINES = ("numba kernels", "native library", "shap TreeExplainer", "native pred_contrib", "lleaves", "tl2cgen")


@dataclass
class Engine:
    name: str
    score: Callable[[np.ndarray], np.ndarray] | None = None
    explain: Callable[[np.ndarray], Any] | None = None
    compile_seconds: float | None = None
    unavailable: str = ""


def median_seconds(call: Callable[[], Any], repeats: int, budget_seconds: float = 2.0) -> float:
    """Median of up to ``repeats`` timed calls after one untimed one, stopping once the budget is spent."""
    call()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_seconds
    while len(samples) < repeats and (len(samples) < 3 or time.perf_counter() < deadline):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def tree_models(family: str, native: Any, width: int) -> list[tuple[str, Any, CompiledTrees]]:
    """(family, native model, compiled form) of every tree model in the bundle (a soft vote's members too)."""
    members = native.members if isinstance(native, EnsembleModel) else [(family, native, 1.0)]
    found = []
    for member_family, model, _ in members:
        compiled = compile_trees(member_family, model, width)
        if isinstance(compiled, CompiledTrees):
            found.append((member_family, model, compiled))
    if not found:
        raise SystemExit("this bundle has no tree model the service compiles")
    return found


def sample_customers(schema: FeatureSchema, n_rows: int, seed: int = 0) -> np.ndarray:
    """Encoded customers with every feature drawn over its training range or categories."""
    rng = np.random.default_rng(seed)
    columns: dict[str, list[Any]] = {}
    for spec in schema.features:
        if spec.kind == "numeric":
            low = spec.minimum if spec.minimum is not None else 0.0
            high = spec.maximum if spec.maximum is not None else 2.0 * abs(spec.impute or 1.0)
            columns[spec.name] = rng.uniform(low, high, n_rows).tolist()
        elif spec.kind == "boolean":
            columns[spec.name] = (rng.random(n_rows) < 0.5).tolist()
        else:
            columns[spec.name] = rng.choice(spec.categories, n_rows).tolist()
    return schema.encode(columns, n_rows).matrix


def native_engines(family: str, native: Any, reference: np.ndarray) -> list[Engine]:
    import shap

    engines = [Engine("native library", score=native.raw_proba)]
    tree = shap.TreeExplainer(
        native.estimator, data=reference[None, :], feature_perturbation="interventional", model_output="raw"
    )
    engines.append(Engine("shap TreeExplainer", explain=tree.shap_values))
    if family == "lightgbm":
        contributions = Engine(
            "native pred_contrib", explain=lambda rows: native.booster.predict(rows, pred_contrib=True, num_threads=1)
        )
    elif family == "xgboost":
        from xgboost import DMatrix

        contributions = Engine(
            "native pred_contrib", explain=lambda rows: native.booster.predict(DMatrix(rows), pred_contribs=True)
        )
    else:
        contributions = Engine("native pred_contrib", unavailable="scikit-learn has none")
    return [*engines, contributions]


def lleaves_engine(family: str, native: Any, workdir: Path) -> Engine:
    if family != "lightgbm":
        return Engine("lleaves", unavailable="LightGBM only")
    try:
        import lleaves

        model_file = workdir / "lightgbm.txt"
        native.booster.save_model(str(model_file))
        started = time.perf_counter()
        model = lleaves.Model(model_file=str(model_file))
        model.compile()
        seconds = time.perf_counter() - started
    except Exception as exc:  # an incompatible llvmlite, among others: reported, not fatal
        return Engine("lleaves", unavailable=f"{type(exc).__name__}: {exc}"[:120])
    return Engine("lleaves", score=lambda rows: model.predict(rows, n_jobs=1), compile_seconds=seconds)


def tl2cgen_engine(family: str, native: Any, workdir: Path) -> Engine:
    try:
        import tl2cgen
        import treelite

        started = time.perf_counter()
        if family == "lightgbm":
            model = treelite.frontend.from_lightgbm(native.booster)
        elif family == "xgboost":
            model = treelite.frontend.from_xgboost(native.booster)
        else:
            model = treelite.sklearn.import_model(native.estimator)
        library = workdir / f"{family}.so"
        tl2cgen.export_lib(model, toolchain="gcc", libpath=str(library))
        predictor = tl2cgen.Predictor(str(library), nthread=1)
        seconds = time.perf_counter() - started
    except Exception as exc:  # no gcc, among others: reported, not fatal
        return Engine("tl2cgen", unavailable=f"{type(exc).__name__}: {exc}"[:120])
    dtype = "float64" if family == "lightgbm" else "float32"

    def score(rows: np.ndarray) -> np.ndarray:
        matrix = tl2cgen.DMatrix(np.ascontiguousarray(rows, dtype=dtype), dtype=dtype)
        return predictor.predict(matrix).reshape(len(rows), -1)[:, -1]

    return Engine("tl2cgen", score=score, compile_seconds=seconds)


def check_engines(
    engines: list[Engine], native: Any, compiled: CompiledTrees, rows: np.ndarray, reference: np.ndarray
) -> float:
    """Every engine scores as the native library does; returns the largest gap between the kernels' and
    shap's per-column values (printed, not asserted: the tests hold the kernels to the Shapley definition)."""
    expected = native.raw_proba(rows)
    for engine in engines:
        if engine.score is not None:
            assert np.allclose(engine.score(rows), expected, rtol=0, atol=1e-6), engine.name
    width = rows.shape[1]
    _, kernel_values = compiled.shap_values(rows, reference, np.arange(width), width)
    shap_explain = next(engine.explain for engine in engines if engine.name == "shap TreeExplainer")
    assert shap_explain is not None
    shap_values = np.asarray(shap_explain(rows))
    if shap_values.ndim == 3:  # a forest's values per class
        shap_values = shap_values[..., 1]
    return float(np.abs(kernel_values - shap_values).max())


def measure(engine: Engine, rows: np.ndarray, repeats: int) -> dict[str, float | None]:
    one = rows[:1]
    calls = {
        "score 1 record": (engine.score, one, repeats),
        "score 10,000 records": (engine.score, rows[:10_000], max(3, repeats // 200)),
        "explain 1 record": (engine.explain, one, repeats),
        "explain 1,000 records": (engine.explain, rows[:1_000], max(3, repeats // 200)),
    }
    return {
        figure: None if call is None else median_seconds(lambda call=call, data=data: call(data), count)
        for figure, (call, data, count) in calls.items()
    }


def bake_off(
    bundle: Path, repeats: int, rows: int, compilers: bool, workdir: Path
) -> list[tuple[str, dict[str, Engine], dict[str, dict[str, float | None]]]]:
    manifest = verify_bundle(bundle)
    schema = manifest.schema
    reference, column_group = reference_row(schema), column_groups(schema)
    data = sample_customers(schema, rows)
    results = []
    for family, native, compiled in tree_models(
        manifest.model_family, load_raw_model(bundle, manifest), schema.n_encoded
    ):
        kernels = Engine(
            "numba kernels",
            score=compiled.raw_proba,
            explain=lambda matrix, compiled=compiled: compiled.shap_values(
                matrix, reference, column_group, len(schema.names)
            ),
        )
        engines = [kernels, *native_engines(family, native, reference)]
        if compilers:
            engines += [lleaves_engine(family, native, workdir), tl2cgen_engine(family, native, workdir)]
        gap = check_engines(engines, native, compiled, data[:200], reference)
        figures = {engine.name: measure(engine, data, repeats) for engine in engines if not engine.unavailable}
        label = (
            f"{family}: {compiled.roots.size} trees, max depth {compiled.max_depth}, {schema.n_encoded} columns;"
            f" largest |kernels - shap TreeExplainer| {gap:.1e}"
        )
        results.append((label, {engine.name: engine for engine in engines}, figures))
    return results


def _cell(seconds: float | None, baseline: float | None) -> str:
    if seconds is None:
        return "-"
    value = f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"
    if baseline and seconds is not baseline:
        value += f" ({seconds / baseline:.1f}x)"
    return value


def markdown(label: str, engines: dict[str, Engine], figures: dict[str, dict[str, float | None]]) -> str:
    names = [name for name in ENGINES if name in engines]
    lines = [f"**{label}**", "", "| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for figure in FIGURES:
        baseline = figures["numba kernels"][figure]
        cells = [
            engines[name].unavailable or "-" if name not in figures else _cell(figures[name][figure], baseline)
            for name in names
        ]
        lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    compile_cells = [
        "-" if engines[name].compile_seconds is None else f"{engines[name].compile_seconds:.2f} s" for name in names
    ]
    lines.append("| compile | " + " | ".join(compile_cells) + " |")
    return "\n".join(lines)


def train_bundles(models_dir: Path, data: Path | None) -> list[Path]:
    """One small bundle per tree family, through the training pipeline (one tuning trial each)."""
    from training.config import TrainingConfig
    from training.pipeline import run_training

    bundles = []
    for family in TREE_FAMILIES:
        config = TrainingConfig(
            data=data, model_dir=models_dir / family, models=(family,), trials=1, report=False, progress=False
        )
        run_training(config)
        bundles.append(current_bundle_dir(models_dir / family))
    return bundles


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a directory with a `current` bundle (else train three)")
    parser.add_argument("--data", type=Path, help="the table to train on (default: the synthetic one)")
    parser.add_argument("--train-dir", type=Path, help="where trained bundles go (default: a temporary directory)")
    parser.add_argument("--repeats", type=int, default=2000, help="calls per single-record figure")
    parser.add_argument("--rows", type=int, default=10_000, help="rows for the batch figures")
    parser.add_argument("--no-compilers", action="store_true", help="leave out lleaves and tl2cgen")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-trees-") as scratch:
        workdir = Path(scratch)
        if args.model_dir is not None:
            bundles = [current_bundle_dir(args.model_dir)]
        else:
            bundles = train_bundles(args.train_dir or workdir / "models", args.data)
        for bundle in bundles:
            for label, engines, figures in bake_off(bundle, args.repeats, args.rows, not args.no_compilers, workdir):
                print(markdown(label, engines, figures), end="\n\n")


if __name__ == "__main__":
    sys.exit(main())
