"""Does the comparison pick the better model, and wait until it can? Driven by the traffic simulator.

    python -m bench.challenger_verdict [--seconds 90] [--rate 60] [--outcomes-after 10]

Customers come from ``training.synthetic.generate_customers``. The champion is trained on 2,000 of
them; two challengers are trained: one on 20,000 customers (**more data**), one on 20,000 whose churn
label was redrawn at random for 60% of them (**degraded**). Each challenger in turn is put beside the
champion in shadow (``python -m training models challenger``, then ``POST /admin/reload``) in a
real ``python -m app``; ``deploy.simulator`` sends customers at ``--rate`` per second for ``--seconds``
and posts each one's true outcome ``--outcomes-after`` seconds after its prediction. After 5 s, then every 31 s,
``GET /monitoring/compare`` is read: labelled customers, verdict, the ROC-AUC difference and its
95% interval. Expected: "not enough labels yet" first, then "better" for more data and "worse" for
the degraded one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.loadgen import ServiceProcess, free_port, http_request

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench-challenger-verdict-key"
POLL_SECONDS = 31.0  # the service reuses a comparison for 30 s
FIRST_READING_SECONDS = 5.0  # before the first outcomes arrive


def train_models(models: Path) -> dict[str, str]:
    """The champion and the two challengers; their versions by role."""
    import numpy as np

    from bundle.registry import ModelRegistry
    from training.config import TrainingConfig
    from training.pipeline import run_training
    from training.synthetic import generate_customers

    def train(frame: Any, as_challenger: bool) -> str:
        config = TrainingConfig(
            data=frame, model_dir=models, models=("logistic_regression", "lightgbm"), trials=4, report=False,
            progress=False, as_challenger=as_challenger,
        )  # fmt: skip
        run_training(config)
        registry = ModelRegistry(models)
        return registry.challenger() if as_challenger else registry.champion()

    champion = train(generate_customers(2_000, seed=21), as_challenger=False)
    more_data = train(generate_customers(20_000, seed=22), as_challenger=True)
    degraded_frame = generate_customers(20_000, seed=23)
    rng = np.random.default_rng(23)
    redrawn = rng.random(len(degraded_frame)) < 0.6
    labels = degraded_frame["Churn"].to_numpy().copy()
    labels[redrawn] = rng.permutation(labels[redrawn])
    degraded_frame["Churn"] = labels
    degraded = train(degraded_frame, as_challenger=True)
    return {"champion": champion, "more data": more_data, "degraded": degraded}


def compare(port: int) -> dict[str, Any]:
    status, _, body = http_request(port, "GET", "/monitoring/compare?days=1", headers={"X-API-Key": API_KEY})
    if status != 200:
        raise RuntimeError(f"/monitoring/compare answered {status}: {body[:200]!r}")
    return json.loads(body)


def run_scenario(name: str, version: str, models: Path, port: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    subprocess.run(
        [sys.executable, "-m", "training", "models", "challenger", version, "--model-dir", str(models),
         "--reason", f"bench: {name}"],
        check=True, cwd=REPO, capture_output=True,
    )  # fmt: skip
    status, _, body = http_request(port, "POST", "/admin/reload", headers={"X-API-Key": API_KEY}, timeout_s=120)
    if status != 200:
        raise RuntimeError(f"reload answered {status}: {body[:300]!r}")
    simulator = subprocess.Popen(
        [sys.executable, "-m", "deploy.simulator", "--url", f"http://127.0.0.1:{port}", "--rate", str(args.rate),
         "--duration", str(args.seconds), "--outcomes-after", str(args.outcomes_after), "--api-key", API_KEY,
         "--seed", str(abs(hash(name)) % 1000), "--json"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    started, readings, wait = time.monotonic(), [], FIRST_READING_SECONDS
    while True:
        finished = simulator.poll() is not None
        time.sleep(wait)  # after the last outcomes too, so the final reading has them all
        wait = POLL_SECONDS
        pairs = [pair for pair in compare(port)["shadow"] if pair["challenger"] == version]
        if pairs:
            readings.append(reading(time.monotonic() - started, pairs[0]))
            print(row(name, readings[-1]), flush=True)
        if finished:
            return readings


def reading(elapsed: float, pair: dict[str, Any]) -> dict[str, Any]:
    auc = pair.get("metrics", {}).get("roc_auc") or {}
    return {
        "seconds": round(elapsed),
        "compared": pair["rows"],
        "labelled": pair["labelled"],
        "verdict": pair["verdict"],
        "labels_needed": pair["labels_needed"],
        "champion_auc": auc.get("champion"),
        "challenger_auc": auc.get("challenger"),
        "difference": auc.get("difference"),
        "interval": (auc.get("ci_low"), auc.get("ci_high")),
    }


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def row(name: str, figures: dict[str, Any]) -> str:
    low, high = figures["interval"]
    interval = "-" if low is None else f"[{low:+.3f}, {high:+.3f}]"
    return (
        f"| {name} | {figures['seconds']} | {figures['compared']:,} | {figures['labelled']:,} | {figures['verdict']}"
        f" | {figures['labels_needed']:,} | {_figure(figures['difference'])} | {interval} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=150.0, help="simulated traffic per challenger")
    parser.add_argument("--rate", type=float, default=60.0, help="customers per second")
    parser.add_argument("--outcomes-after", type=float, default=10.0, help="delay of each outcome, seconds")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="churn-bench-verdict-"))
    models = work / "models"
    versions = train_models(models)
    port = free_port()
    env = {
        **os.environ,
        "CHURN_API_KEY": API_KEY,
        "CHURN_CHALLENGER_MODE": "shadow",
        "CHURN_DATABASE_URL": f"sqlite:///{work / 'log.sqlite3'}",
        "CHURN_PREDICTION_LOG_SPOOL_DIR": str(work / "spool"),
    }
    command = [sys.executable, "-m", "app", "--model-dir", str(models), "--port", str(port)]
    print(
        "| challenger | seconds | compared | labelled | verdict | labels still needed"
        " | ROC-AUC difference | 95% interval |"
    )
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    with ServiceProcess("service", command, port, work / "service.log", env=env, cwd=REPO) as service:
        service.wait_ready("/ready")
        for name in ("more data", "degraded"):
            results[name] = run_scenario(name, versions[name], models, port, args)
    (work / "verdicts.json").write_text(json.dumps({"versions": versions, "readings": results}, indent=2))
    print(f"\nreadings: {work / 'verdicts.json'}")


if __name__ == "__main__":
    main()
