"""Three service processes as one service: one PostgreSQL log, one real Prometheus scraping all three.

Each process is a replica as it would run on its own host (its own metrics and drift directory),
sharing only the log database, with ``CHURN_DRIFT_SHARING=database``. Drifted customers are spread
over the three, so few that no replica alone reaches the drift window's minimum count; together they
do. The test checks that every replica exports the same window, that the repository's drift alert
turns pending or firing once for the service, that an outcome posted to one replica matches a
prediction another one made, and that the dashboard's request-rate panel sums the three.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from deploy import SCRAPE_JOB
from tests.deploy.test_prometheus_e2e import (
    API_KEY,
    PROMETHEUS,
    Stack,
    _free_port,
    _prometheus_config,
    _simulate,
    _start,
    _stop,
    _summary,
    _wait_for,
)

POSTGRES_URL = os.environ.get("CHURN_TEST_POSTGRES_URL")
pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package 'prometheus')"),
    pytest.mark.skipif(POSTGRES_URL is None, reason="set CHURN_TEST_POSTGRES_URL to a PostgreSQL database"),
]
REPLICAS = 3
DRIFT_MIN_COUNT = 100  # above what one replica gets in a window, below what the three get together
DRIFT_WINDOW_SECONDS = 20


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, list[str]]]:
    from sqlalchemy import create_engine

    from app.monitoring.log_store import create_tables, engine_url, metadata
    from training.config import TrainingConfig
    from training.pipeline import run_training
    from training.synthetic import generate_customers

    tmp = tmp_path_factory.mktemp("replicas_e2e")
    models = tmp / "models"
    config = TrainingConfig(
        data=generate_customers(2000, seed=1), model_dir=models, models=("logistic_regression",), trials=2,
        report=False, progress=False,
    )  # fmt: skip
    run_training(config)
    engine = create_engine(engine_url(POSTGRES_URL or ""))
    create_tables(engine)
    with engine.begin() as connection:  # a log of this run only
        for table in reversed(metadata.sorted_tables):
            connection.execute(table.delete())
    engine.dispose()

    ports, prometheus_port = [_free_port() for _ in range(REPLICAS)], _free_port()
    base = {key: value for key, value in os.environ.items() if not key.startswith(("CHURN_", "PROMETHEUS_"))}
    logs, processes = {}, []
    for number, port in enumerate(ports):
        env = {
            **base,
            "CHURN_MODEL_DIR": str(models),
            "CHURN_HOST": "127.0.0.1",
            "CHURN_PORT": str(port),
            "CHURN_API_KEY": API_KEY,
            "CHURN_DATABASE_URL": POSTGRES_URL or "",
            "CHURN_DRIFT_SHARING": "database",
            "CHURN_METRICS_MULTIPROC_DIR": str(tmp / f"metrics-{number}"),  # nothing shared on disk
            "CHURN_PREDICTION_LOG_SPOOL_DIR": str(tmp / f"spool-{number}"),
            "CHURN_DRIFT_WINDOW_SECONDS": str(DRIFT_WINDOW_SECONDS),
            "CHURN_DRIFT_SLOT_SECONDS": "2",
            "CHURN_DRIFT_UPDATE_SECONDS": "1",
            "CHURN_DRIFT_MIN_COUNT": str(DRIFT_MIN_COUNT),
            "CHURN_PERFORMANCE_UPDATE_SECONDS": "1",
        }
        logs[f"replica {number}"] = tmp / f"replica-{number}.log"
        processes.append(_start([sys.executable, "-m", "app"], logs[f"replica {number}"], env))
    prometheus_config = _prometheus_config(ports[0], prometheus_port)
    for job in prometheus_config["scrape_configs"]:
        if job["job_name"] == SCRAPE_JOB:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in ports]}]
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(prometheus_config))
    logs["prometheus"] = tmp / "prometheus.log"
    prometheus = _start(
        [
            str(PROMETHEUS), f"--config.file={config_path}", f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn",
        ],
        logs["prometheus"],
    )  # fmt: skip
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    stack = Stack(api=urls[0], prometheus=f"http://127.0.0.1:{prometheus_port}", logs=logs)
    try:
        for url in urls:
            _wait_for(lambda url=url: httpx.get(f"{url}/ready").status_code == 200, 90, f"{url}/ready", stack.tails)
        _wait_for(
            lambda: stack.value(f'sum(up{{job="{SCRAPE_JOB}"}})') == REPLICAS, 30, "three scraped replicas", stack.tails
        )
        yield stack, urls
    finally:
        for process in processes:
            _stop(process)
        _stop(prometheus)


def test_drift_spread_over_replicas_is_judged_once_for_the_service(replicas: tuple[Stack, list[str]]) -> None:
    stack, urls = replicas
    tmp = Path(stack.logs["prometheus"]).parent
    # 3 x 4 customers per second: about 80 per replica in a 20 s window, 240 together.
    logs = [tmp / f"drifted-{number}.log" for number in range(REPLICAS)]
    arguments = ("--rate", "4", "--duration", "45", "--drift", "0.9")
    runs = [
        _simulate(url, log, *arguments, "--seed", str(n)) for n, (url, log) in enumerate(zip(urls, logs, strict=True))
    ]
    job = f'{{job="{SCRAPE_JOB}"}}'
    try:
        _wait_for(
            lambda: any(alert["state"] in {"pending", "firing"} for alert in stack.alerts("ChurnFeatureDrift")),
            60,
            "ChurnFeatureDrift to become pending or firing",
            stack.tails,
        )
        # Every replica exports the window of all three (they update at their own moments).
        _wait_for(
            lambda: stack.value(f"count(churn_drift_window_predictions{job} >= {DRIFT_MIN_COUNT})") == REPLICAS,
            40,
            "every replica's window above the minimum count",
            stack.tails,
        )
        # What each one scored itself in any window of the last minute.
        own = stack.query(f"max_over_time(sum by (instance) (increase(churn_predictions_total{job}[20s]))[1m:2s])")
    finally:
        summaries = [_summary(process, log) for process, log in zip(runs, logs, strict=True)]
    assert all(summary["customers_scored"] > 0 for summary in summaries)
    # None alone had enough to judge.
    assert len(own) == REPLICAS and max(float(o["value"][1]) for o in own) < DRIFT_MIN_COUNT, own
    # One alert per drifting feature for the service, whichever replicas export it.
    features = [alert["labels"]["feature"] for alert in stack.alerts("ChurnFeatureDrift")]
    assert features and len(features) == len(set(features)), features
    # The dashboard's request rate is the three replicas' together.
    total = stack.value(f"sum(rate(churn_http_requests_total{job}[30s]))")
    parts = [
        float(s["value"][1]) for s in stack.query(f"sum by (instance) (rate(churn_http_requests_total{job}[30s]))")
    ]
    assert len(parts) == REPLICAS and min(parts) > 0
    assert total == pytest.approx(sum(parts), rel=0.05)  # two queries, a moment apart


def test_an_outcome_reaches_whichever_replica_made_the_prediction(replicas: tuple[Stack, list[str]]) -> None:
    _, urls = replicas
    customer = httpx.get(f"{urls[0]}/metadata").json()["example_request"]
    prediction = httpx.post(f"{urls[1]}/predict", json=customer).json()
    outcome = {"prediction_id": prediction["prediction_id"], "churned": True}
    # The replica that predicted writes its log every CHURN_PREDICTION_LOG_FLUSH_SECONDS (1 s); until
    # then the outcome is answered "unknown" and not kept, and the caller posts it again.
    deadline = time.monotonic() + 15
    while True:
        feedback = httpx.post(f"{urls[2]}/feedback", json=outcome, headers={"X-API-Key": API_KEY}, timeout=30)
        assert feedback.status_code == 200, feedback.text
        if feedback.json()["matched"] or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert [entry["prediction_id"] for entry in feedback.json()["matched"]] == [prediction["prediction_id"]]
