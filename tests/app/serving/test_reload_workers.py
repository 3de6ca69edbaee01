"""One POST /admin/reload brings every worker of a real ``python -m app`` to the new bundle (or none of them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from app.api.admin import reload_answer
from app.serving.reload import Reloaded, WorkerReport, WorkerSync
from bundle.store import current_bundle_dir, set_current
from tests.app.test_entrypoint import ROOT, free_port, wait_until_ready
from tests.conftest import API_KEY, build_bundle

KEY = {"X-API-Key": API_KEY}
WORKERS = 2
READY_CALLS = 20


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A models directory whose current bundle is a logistic regression, free to change."""
    models_dir = tmp_path / "models"
    build_bundle(models_dir, "logistic_regression")
    return models_dir


@pytest.fixture
def service(models_dir: Path, tmp_path: Path) -> Iterator[str]:
    """``python -m app`` with two workers on a free loopback port; stopped (or killed) afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "CHURN_MODEL_DIR": str(models_dir),
        "CHURN_PORT": str(port),
        "CHURN_WORKERS": str(WORKERS),
        "CHURN_LOG_LEVEL": "warning",
        "CHURN_API_KEY": API_KEY,
        "CHURN_DATABASE_URL": f"sqlite:///{tmp_path / 'predictions.sqlite3'}",
        "CHURN_METRICS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the workers go down with it in any case
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base_url, process, timeout=45)
        wait_until_every_worker_reports(tmp_path / "metrics" / "reload", timeout=20)
        yield base_url
    finally:
        stop(process)


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_until_every_worker_reports(reload_dir: Path, timeout: float) -> None:
    # /ready answering proves one worker is up; a reload should start with both serving.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((reload_dir / "served").glob("*.json"))) == WORKERS:
            return
        time.sleep(0.1)
    raise AssertionError(f"not every worker reported what it serves in {reload_dir}")


def served_versions(base_url: str) -> list[str | None]:
    """/ready over a new connection each time, so the calls spread over the workers."""
    versions = []
    for _ in range(READY_CALLS):
        response = httpx.get(f"{base_url}/ready", headers={"Connection": "close"}, timeout=5)
        versions.append(response.json().get("model_version"))
    return versions


def model_info_series(base_url: str) -> dict[str, float]:
    """churn_model_info, merged over the workers: version -> value."""
    series = {}
    for line in httpx.get(f"{base_url}/metrics", timeout=5).text.splitlines():
        if line.startswith("churn_model_info{"):
            version = line.split('version="', 1)[1].split('"', 1)[0]
            series[version] = float(line.rsplit(" ", 1)[1])
    return series


@pytest.mark.slow
def test_one_reload_brings_every_worker_to_the_new_bundle(service: str, models_dir: Path) -> None:
    old_version = current_bundle_dir(models_dir).name
    new_version = build_bundle(models_dir, "xgboost", seed=1, make_current=False).name
    set_current(models_dir, new_version)

    response = httpx.post(f"{service}/admin/reload", headers=KEY, timeout=40)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["model_version"], body["previous_version"]) == ("reloaded", new_version, old_version)
    assert len(body["workers"]) == WORKERS
    assert {worker["model_version"] for worker in body["workers"]} == {new_version}
    assert served_versions(service) == [new_version] * READY_CALLS
    info = model_info_series(service)
    assert info[new_version] == 1
    # A worker's file cannot forget a series: the replaced version reads 0 (or is gone), never 1.
    assert info.get(old_version, 0) == 0


@pytest.mark.slow
def test_a_corrupt_new_bundle_is_refused_and_every_worker_keeps_the_old_one(service: str, models_dir: Path) -> None:
    old_version = current_bundle_dir(models_dir).name
    broken = build_bundle(models_dir, "logistic_regression", seed=2)
    (broken / "model.joblib").write_bytes(b"not a model")

    response = httpx.post(f"{service}/admin/reload", headers=KEY, timeout=40)

    assert response.status_code == 409, response.text
    assert f"still serving {old_version}" in response.json()["detail"]
    assert "checksum mismatch for model.joblib" in response.json()["detail"]
    time.sleep(1.5)  # longer than the workers' look for announcements: nothing may have reached them
    assert served_versions(service) == [old_version] * READY_CALLS
    assert model_info_series(service) == {old_version: 1}


# ---- the pieces, without processes ------------------------------------------------------------------
def finished_process_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_announcements_count_up_and_reports_of_dead_workers_are_dropped(tmp_path: Path) -> None:
    this_worker = WorkerSync(tmp_path, pid=os.getpid())
    dead_worker = WorkerSync(tmp_path, pid=finished_process_pid())

    with this_worker.service_wide_lock():
        first = this_worker.announce("20261123T130000Z-aaaaaa")
    with this_worker.service_wide_lock():
        second = this_worker.announce("20261123T140000Z-bbbbbb")
    this_worker.report(second.generation, second.version)
    dead_worker.report(first.generation, first.version)

    assert (first.generation, second.generation) == (1, 2)
    assert this_worker.read_announcement() == second
    assert this_worker.live_reports() == [WorkerReport(os.getpid(), 2, "20261123T140000Z-bbbbbb")]
    assert not (tmp_path / "served" / f"{dead_worker.pid}.json").exists()


def reloaded_to(version: str, generation: int) -> Reloaded:
    predictor = SimpleNamespace(version=version, load_seconds=0.25)
    return Reloaded(predictor=predictor, previous_version="20261123T130000Z-aaaaaa", generation=generation)  # type: ignore[arg-type]


def test_the_answer_says_whether_every_worker_switched() -> None:
    new = "20261123T140000Z-bbbbbb"
    reloaded = reloaded_to(new, generation=3)

    switched = reload_answer(reloaded, [WorkerReport(1, 3, new), WorkerReport(2, 4, new)])
    loading = reload_answer(reloaded, [WorkerReport(1, 3, new), WorkerReport(2, 2, "20261123T130000Z-aaaaaa")])
    failed = reload_answer(
        reloaded, [WorkerReport(1, 3, new), WorkerReport(2, 3, "20261123T130000Z-aaaaaa", "out of memory")]
    )

    assert switched.status_code == 200
    assert json.loads(switched.body)["status"] == "reloaded"
    assert loading.status_code == 202
    assert json.loads(loading.body)["detail"] == "workers 2 had not switched yet; they follow shortly"
    assert failed.status_code == 500
    assert json.loads(failed.body)["detail"] == (
        "reload incomplete: worker 2 still serves 20261123T130000Z-aaaaaa: out of memory"
    )
