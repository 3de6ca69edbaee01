"""Real components end to end: the service (uvicorn, real HTTP) scraped by a real Prometheus.

A bundle is trained with the real pipeline; ``python -m app`` serves it with a short drift window;
Prometheus runs with the repository's config (target rewritten to loopback, 1 s intervals) and the
repository's unmodified alert rules. The traffic simulator sends in-distribution customers, then
drifted ones. Through Prometheus's HTTP API the test checks that every dashboard query returns
data, that the drift alert stays inactive for in-distribution traffic, and that it turns pending
(its `for:` is 10 minutes) or firing once drifted customers dominate the window.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deploy import ALERT_RULES, DASHBOARD, PROMETHEUS_CONFIG, SCRAPE_JOB, dashboard_queries, grafana_to_promql

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package 'prometheus')"),
]

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "e2e-monitoring-key"
DRIFT_MIN_COUNT = 100
DRIFT_WINDOW_SECONDS = 20
IN_DISTRIBUTION_SECONDS = 12


@dataclass
class Stack:
    api: str
    prometheus: str
    logs: dict[str, Path]

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.prometheus}/api/v1/alerts", timeout=10).json()
        return [alert for alert in body["data"]["alerts"] if alert["labels"]["alertname"] == name]

    def rules(self) -> dict[str, dict[str, Any]]:
        body = httpx.get(f"{self.prometheus}/api/v1/rules", timeout=10).json()
        return {rule["name"]: rule for group in body["data"]["groups"] for rule in group["rules"]}

    def tails(self) -> str:
        """What a failure message needs: the state Prometheus sees, then the end of each log."""
        job = f'{{job="{SCRAPE_JOB}"}}'
        lines = []
        for expr in (
            f"up{job}",
            f"scrape_duration_seconds{job}",
            f"churn_drift_window_predictions{job}",
            f"max(churn_feature_drifting{job})",
            'ALERTS{alertname="ChurnFeatureDrift"}',
        ):
            try:
                lines.append(f"{expr} = {[sample['value'][1] for sample in self.query(expr)]}")
            except (httpx.HTTPError, AssertionError) as exc:
                lines.append(f"{expr}: {exc}")
        for name, path in self.logs.items():
            lines.append(f"--- {name}:\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(lines)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(check: Callable[[], bool], timeout: float, what: str, stack_logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{stack_logs()}")


def _start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    try:
        # Own process group: the service's workers and the simulator are stopped with their parent.
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        handle.close()


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def _simulate(stack_api: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "deploy.simulator", "--url", stack_api, "--json", *args]
    return _start(command, log)


def _summary(process: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    process.wait(timeout=60)
    text = log.read_text()
    assert process.returncode == 0, text
    return json.loads(text[text.index("{") :])


def _prometheus_config(api_port: int, prometheus_port: int) -> dict[str, Any]:
    """The repository's config with loopback targets, short intervals and the rule file by absolute path."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    # Scrapes get 2 s so a busy machine does not turn a slow /metrics into a failed scrape.
    config["global"].update(scrape_interval="2s", evaluation_interval="1s", scrape_timeout="2s")
    config["rule_files"] = [str(ALERT_RULES)]
    for job in config["scrape_configs"]:
        port = api_port if job["job_name"] == SCRAPE_JOB else prometheus_port
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from training.config import TrainingConfig
    from training.pipeline import run_training
    from training.synthetic import generate_customers

    tmp = tmp_path_factory.mktemp("prometheus_e2e")
    models = tmp / "models"
    run_training(
        TrainingConfig(
            data=generate_customers(2000, seed=1),
            model_dir=models,
            models=("logistic_regression",),
            trials=3,
            report=False,
            progress=False,
        )
    )
    run_training(  # a challenger, scored in the champion's shadow
        TrainingConfig(
            data=generate_customers(2000, seed=2),
            model_dir=models,
            models=("logistic_regression",),
            trials=3,
            report=False,
            progress=False,
            as_challenger=True,
        )
    )

    api_port, prometheus_port = _free_port(), _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CHURN_", "PROMETHEUS_"))}
    env.update(
        CHURN_MODEL_DIR=str(models),
        CHURN_HOST="127.0.0.1",
        CHURN_PORT=str(api_port),
        CHURN_WORKERS="2",  # as docker-compose runs it: metrics merged across worker processes
        CHURN_API_KEY=API_KEY,
        CHURN_CHALLENGER_MODE="shadow",
        CHURN_DATABASE_URL=f"sqlite:///{tmp / 'predictions.sqlite3'}",
        CHURN_METRICS_MULTIPROC_DIR=str(tmp / "metrics"),
        CHURN_DRIFT_WINDOW_SECONDS=str(DRIFT_WINDOW_SECONDS),
        CHURN_DRIFT_SLOT_SECONDS="2",
        CHURN_DRIFT_UPDATE_SECONDS="1",
        CHURN_DRIFT_MIN_COUNT=str(DRIFT_MIN_COUNT),
        CHURN_PERFORMANCE_UPDATE_SECONDS="1",
    )
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(_prometheus_config(api_port, prometheus_port)))
    logs = {"service": tmp / "service.log", "prometheus": tmp / "prometheus.log"}
    service = _start([sys.executable, "-m", "app"], logs["service"], env)
    prometheus = _start(
        [
            str(PROMETHEUS),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
            "--log.level=warn",
        ],
        logs["prometheus"],
    )
    stack = Stack(api=f"http://127.0.0.1:{api_port}", prometheus=f"http://127.0.0.1:{prometheus_port}", logs=logs)
    try:
        _wait_for(lambda: httpx.get(f"{stack.api}/ready").status_code == 200, 60, "the service's /ready", stack.tails)
        _wait_for(lambda: httpx.get(f"{stack.prometheus}/-/ready").status_code == 200, 30, "Prometheus", stack.tails)
        _wait_for(lambda: stack.value(f'up{{job="{SCRAPE_JOB}"}}') == 1, 20, "the first scrape", stack.tails)
        _send_in_distribution_traffic(stack, tmp)
        yield stack
    finally:
        _stop(service)
        _stop(prometheus)


