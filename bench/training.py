"""Training benchmark on IBM Telco: quality (5-fold ROC-AUC, calibration), cost (time, memory), generality.

``python -m bench.training`` (``make bench-training``):

1. **Full run.** ``python -m training --data <telco>`` with the default budget, in a child process:
   wall time, CPU time and peak resident memory (from ``os.wait4``), the winner and its test metrics.
2. **Stratified 5-fold cross-validation, repeated 3 times, of the chosen configuration** over all rows:
   per fold, the same cleaning, role inference and schema fitting on the fold's training part only, the
   winner's parameters fitted on all of it and calibrated on the out-of-fold scores of an inner 5-fold
   cross-validation of that part (the pipeline's own procedure), then scored on the held-out fold: mean ±
   std ROC-AUC and out-of-fold expected calibration error (ECE, per repeat, averaged).
   The untuned baselines (one-hot + median imputation by the same schema, then logistic regression,
   XGBoost with 400 trees / learning rate 0.03 / depth 4 / 0.8 sampling, LightGBM with 400 trees /
   learning rate 0.03 / 15 leaves / 0.8 sampling) are fitted on the same fold training parts.
3. **Other tables.** The same command, unchanged, on the synthetic ``bank`` and ``subscription`` tables.
4. **Reproducibility.** Two runs with the same seed and a small trial budget must give identical metrics.

Results go to ``bench/results/training-<timestamp>.json`` and ``.md`` and are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "telco" / "WA_Fn-UseC_-Telco-Customer-Churn.csv"
RESULTS_DIR = ROOT / "bench" / "results"
SEED = 42
FOLDS = 5
REPEATS = 3
BASELINES = {  # name -> (family, parameters)
    "logistic_regression": ("logistic_regression", {"C": 1.0, "l1_ratio": 0.0, "class_weight": None}),
    "xgboost": ("xgboost", {"n_estimators": 400, "learning_rate": 0.03, "max_depth": 4, "subsample": 0.8,
                            "colsample_bytree": 0.8, "min_child_weight": 1.0, "reg_lambda": 1.0,
                            "balance_classes": False}),
    "lightgbm": ("lightgbm", {"n_estimators": 400, "learning_rate": 0.03, "num_leaves": 15, "subsample": 0.8,
                              "colsample_bytree": 0.8, "min_child_samples": 20, "reg_lambda": 1.0,
                              "balance_classes": False}),
}  # fmt: skip
TARGETS = {  # figure -> (comparison, bound)
    "cv_roc_auc": (">=", 0.852),
    "oof_ece": ("<=", 0.02),
    "wall_seconds": ("<=", 180.0),
    "peak_rss_mb": ("<=", 2048.0),
}
OTHER_SCHEMA_ROWS = {"bank": 10_000, "subscription": 10_000}
REPRODUCIBILITY_ARGS = ["--models", "logistic_regression,xgboost,lightgbm", "--trials", "5", "--seed", "7"]


# ---- child training runs --------------------------------------------------------------------
def run_training_process(args: list[str], model_dir: Path, log: Path) -> dict[str, Any]:
    """Run ``python -m training`` in a child process; its own wall time, CPU time and peak RSS."""
    command = [sys.executable, "-m", "training", *args, "--model-dir", str(model_dir)]
    load_before = os.getloadavg()
    started = time.perf_counter()
    with log.open("w") as output:
        child = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    run = {
        "command": " ".join(["python -m training", *args]),
        "exit_code": child.returncode,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    if child.returncode != 0:
        run["error"] = log.read_text()[-2000:]
        return run
    from bundle.store import current_bundle_dir, verify_bundle

    manifest = verify_bundle(current_bundle_dir(model_dir))
    run.update(
        bundle=str(current_bundle_dir(model_dir)),
        winner=manifest.model_family,
        params=manifest.training["winner"]["params"],
        calibration=manifest.calibration.method,
        threshold=manifest.threshold,
        test_metrics={k: v for k, v in manifest.metrics.items() if isinstance(v, (int, float))},
        leaderboard=[
            {k: row.get(k) for k in ("family", "status", "stage", "cv_roc_auc", "cv_fits", "trials", "fit_seconds")}
            for row in manifest.leaderboard
        ],
        timings=manifest.training.get("timings", {}),
        schema={
            "target": manifest.schema.target,
            "id": manifest.schema.id_column,
            "dropped": {column.name: column.reason for column in manifest.schema.dropped},
        },
    )
    return run


# ---- cross-validation -----------------------------------------------------------------------
def encode(schema: Any, frame: Any) -> np.ndarray:
    from training.cleaning import clean_feature_columns

    return schema.encode(clean_feature_columns(schema, frame), len(frame)).matrix


def fold_schema(table: Any, rows: np.ndarray, target: Any, id_column: str | None) -> Any:
    """Roles and feature schema learned from ``rows`` only, exactly as the pipeline does."""
    from training.pipeline import fit_schema
    from training.roles import infer_feature_roles

    part = table.iloc[rows]
    return fit_schema(infer_feature_roles(part, target, id_column), part)


def inner_calibration(family: str, params: dict[str, Any], X: np.ndarray, y: np.ndarray) -> Any:
    """Calibration fitted on out-of-fold scores of an inner 5-fold cross-validation, as the pipeline does."""
    from sklearn.model_selection import StratifiedKFold

    from training.calibration import fit_calibration
    from training.candidates import fit_with_params, predict_raw

    oof = np.zeros(len(y))
    for train, held_out in StratifiedKFold(FOLDS, shuffle=True, random_state=SEED).split(X, y):
        oof[held_out] = predict_raw(family, fit_with_params(family, params, X[train], y[train], seed=SEED), X[held_out])
    return fit_calibration(oof, y, seed=SEED)


def cross_validate(data: Path, family: str, params: dict[str, Any], schema_info: dict[str, Any]) -> dict[str, Any]:
    """Repeated stratified 5-fold CV of one configuration with the pipeline's cleaning, fitting and calibration."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import RepeatedStratifiedKFold

    from bundle.scoring import apply_calibration
    from training.candidates import fit_with_params, predict_raw
    from training.cleaning import clean_table, drop_rows_without_target
    from training.data import load_table
    from training.evaluation import expected_calibration_error
    from training.roles import infer_target, target_vector

    table, report = clean_table(load_table(data).frame)
    target = infer_target(table, schema_info["target"], None)
    table = drop_rows_without_target(table, target.column, report)
    y = target_vector(table[target.column], target)
    oof = np.zeros((REPEATS, len(y)))
    scores: dict[str, list[float]] = {"winner": [], "winner_uncalibrated": [], **{name: [] for name in BASELINES}}
    started = time.perf_counter()
    folds = RepeatedStratifiedKFold(n_splits=FOLDS, n_repeats=REPEATS, random_state=SEED)
    for fold, (train_rows, test_rows) in enumerate(folds.split(np.zeros(len(y)), y)):
        schema = fold_schema(table, train_rows, target, schema_info["id"])
        x_train, x_test = encode(schema, table.iloc[train_rows]), encode(schema, table.iloc[test_rows])
        model = fit_with_params(family, params, x_train, y[train_rows], seed=SEED)
        calibration = inner_calibration(family, params, x_train, y[train_rows])
        raw = predict_raw(family, model, x_test)
        oof[fold // FOLDS, test_rows] = np.clip(apply_calibration(calibration, raw), 0, 1)
        scores["winner"].append(roc_auc_score(y[test_rows], oof[fold // FOLDS, test_rows]))
        scores["winner_uncalibrated"].append(roc_auc_score(y[test_rows], raw))
        for name, (baseline_family, baseline_params) in BASELINES.items():
            baseline = fit_with_params(baseline_family, baseline_params, x_train, y[train_rows], seed=SEED)
            scores[name].append(roc_auc_score(y[test_rows], predict_raw(baseline_family, baseline, x_test)))
        print(f"  fit {fold + 1}/{FOLDS * REPEATS}: ROC-AUC {scores['winner'][-1]:.4f}", file=sys.stderr, flush=True)
    summary = {name: {"mean": float(np.mean(v)), "std": float(np.std(v)), "folds": v} for name, v in scores.items()}
    return {
        "family": family,
        "rows": len(y),
        "folds": FOLDS,
        "repeats": REPEATS,
        "roc_auc": summary,
        "oof_roc_auc": float(np.mean([roc_auc_score(y, row) for row in oof])),
        "oof_ece": float(np.mean([expected_calibration_error(y, row) for row in oof])),
        "seconds": round(time.perf_counter() - started, 1),
    }


# ---- report ---------------------------------------------------------------------------------
def verdict(name: str, value: float | None) -> str:
    if value is None or name not in TARGETS:
        return ""
    comparison, bound = TARGETS[name]
    ok = value >= bound if comparison == ">=" else value <= bound
    return "PASS" if ok else "FALL SHORT"


def figure_rows(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []

    def add(label: str, value: Any, key: str | None = None, note: str = "") -> None:
        target = f"{TARGETS[key][0]} {TARGETS[key][1]:g}" if key in TARGETS else ""
        shown = f"{value:.4f}" if isinstance(value, float) and abs(value) < 10 else str(value)
        rows.append([label, shown, target, verdict(key, value) if key else "", note])

    full = results.get("full_run", {})
    if full:
        add(
            "full default run: wall time (s)",
            full.get("wall_seconds"),
            "wall_seconds",
            f"CPU {full.get('cpu_seconds')} s",
        )
        add("full default run: peak RSS (MB)", full.get("peak_rss_mb"), "peak_rss_mb")
        add("full default run: winner", full.get("winner", full.get("error", "failed")[:60]))
        for metric in ("roc_auc", "pr_auc", "f1", "ece"):
            add(f"full default run: test {metric}", full.get("test_metrics", {}).get(metric))
    cv = results.get("cross_validation")
    if cv:
        auc = cv["roc_auc"]
        plan = f"{cv['folds']}-fold x {cv['repeats']}"
        add(f"{plan} ROC-AUC, chosen config (pipeline procedure)", auc["winner"]["mean"], "cv_roc_auc",
            f"± {auc['winner']['std']:.4f}; fitted on each fold's training part, calibrated out of fold")  # fmt: skip
        add("out-of-fold ECE (calibrated)", cv["oof_ece"], "oof_ece")
        for name in BASELINES:
            add(f"{plan} ROC-AUC, untuned baseline {name}", auc[name]["mean"], None, f"± {auc[name]['std']:.4f}")
    for schema, run in results.get("other_schemas", {}).items():
        metrics = run.get("test_metrics", {})
        note = f"winner {run.get('winner')}, {run.get('wall_seconds')} s, {run.get('peak_rss_mb')} MB"
        add(f"{schema}: test ROC-AUC", metrics.get("roc_auc", run.get("error", "failed")[:60]), None, note)
    repro = results.get("reproducibility")
    if repro:
        add("same seed, same metrics", "yes" if repro["identical"] else "NO", None, repro["command"])
    return rows


def markdown(rows: list[list[str]]) -> str:
    lines = ["| figure | value | target | verdict | note |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def environment() -> dict[str, Any]:
    import platform

    from bundle.manifest import library_versions

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "libraries": library_versions()}


# ---- steps ----------------------------------------------------------------------------------
def full_run(data: Path, workdir: Path) -> dict[str, Any]:
    print("full default training run (a few minutes) ...", file=sys.stderr, flush=True)
    return run_training_process(["--data", str(data)], workdir / "full", workdir / "full.log")


def other_schemas(workdir: Path) -> dict[str, Any]:
    from training.synthetic import generate_customers

    runs = {}
    for schema, rows in OTHER_SCHEMA_ROWS.items():
        path = workdir / f"{schema}.csv"
        generate_customers(rows, seed=0, schema=schema).to_csv(path, index=False)
        print(f"default training run on the synthetic {schema} table ({rows} rows) ...", file=sys.stderr, flush=True)
        runs[schema] = run_training_process(["--data", str(path)], workdir / schema, workdir / f"{schema}.log")
        runs[schema]["rows"] = rows
    return runs


def reproducibility(data: Path, workdir: Path) -> dict[str, Any]:
    print("reproducibility: two runs with the same seed ...", file=sys.stderr, flush=True)
    args = ["--data", str(data), *REPRODUCIBILITY_ARGS, "--no-report"]
    first = run_training_process(args, workdir / "repro-a", workdir / "repro-a.log")
    second = run_training_process(args, workdir / "repro-b", workdir / "repro-b.log")
    identical = (
        first.get("exit_code") == 0
        and first.get("test_metrics") == second.get("test_metrics")
        and first.get("params") == second.get("params")
        and first.get("threshold") == second.get("threshold")
    )
    return {
        "command": " ".join(["python -m training", *REPRODUCIBILITY_ARGS]),
        "identical": identical,
        "runs": [first, second],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the IBM Telco CSV (default: %(default)s)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where results go")
    parser.add_argument("--skip-schemas", action="store_true", help="skip the bank and subscription runs")
    parser.add_argument("--skip-reproducibility", action="store_true", help="skip the two same-seed runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if not options.data.is_file():
        print(f"skipped: the IBM Telco file {options.data} is not present (pass --data PATH)")
        return 0
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results: dict[str, Any] = {"started_at": stamp, "data": str(options.data), "environment": environment()}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as scratch:
        workdir = Path(scratch)
        results["full_run"] = full_run(options.data, workdir)
        full = results["full_run"]
        if full.get("exit_code") == 0:
            print(f"repeated cross-validation of {full['winner']} ...", file=sys.stderr, flush=True)
            results["cross_validation"] = cross_validate(options.data, full["winner"], full["params"], full["schema"])
        if not options.skip_schemas:
            results["other_schemas"] = other_schemas(workdir)
        if not options.skip_reproducibility:
            results["reproducibility"] = reproducibility(options.data, workdir)
    rows = figure_rows(results)
    results["figures"] = [dict(zip(("figure", "value", "target", "verdict", "note"), row, strict=True)) for row in rows]
    options.results_dir.mkdir(parents=True, exist_ok=True)
    base = options.results_dir / f"training-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    table = markdown(rows)
    base.with_suffix(".md").write_text(f"# Training benchmark {stamp}\n\n{table}")
    print(table)
    print(f"results: {base}.json, {base}.md")
    return 0 if full.get("exit_code") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
