"""Drill: the retraining loop end to end, on this machine, with real components.

    python -m deploy.drills.retraining [--work DIR] [--seconds 60] [--rate 60]

1. A champion is trained on a first period's customers (``python -m training``'s pipeline).
2. It is served (``python -m app``, SQLite log, a 20 s drift window), scraped by a real Prometheus
   with the repository's alert rules (the drift alerts' ``for:`` shortened from 10 minutes to 5 s),
   which sends firing alerts to a real Alertmanager routed by ``deploy/alertmanager/alertmanager.yml``
   to the retrainer (``python -m training.retrainer``, cool-down 1 h, ``--promote-if-better``).
3. ``deploy.simulator`` sends a drifted population whose reasons to leave changed too
   (``--drift 0.8 --concept-drift 1.0``), and posts every outcome a second after its prediction.
4. The drift alert fires, Alertmanager calls the retrainer, which retrains from the prediction log
   (refusing while fewer than 1,500 customers are labelled; Alertmanager repeats the alert every 10 s)
   and compares the new model with the stale champion on the newest 30% of labelled customers,
   promotes it if it is clearly better and asks the service to reload.

It prints, as JSON, when each step happened and the head-to-head figures. Needs ``prometheus`` and
``prometheus-alertmanager`` (Debian's packages). Exit status 0 when a better model was promoted and
is served, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from deploy import ALERT_RULES, PROMETHEUS_CONFIG, SCRAPE_JOB

ROOT = Path(__file__).resolve().parents[2]
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
API_KEY = "retraining-drill-key"
DRIFT_ALERTS = ("ChurnFeatureDrift", "ChurnScoreDrift")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, KeyError, ValueError, IndexError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class Processes:
    """Started in their own process groups, logged to files, all stopped at the end."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.work / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def train_champion(models: Path) -> str:
    from bundle.registry import ModelRegistry
    from training.config import TrainingConfig
    from training.pipeline import run_training
    from training.synthetic import generate_customers

    config = TrainingConfig(
        data=generate_customers(3000, seed=1), model_dir=models, models=("logistic_regression",), trials=2,
        report=False, progress=False,
    )  # fmt: skip
    run_training(config)
    return ModelRegistry(models).champion() or ""


def rules_with_short_for(path: Path) -> None:
    """The repository's alert rules, the drift alerts firing after 5 s instead of 10 minutes."""
    rules = yaml.safe_load(ALERT_RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in DRIFT_ALERTS:
                rule["for"] = "5s"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))


