"""``python -m bench.estimate``: the live performance estimate against the realized figures that come later.

A bundle is trained on generated customers (``training.synthetic``, calibrated as ``python -m
training`` always calibrates) and served in process (the real app, monitoring on, a SQLite log,
a short drift window). Then, window after window, the population drifts further (``--max-drift``)
and one window of customers from ``deploy.simulator``'s stream is scored through
``POST /predict/batch``; at the end of each window the estimate and its band are read from
``/metrics``, as Prometheus would. Only after the last window are the outcomes posted to
``/feedback`` (delayed labels), and each window's realized figures are computed by the service's
own code from the log, over exactly that window's predictions.

``--concept-drift S`` redraws a share S of the outcomes (growing over the windows up to S)
regardless of the customer: the relation between features and churn weakens, which no estimate
from scores can see. That run shows the estimate's blind spot.

    python -m bench.estimate                       # covariate drift
    python -m bench.estimate --concept-drift 0.6   # concept drift

``--save DIR`` keeps each window's live figures (``windows.json``) and the logged rows with their
outcomes (``rows.csv``), which ``bench/estimate_nannyml.py`` hands to NannyML's CBPE.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from bundle.performance_estimate import METRICS

FEEDBACK_CHUNK = 5_000
BATCH = 2_000


@dataclass
class WindowResult:
    drift: float
    predictions: int
    estimated: dict[str, float | None]
    lower: dict[str, float | None]
    upper: dict[str, float | None]
    realized: dict[str, float | None]
    rows: Any = None  # the window's logged predictions with their outcomes


def train_bundle(model_dir: Path, rows: int, models: tuple[str, ...], seed: int) -> Any:
    from training.config import TrainingConfig
    from training.pipeline import run_training
    from training.synthetic import generate_customers

    config = TrainingConfig(
        data=generate_customers(rows, seed=seed), model_dir=model_dir, models=models, trials=3, seed=seed,
        report=False, progress=False,
    )  # fmt: skip
    return run_training(config).manifest


def window_customers(size: int, seed: int, drift: float) -> tuple[list[dict[str, Any]], np.ndarray]:
    from deploy.simulator import customer_stream

    pairs = list(itertools.islice(customer_stream(seed, drift), size))
    return [record for record, _ in pairs], np.array([churned for _, churned in pairs], dtype=bool)


def redraw_outcomes(labels: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Replace ``share`` of the outcomes by draws that ignore the customer (same churn rate)."""
    redrawn = rng.random(labels.size) < share
    return np.where(redrawn, rng.random(labels.size) < labels.mean(), labels)


def read_estimate(client: Any, version: str) -> tuple[dict, dict, dict]:
    from prometheus_client.parser import text_string_to_metric_families

    estimated, lower, upper = {}, {}, {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.labels.get("model_version") != version:
                continue
            name = sample.name.removeprefix("churn_estimated_")
            if name in METRICS:
                estimated[name] = sample.value
            elif sample.name == "churn_estimated_performance_bound":
                target = lower if sample.labels["bound"] == "lower" else upper
                target[sample.labels["metric"]] = sample.value
    return estimated, lower, upper


def run(args: argparse.Namespace) -> list[WindowResult]:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.monitoring.performance import labelled_predictions, realized_performance
    from app.settings import Settings

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="churn-estimate-") as work:
        work_dir = Path(work)
        started = time.perf_counter()
        manifest = train_bundle(work_dir / "models", args.training_rows, tuple(args.models), args.seed)
        print(f"trained {manifest.model_family} {manifest.version} in {time.perf_counter() - started:.0f} s; "
              f"reference {manifest.performance_reference}", file=sys.stderr)  # fmt: skip
        settings = Settings(
            _env_file=None, model_dir=work_dir / "models", api_key="bench", monitoring_enabled=True,
            database_url=f"sqlite:///{work_dir / 'log.sqlite3'}", prediction_log_spool_dir=work_dir / "spool",
            drift_window_seconds=args.window_seconds, drift_slot_seconds=1, drift_update_seconds=3600,
            performance_update_seconds=3600,
        )  # fmt: skip
        windows, pending = [], []
        with TestClient(create_app(settings)) as client:
            monitor = client.app.state.monitor
            for index in range(args.windows):
                drift = args.max_drift * index / max(args.windows - 1, 1)
                records, labels = window_customers(args.window_size, args.seed * 1_000 + index, drift)
                share = args.concept_drift * index / max(args.windows - 1, 1)
                labels = redraw_outcomes(labels, share, rng) if share else labels
                start = time.time()
                ids = []
                for first in range(0, len(records), BATCH):
                    response = client.post("/predict/batch", json=records[first : first + BATCH])
                    response.raise_for_status()
                    ids += [item["prediction_id"] for item in response.json()["results"]]
                end = time.time()
                snapshot = monitor.update_drift()
                if snapshot is None or snapshot.window_predictions != len(ids):
                    raise SystemExit("the window's scoring outlasted the drift window: raise --window-seconds")
                estimated, lower, upper = read_estimate(client, manifest.version)
                windows.append(WindowResult(drift, len(ids), estimated, lower, upper, {}))
                pending.append((start, end, ids, labels))
                print(f"window {index}: drift {drift:.2f}, estimated ROC-AUC {estimated.get('roc_auc'):.3f}",
                      file=sys.stderr)  # fmt: skip
                # The next window starts once this one's slots have left the drift window.
                time.sleep(max(start + args.window_seconds + 1.5 - time.time(), 0.0))
            # Outcomes arrive late: all of them after the last window.
            outcomes = [
                {"prediction_id": pid, "churned": bool(churned)}
                for _, _, ids, labels in pending
                for pid, churned in zip(ids, labels, strict=True)
            ]
            for first in range(0, len(outcomes), FEEDBACK_CHUNK):
                response = client.post(
                    "/feedback", json={"outcomes": outcomes[first : first + FEEDBACK_CHUNK]},
                    headers={"X-API-Key": "bench"},
                )  # fmt: skip
                response.raise_for_status()
            with monitor.log.connection() as connection:
                for result, (start, end, _, _) in zip(windows, pending, strict=True):
                    logged = labelled_predictions(connection, start, end + 1e-3)
                    realized = realized_performance(logged, start, end)
                    assert realized.labelled_predictions == result.predictions, "window and log disagree"
                    result.realized = {name: getattr(realized, name) for name in METRICS}
                    result.rows = logged
    if args.save:
        save(Path(args.save), windows, manifest.threshold)
    return windows