def _send_in_distribution_traffic(stack: Stack, tmp: Path) -> None:
    """Single and batch predictions, a few invalid ones, outcomes for all, and one model reload."""
    duration = str(IN_DISTRIBUTION_SECONDS)
    singles_log, batches_log = tmp / "singles.log", tmp / "batches.log"
    singles = _simulate(
        stack.api, singles_log, "--rate", "25", "--duration", duration, "--seed", "11", "--invalid", "0.05",
        "--outcomes-after", "1", "--api-key", API_KEY,
    )  # fmt: skip
    batches = _simulate(
        stack.api, batches_log, "--rate", "60", "--batch-size", "10", "--duration", duration, "--seed", "12",
        "--outcomes-after", "1", "--api-key", API_KEY,
    )  # fmt: skip
    summaries = [_summary(singles, singles_log), _summary(batches, batches_log)]
    for summary in summaries:
        assert summary["customers_scored"] > 0 and summary["transport_errors"] == 0, summary
        assert summary["outcomes_matched"] == summary["customers_scored"], summary
    assert summaries[0]["calls_by_status"].get("422", 0) > 0, summaries[0]  # the invalid customers
    reload = httpx.post(f"{stack.api}/admin/reload", headers={"X-API-Key": API_KEY}, timeout=60)
    assert reload.status_code == 200, reload.text
    # Prometheus has seen a full window and the realized metrics before anything is judged.
    job = f'{{job="{SCRAPE_JOB}"}}'
    _wait_for(
        lambda: (stack.value(f"churn_drift_window_predictions{job}") or 0) >= DRIFT_MIN_COUNT,
        30,
        "a drift window above the minimum count",
        stack.tails,
    )
    _wait_for(lambda: stack.value(f"churn_realized_roc_auc{job}") is not None, 30, "realized metrics", stack.tails)
    _wait_for(
        lambda: stack.value(f'churn_model_reloads_total{{job="{SCRAPE_JOB}", outcome="success"}}') == 1,
        20,
        "the reload to be scraped",
        stack.tails,
    )
    time.sleep(3)  # a few more rule evaluations on the full window