def prometheus_config(path: Path, rules: Path, api_port: int, alertmanager_port: int) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    config["rule_files"] = [str(rules)]
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
    config["scrape_configs"] = [
        job | {"static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]}
        for job in config["scrape_configs"]
        if job["job_name"] == SCRAPE_JOB
    ]
    path.write_text(yaml.safe_dump(config))


def alertmanager_config(path: Path, retrainer_port: int) -> None:
    """The repository's routing, the retrainer on loopback, without the waits meant for a real service."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="10s")
    for route in config["route"].get("routes", []):
        route["repeat_interval"] = "10s"  # a refused retraining (too few labels yet) is retried soon
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"http://127.0.0.1:{retrainer_port}/alerts"
    path.write_text(yaml.safe_dump(config))


def run(work: Path, seconds: float, rate: float) -> dict[str, Any]:
    """The drill's steps; its figures (times in seconds from the start, the retraining's report)."""
    models, started = work / "models", time.monotonic()
    elapsed: Callable[[], float] = lambda: round(time.monotonic() - started, 1)  # noqa: E731
    champion = train_champion(models)
    figures: dict[str, Any] = {"champion": champion, "champion_trained_s": elapsed()}
    api, prometheus, alertmanager, cluster, retrainer = (free_port() for _ in range(5))
    database = f"sqlite:///{work / 'predictions.sqlite3'}"
    base = {key: value for key, value in os.environ.items() if not key.startswith("CHURN_")}
    service_env = base | {
        "CHURN_MODEL_DIR": str(models), "CHURN_PORT": str(api), "CHURN_API_KEY": API_KEY,
        "CHURN_DATABASE_URL": database, "CHURN_PREDICTION_LOG_SPOOL_DIR": str(work / "spool"),
        "CHURN_DRIFT_WINDOW_SECONDS": "20", "CHURN_DRIFT_SLOT_SECONDS": "2", "CHURN_DRIFT_UPDATE_SECONDS": "1",
        "CHURN_DRIFT_MIN_COUNT": "200", "CHURN_PERFORMANCE_UPDATE_SECONDS": "1",
    }  # fmt: skip
    rules_with_short_for(work / "alerts.yml")
    prometheus_config(work / "prometheus.yml", work / "alerts.yml", api, alertmanager)
    alertmanager_config(work / "alertmanager.yml", retrainer)
    processes = Processes(work)
    try:
        processes.start("service", [sys.executable, "-m", "app"], service_env)
        processes.start(
            "retrainer",
            [sys.executable, "-m", "training.retrainer", "--port", str(retrainer), "--model-dir", str(models),
             "--database-url", database, "--schedule-hours", "0", "--cool-down-hours", "1", "--promote-if-better",
             "--reload-url", f"http://127.0.0.1:{api}/admin/reload",
             "--", "--models", "logistic_regression", "--trials", "2", "--no-report", "--min-labels", "1500",
             "--holdout-share", "0.3"],
            base | {"CHURN_API_KEY": API_KEY},
        )  # fmt: skip
        processes.start(
            "alertmanager",
            ["prometheus-alertmanager", f"--config.file={work / 'alertmanager.yml'}",
             f"--storage.path={work / 'alertmanager'}", f"--web.listen-address=127.0.0.1:{alertmanager}",
             f"--cluster.listen-address=127.0.0.1:{cluster}"],
        )  # fmt: skip
        processes.start(
            "prometheus",
            ["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus}", "--log.level=warn"],
        )  # fmt: skip
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{api}/ready").status_code == 200, 90, "the service")
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{retrainer}/health").status_code == 200, 60, "the retrainer")
        figures["serving_s"] = elapsed()
        simulator = processes.start(
            "simulator",
            [sys.executable, "-m", "deploy.simulator", "--url", f"http://127.0.0.1:{api}", "--rate", str(rate),
             "--duration", str(seconds), "--drift", "0.8", "--concept-drift", "1.0", "--outcomes-after", "1",
             "--api-key", API_KEY, "--seed", "7", "--json"],
        )  # fmt: skip
        status = f"http://127.0.0.1:{retrainer}/status"
        wait_for(lambda: firing(prometheus), seconds + 60, "a drift alert to fire")
        figures["drift_alert_firing_s"] = elapsed()
        wait_for(lambda: httpx.get(status).json()["runs"], 60, "Alertmanager to start a retraining")
        figures["retraining_started_s"] = elapsed()  # the first start; it may be refused for too few labels
        run = wait_for(lambda: finished_run(status), 600, "the retraining to finish")
        figures["retraining_finished_s"] = elapsed()
        simulator.wait(timeout=seconds + 120)
        runs = httpx.get(status).json()["runs"]
        figures["retraining_attempts"] = [(attempt["outcome"], attempt["trigger"]) for attempt in reversed(runs)]
        figures.update(retraining=run, report=retrain_report(models))
        figures["served_version"] = httpx.get(f"http://127.0.0.1:{api}/ready").json()["model_version"]
    finally:
        processes.stop_all()
    return figures


def firing(prometheus_port: int) -> list[str]:
    body = httpx.get(f"http://127.0.0.1:{prometheus_port}/api/v1/alerts", timeout=5).json()
    alerts = body["data"]["alerts"]
    return [
        a["labels"]["alertname"] for a in alerts if a["state"] == "firing" and a["labels"]["alertname"] in DRIFT_ALERTS
    ]


def finished_run(status_url: str) -> dict[str, Any] | None:
    runs = httpx.get(status_url, timeout=5).json()["runs"]
    done = [run for run in runs if run["finished_at"] is not None and run["outcome"] in ("published", "failed")]
    return done[-1] if done else None


def retrain_report(models: Path) -> dict[str, Any]:
    reports = sorted((models / "retrain-reports").glob("*.json"))
    return json.loads(reports[-1].read_text()) if reports else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="keep everything here (default: a new temp directory)")
    parser.add_argument("--seconds", type=float, default=60.0, help="drifted traffic")
    parser.add_argument("--rate", type=float, default=80.0, help="customers per second")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="churn-retraining-drill-"))
    work.mkdir(parents=True, exist_ok=True)
    figures = run(work, args.seconds, args.rate)
    print(json.dumps(figures, indent=2, default=str))
    promoted = figures["served_version"] != figures["champion"]
    return 0 if promoted and figures["report"].get("action", "").startswith("promoted") else 1


if __name__ == "__main__":
    sys.exit(main())