def save(directory: Path, windows: list[WindowResult], threshold: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "rows.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["window", "score", "predicted_churn", "churned"])
        for index, window in enumerate(windows):
            data = window.rows
            for score, decision, churned in zip(data.scores, data.decisions, data.actual, strict=True):
                writer.writerow([index, repr(float(score)), int(decision), int(churned)])
    figures = [{f.name: getattr(w, f.name) for f in fields(w) if f.name != "rows"} for w in windows]
    (directory / "windows.json").write_text(json.dumps({"threshold": threshold, "windows": figures}, indent=1))


def _cell(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def markdown(windows: list[WindowResult], args: argparse.Namespace) -> str:
    lines = [
        "| window | drift | predictions | estimated ROC-AUC [band] | realized ROC-AUC | abs. difference | in band |",
        "|---:|---:|---:|---|---:|---:|:---:|",
    ]
    for index, w in enumerate(windows):
        est, real = w.estimated.get("roc_auc"), w.realized.get("roc_auc")
        inside = w.lower["roc_auc"] <= real <= w.upper["roc_auc"]
        lines.append(
            f"| {index} | {w.drift:.2f} | {w.predictions} | {_cell(est)} [{_cell(w.lower['roc_auc'])}, "
            f"{_cell(w.upper['roc_auc'])}] | {_cell(real)} | {abs(est - real):.3f} | {'yes' if inside else 'no'} |"
        )
    lines += [
        "",
        "| metric | mean abs. difference | max abs. difference | realized inside the band |",
        "|---|---:|---:|---:|",
    ]
    for name in METRICS:
        pairs = [(w.estimated[name], w.realized[name], w) for w in windows if w.realized.get(name) is not None]
        gaps = [abs(est - real) for est, real, _ in pairs]
        inside = sum(w.lower[name] <= real <= w.upper[name] for _, real, w in pairs)
        lines.append(f"| {name} | {statistics.fmean(gaps):.3f} | {max(gaps):.3f} | {inside}/{len(pairs)} |")
    header = (
        f"{len(windows)} windows of {args.window_size} customers, drift 0 to {args.max_drift:g}, "
        f"concept drift up to {args.concept_drift:g}, model {'+'.join(args.models)} trained on "
        f"{args.training_rows} generated customers (seed {args.seed})"
    )
    return header + "\n\n" + "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--window-size", type=int, default=4_000, help="customers scored per window")
    parser.add_argument("--window-seconds", type=int, default=10, help="the service's drift window")
    parser.add_argument("--max-drift", type=float, default=1.0, help="population drift of the last window")
    parser.add_argument("--concept-drift", type=float, default=0.0, help="share of outcomes redrawn by the end")
    parser.add_argument("--training-rows", type=int, default=20_000)
    parser.add_argument("--models", nargs="+", default=["lightgbm"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--save", help="directory for windows.json and rows.csv")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    windows = run(args)
    print(markdown(windows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
