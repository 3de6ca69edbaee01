"""``python -m bench.quality``: model quality as a new user would measure it, against untuned baselines.

For each table and seed: a stratified 80/20 split; the 80% written to a CSV and trained on with the
default ``python -m training --data train.csv --model-dir DIR --quiet`` (wall time, peak memory of
the process tree); the bundle served for real (``python -m app``) and the 20% sent, as exported
(every cell as its text, the target removed), through ``POST /predict/batch``; ROC-AUC of the
returned churn probabilities, and of three untuned baselines fitted on the same 80%
(``bench.quality_baselines``). ``--cost`` adds training runs on generated 200,000- and
1,000,000-row tables. Results go to ``bench/results/quality-<timestamp>.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from bench.loadgen import BenchmarkError, ServiceProcess, descendants, free_port, http_request, read_status_kib
from bench.quality_baselines import baseline_aucs
from bench.quality_report import cost_targets, summarize, write_results
from bench.quality_tables import REPO, TABLES, Table, read_exported

RESULTS_DIR = REPO / "bench" / "results"
MAX_BATCH = 10_000
QUICK_TRAINING_ARGS = ("--trials", "2")
COST_ROWS = (200_000, 1_000_000)
MISSING_TEXT = frozenset({"", "?", "na", "n/a", "nan", "null", "none"})
TRAINING_TIMEOUT_S = 3600


# ---- split ------------------------------------------------------------------------------------------
def stratified_split(frame: pd.DataFrame, target: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """80/20, the churn rate kept equal in both parts."""
    train, test = train_test_split(frame, test_size=0.2, stratify=frame[target], random_state=seed)
    return train.reset_index(drop=True), test.reset_index(drop=True)


# ---- training in a child process ----------------------------------------------------------------------
def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants, in KiB."""
    return sum(read_status_kib(member) or 0 for member in (pid, *descendants(pid)))


def run_training(args: list[str], log: Path, poll_s: float = 0.5) -> dict[str, Any]:
    """``python -m training ARGS`` as a child: exit code, wall time, peak RSS of its process tree."""
    command = [sys.executable, "-m", "training", *args]
    started = time.perf_counter()
    peak_kib = 0
    with log.open("w") as output:
        child = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        while child.poll() is None:
            peak_kib = max(peak_kib, tree_rss_kib(child.pid))
            if time.perf_counter() - started > TRAINING_TIMEOUT_S:
                child.kill()
            time.sleep(poll_s)
    text = log.read_text(errors="replace")
    run: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "training", *args]),
        "exit_code": child.returncode,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(peak_kib / 1024, 1),
    }
    winner = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("winner")]
    if winner:
        run["winner"] = winner[0].split(" (")[0]
    if child.returncode != 0:
        run["error"] = text[-2000:]
    return run


# ---- scoring through the service ------------------------------------------------------------------------
def refusal_reason(problem: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in problem.get("loc", [])[2:]) or "record"
    value = problem.get("input")
    if problem.get("type") == "missing" or (isinstance(value, str) and value.strip().lower() in MISSING_TEXT):
        return f"missing value ({field})"
    return f"{problem.get('type')} ({field})"


def score_batches(port: int, records: list[dict[str, Any]]) -> tuple[np.ndarray, Counter[str]]:
    """Churn probability per record (NaN when refused) and refused records counted by reason."""
    probabilities = np.full(len(records), np.nan)
    refused: Counter[str] = Counter()
    for start in range(0, len(records), MAX_BATCH):
        chunk = records[start : start + MAX_BATCH]
        status, _, body = http_request(
            port, "POST", "/predict/batch", orjson.dumps(chunk), {"content-type": "application/json"}, timeout_s=300
        )
        if status != 200:
            raise RuntimeError(f"POST /predict/batch answered {status}: {body[:500]!r}")
        for offset, result in enumerate(orjson.loads(body)["results"]):
            if "churn_probability" in result:
                probabilities[start + offset] = result["churn_probability"]
            else:
                refused.update({refusal_reason(problem) for problem in result["errors"]})
                refused["records"] += 1
    return probabilities, refused