def test_drift_alerts_are_inactive_for_in_distribution_traffic(stack: Stack) -> None:
    job = f'{{job="{SCRAPE_JOB}"}}'
    window = stack.value(f"churn_drift_window_predictions{job}")
    assert window is not None and window >= DRIFT_MIN_COUNT
    # Not drifting at any scrape so far, and the alert never became pending.
    assert stack.value(f"max(max_over_time(churn_feature_drifting{job}[10m]))") == 0
    assert stack.query('ALERTS{alertname="ChurnFeatureDrift"}[10m]') == []
    assert stack.alerts("ChurnFeatureDrift") == []
    assert stack.alerts("ChurnScoreDrift") == []
    rules = stack.rules()
    assert rules["ChurnFeatureDrift"]["state"] == "inactive"
    # Every rule of the repository evaluates cleanly against the real service's metrics.
    assert {name: rule["health"] for name, rule in rules.items() if rule["health"] != "ok"} == {}
    assert stack.alerts("ChurnServiceNotReady") == []


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    empty = []
    for where, expr in dashboard_queries(dashboard):
        result = stack.query(grafana_to_promql(expr, rate_interval="1m", interval="15s"))
        # Annotations mark events (a reload in the last minute, a firing alert): empty is their normal state.
        if not result and where.startswith("panel"):
            empty.append(f"{where}: {expr}")
    assert empty == [], "dashboard queries without data:\n" + "\n".join(empty)


def test_realized_metrics_and_the_model_reach_prometheus(stack: Stack) -> None:
    job = f'{{job="{SCRAPE_JOB}"}}'
    assert (stack.value(f"churn_realized_labelled_predictions{job}") or 0) > 0
    assert 0.5 < (stack.value(f"churn_realized_roc_auc{job}") or 0) <= 1.0
    assert 0.5 < (stack.value(f"max(max_over_time(churn_estimated_roc_auc{job}[10m]))") or 0) <= 1.0
    (info,) = stack.query(f"churn_model_info{job} == 1")
    assert info["metric"]["family"] == "logistic_regression"
    assert stack.value(f"min(churn_model_ready{job})") == 1
    assert stack.value(f'sum(churn_http_requests_total{{job="{SCRAPE_JOB}", status="422"}})') > 0


def test_drift_alerts_turn_pending_or_firing_for_drifted_traffic(stack: Stack, tmp_path: Path) -> None:
    log = tmp_path / "drifted.log"
    drifted = _simulate(stack.api, log, "--rate", "80", "--batch-size", "10", "--duration", "60", "--drift", "0.8")
    stack.logs["drifted traffic"] = log
    try:
        # Within about one drift window (20 s) on an idle machine; the margin is for busy CI machines.
        _wait_for(
            lambda: any(alert["state"] in {"pending", "firing"} for alert in stack.alerts("ChurnFeatureDrift")),
            60,
            "ChurnFeatureDrift to become pending or firing",
            stack.tails,
        )
        # Riskier customers get higher scores: the score distribution drifts as well.
        _wait_for(
            lambda: any(alert["state"] in {"pending", "firing"} for alert in stack.alerts("ChurnScoreDrift")),
            30,
            "ChurnScoreDrift to become pending or firing",
            stack.tails,
        )
    finally:
        _stop(drifted, signal.SIGINT)
    alerts = stack.alerts("ChurnFeatureDrift")
    drifting = {
        sample["metric"]["feature"]
        for sample in stack.query(
            f'max by (feature) (max_over_time(churn_feature_drifting{{job="{SCRAPE_JOB}"}}[1m])) == 1'
        )
    }
    alerted = {alert["labels"]["feature"] for alert in alerts if alert["state"] in {"pending", "firing"}}
    assert alerted and alerted <= drifting, (alerted, drifting)
    # The simulator's drift makes contracts month-to-month, internet fibre and charges higher.
    assert alerted & {"Contract", "InternetService", "MonthlyCharges", "tenure"}
    for alert in alerts:
        assert alert["labels"]["severity"] == "warning"
        assert alert["labels"]["feature"] in alert["annotations"]["summary"]
    summary = json.loads(log.read_text()[log.read_text().index("{") :])
    assert summary["customers_scored"] > 0 and summary["drift"] == 0.8
