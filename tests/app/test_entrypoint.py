"""``python -m app`` for real: uvicorn workers over HTTP, settings from the environment, shared metrics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from app.__main__ import RELOAD_DIR_ENV, fresh_metrics_dir, main, share_reloads
from tests.app.serving.test_families import bundle_probabilities
from tests.conftest import customer_record

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(port: int, workers: int, models_dir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``python -m app`` on ``port`` with its output (stdout and stderr) readable from the process."""
    flags = ["--port", str(port), "--workers", str(workers), "--model-dir", str(models_dir)]
    command = [sys.executable, "-m", "app", *flags]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until_ready(base_url: str, process: subprocess.Popen[Any], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"python -m app exited with {process.returncode}: {process.stdout.read()}")
        try:
            if httpx.get(f"{base_url}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("python -m app did not become ready")


@pytest.fixture
def running_service(linear_models_dir: Path, tmp_path: Path) -> Any:
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_12345.db").write_bytes(b"left over from an earlier run")
    env = {
        **os.environ,
        # The flags below win over these.
        "CHURN_MODEL_DIR": str(tmp_path / "no-models-here"),
        "CHURN_PORT": "1",
        "CHURN_WORKERS": "1",
        "CHURN_LOG_LEVEL": "warning",
        "CHURN_DATABASE_URL": f"sqlite:///{tmp_path / 'predictions.sqlite3'}",
        "CHURN_METRICS_MULTIPROC_DIR": str(metrics_dir),
        "CHURN_SHUTDOWN_DRAIN_SECONDS": "0",
    }
    process = start_service(port, 2, linear_models_dir, env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base_url, process)
        yield base_url, metrics_dir
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.slow
def test_served_over_http_equals_the_in_process_prediction(
    running_service: tuple[str, Path], linear_models_dir: Path, customers: pd.DataFrame
) -> None:
    base_url, metrics_dir = running_service
    records = [customer_record(customers, row) for row in range(20)]

    with httpx.Client(base_url=base_url) as client:
        served = [client.post("/predict", json=record).json()["churn_probability"] for record in records]
        metrics = client.get("/metrics")

    np.testing.assert_allclose(served, bundle_probabilities(linear_models_dir, records), rtol=0, atol=1e-9)
    assert metrics.status_code == 200
    # Both workers' counters add up in one scrape (multiprocess mode via the wiped shared directory).
    scored = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.text.splitlines()
        if line.startswith("churn_predictions_total{")
    ]
    assert sum(scored) == len(records)
    assert not (metrics_dir / "counter_12345.db").exists(), "the metrics directory is wiped at start"


def test_fresh_metrics_dir_wipes_a_configured_directory(tmp_path: Path) -> None:
    configured = tmp_path / "metrics"
    configured.mkdir()
    (configured / "gauge_all_1.db").write_text("stale")

    directory, temporary = fresh_metrics_dir(configured)

    assert (directory, temporary) == (configured, False)
    assert list(directory.iterdir()) == []


def test_fresh_metrics_dir_defaults_to_a_new_temporary_directory() -> None:
    directory, temporary = fresh_metrics_dir(None)
    try:
        assert temporary
        assert directory.is_dir()
        assert list(directory.iterdir()) == []
    finally:
        directory.rmdir()


def test_several_workers_get_a_fresh_directory_to_share_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(RELOAD_DIR_ENV, raising=False)

    share_reloads(tmp_path, workers=2)

    assert os.environ[RELOAD_DIR_ENV] == str(tmp_path / "reload")
    assert list((tmp_path / "reload").iterdir()) == []


def test_a_single_worker_shares_reloads_with_nobody(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RELOAD_DIR_ENV, raising=False)

    share_reloads(tmp_path, workers=1)

    assert RELOAD_DIR_ENV not in os.environ
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_flag_is_refused_with_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--prot", "8001"])

    assert exited.value.code == 2
    assert "unrecognized arguments: --prot" in capsys.readouterr().err


def test_an_invalid_setting_stops_the_start_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() writes the environment: these make the test restore it.
    for variable in ("CHURN_WORKERS", "CHURN_PORT", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(variable, "1")
    with pytest.raises(SystemExit) as exited:
        main(["--port", "0"])

    assert "invalid settings" in str(exited.value) and "port" in str(exited.value)


@pytest.mark.slow
def test_sigterm_turns_ready_off_answers_during_the_drain_then_exits_with_every_prediction_logged(
    linear_models_dir: Path, customers: pd.DataFrame, tmp_path: Path
) -> None:
    import sqlite3

    port, database = free_port(), tmp_path / "predictions.sqlite3"
    env = {
        **os.environ,
        "CHURN_DATABASE_URL": f"sqlite:///{database}",
        "CHURN_SHUTDOWN_DRAIN_SECONDS": "3",
        "CHURN_LOG_LEVEL": "info",
    }
    process = start_service(port, 1, linear_models_dir, env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base_url, process)
        record = customer_record(customers, 1)
        with httpx.Client(base_url=base_url) as client:
            assert client.post("/predict", json=record).status_code == 200
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            ready = client.get("/ready")
            during = [client.post("/predict", json=record).status_code for _ in range(5)]
        assert ready.status_code == 503 and ready.json()["reason"] == "shutting down"
        assert during == [200] * 5  # still answering while the balancer stops routing here
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read()
    assert "shutting down" in output
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT COUNT(*) FROM prediction_log").fetchone()[0] == 6