def service_environment(workdir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHURN_")}
    env.update(CHURN_DATABASE_URL=f"sqlite:///{workdir / 'predictions.sqlite3'}", CHURN_LOG_LEVEL="warning")
    return env


def score_through_service(model_dir: Path, records: list[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, "-m", "app", "--model-dir", str(model_dir), "--port", str(port)]
    service = ServiceProcess(
        "service", command, port, workdir / "service.log", env=service_environment(workdir), cwd=REPO
    )
    with service:
        service.wait_ready("/ready", timeout_s=180)
        started = time.perf_counter()
        probabilities, refused = score_batches(port, records)
        seconds = time.perf_counter() - started
    return {
        "probabilities": probabilities,
        "refused": refused,
        "ready_seconds": service.ready_after_s,
        "score_seconds": seconds,
    }


# ---- one table, one seed ------------------------------------------------------------------------------
def project_auc(y: np.ndarray, probabilities: np.ndarray, train_rate: float) -> float:
    """ROC-AUC over every record; a refused record counts as the training churn rate (no information)."""
    return float(roc_auc_score(y, np.where(np.isnan(probabilities), train_rate, probabilities)))


def served_figures(table: Table, train: pd.DataFrame, test: pd.DataFrame, model_dir: Path, workdir: Path) -> dict:
    """The 20% scored through the service: ROC-AUC, refused records by reason, service timings."""
    records = test.drop(columns=[table.target]).to_dict(orient="records")
    try:
        served = score_through_service(model_dir, records, workdir)
    except (BenchmarkError, RuntimeError, OSError) as exc:
        return {"service_error": str(exc)[-2000:]}
    y_test = (test[table.target].str.strip() == table.positive).to_numpy(dtype=int)
    train_rate = float((train[table.target].str.strip() == table.positive).mean())
    return {
        "project_auc": project_auc(y_test, served["probabilities"], train_rate),
        "refused": dict(served["refused"]),
        "service": {key: round(served[key], 2) for key in ("ready_seconds", "score_seconds")},
    }


def measure(table: Table, frame: pd.DataFrame, seed: int, workdir: Path, training_args: list[str]) -> dict[str, Any]:
    """One seed of one table: the project through its CLI and HTTP, then the baselines."""
    workdir.mkdir(parents=True, exist_ok=True)
    train, test = stratified_split(frame, table.target, seed)
    train_csv = workdir / "train.csv"
    train.to_csv(train_csv, index=False)
    model_dir = workdir / "models"
    args = ["--data", str(train_csv), "--model-dir", str(model_dir), "--quiet", *training_args]
    training = run_training(args, workdir / "training.log")
    result: dict[str, Any] = {"table": table.name, "seed": seed, "train_rows": len(train), "test_rows": len(test)}
    result["training"] = training
    if training["exit_code"] == 0:
        result.update(served_figures(table, train, test, model_dir, workdir))
    result["baselines"] = baseline_aucs(train, test, table.target, table.positive, table.id_columns, seed)
    return result


# ---- cost -------------------------------------------------------------------------------------------
def measure_cost(workdir: Path, rows: tuple[int, ...] = COST_ROWS) -> list[dict[str, Any]]:
    """Default training on generated tables of ``rows`` customers: wall time and peak memory."""
    runs = []
    for n in rows:
        data = workdir / f"cost-{n}.parquet"
        generate = [sys.executable, "-m", "training", "generate", "--rows", str(n), "--out", str(data)]
        subprocess.run(generate, cwd=REPO, check=True, capture_output=True)
        args = ["--data", str(data), "--model-dir", str(workdir / f"models-cost-{n}"), "--quiet"]
        run = run_training(args, workdir / f"training-cost-{n}.log")
        runs.append({"rows": n, **run, "targets": cost_targets(n, run)})
        data.unlink()
    return runs


# ---- command line -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", default=",".join(TABLES), help=f"comma-separated, from {','.join(TABLES)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated split (and table) seeds (default 0,1,2)")
    parser.add_argument("--quick", action="store_true", help="small tables, one seed, training limited to 2 trials")
    parser.add_argument(
        "--training-args",
        default="",
        help="extra arguments for python -m training, quoted (default none; with --quick: --trials 2)",
    )
    parser.add_argument("--cost", action="store_true", help="also time training on 200,000 and 1,000,000 rows (long)")
    parser.add_argument("--cost-rows", help="comma-separated table sizes for --cost (default 200000,1000000)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where results go (default bench/results)")
    parser.add_argument("--workdir", type=Path, help="keep splits, bundles and logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    args.tables = [name.strip() for name in args.tables.split(",") if name.strip()]
    unknown = [name for name in args.tables if name not in TABLES]
    if unknown:
        parser.error(f"unknown table {unknown[0]!r}; choose from {','.join(TABLES)}")
    args.seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()][: 1 if args.quick else None]
    args.cost_rows = tuple(int(n) for n in args.cost_rows.split(",")) if args.cost_rows else COST_ROWS
    args.training_args = shlex.split(args.training_args) or (list(QUICK_TRAINING_ARGS) if args.quick else [])
    return args


def run_tables(args: argparse.Namespace, workdir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    runs, skipped = [], []
    for name in args.tables:
        table = TABLES[name]
        for seed in args.seeds:
            csv = table.write(workdir / name / f"table-{seed}.csv", seed, quick=args.quick)
            if csv is None:
                print(f"{name}: source absent, skipped", flush=True)
                skipped.append(name)
                break
            frame = read_exported(csv)
            print(f"{name} seed {seed}: {len(frame)} rows x {frame.shape[1]} columns ...", flush=True)
            run = measure(table, frame, seed, workdir / name / f"seed-{seed}", args.training_args)
            run["table_shape"] = list(frame.shape)
            print(f"  project {run.get('project_auc', float('nan')):.4f}  baselines {run['baselines']}", flush=True)
            runs.append(run)
    return runs, skipped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="churn-quality-") as temporary:
        workdir = args.workdir or Path(temporary)
        runs, skipped = run_tables(args, workdir)
        cost = measure_cost(workdir, args.cost_rows) if args.cost else []
    results = {
        "protocol": {"seeds": args.seeds, "quick": args.quick, "training_args": args.training_args},
        "environment": {"python": sys.version.split()[0], "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "skipped": skipped,
        "runs": runs,
        "summary": summarize(runs),
        "cost": cost,
    }
    json_path, md_path, text = write_results(results, args.out_dir)
    print(text)
    print(f"wrote {json_path} and {md_path}")
    return 1 if any("project_auc" not in run for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
