"""Every worker logs each reload it takes or follows, whether it succeeded or why it failed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.serving.reload import WorkerSync
from bundle.store import current_bundle_dir, set_current
from tests.conftest import API_KEY, build_bundle

KEY = {"X-API-Key": API_KEY}
ANOTHER_WORKER = 999_999  # a pid no test process has


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    models_dir = tmp_path / "models"
    build_bundle(models_dir, "logistic_regression")
    return models_dir


def app_messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "app" and record.levelno == level]


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the worker never got there"
        time.sleep(0.05)


def test_a_reload_taken_here_is_logged(serve, models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="app")
    client = serve(models_dir)
    old = current_bundle_dir(models_dir).name
    new = build_bundle(models_dir, "logistic_regression", seed=1).name

    assert client.post("/admin/reload", headers=KEY).status_code == 200

    [message] = [m for m in app_messages(caplog, logging.INFO) if m.startswith("reloaded:")]
    assert f"model {new} (logistic_regression)" in message and f"(was {old})" in message


def test_a_failed_reload_taken_here_is_logged(serve, models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="app")
    client = serve(models_dir)
    old = current_bundle_dir(models_dir).name
    broken = build_bundle(models_dir, "logistic_regression", seed=2)
    (broken / "model.joblib").write_bytes(b"not a model")

    assert client.post("/admin/reload", headers=KEY).status_code == 409

    [message] = app_messages(caplog, logging.ERROR)
    assert message.startswith(f"reload failed, still serving {old}: ")
    assert "checksum mismatch for model.joblib" in message


def test_a_follower_logs_the_reload_it_follows_and_the_one_it_cannot(
    serve, models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app")
    reload_dir = tmp_path / "reload"
    client = serve(models_dir, reload_dir=reload_dir, reload_poll_seconds=0.05)
    other = WorkerSync(reload_dir, pid=ANOTHER_WORKER)
    new = build_bundle(models_dir, "logistic_regression", seed=3, make_current=False).name

    with other.service_wide_lock():
        other.announce(new)
    wait_for(lambda: client.get("/ready").json().get("model_version") == new)

    [followed] = [m for m in app_messages(caplog, logging.INFO) if m.startswith("reloaded:")]
    assert f"model {new} (logistic_regression) announced by another worker" in followed

    broken = build_bundle(models_dir, "logistic_regression", seed=4, make_current=False)
    (broken / "model.joblib").write_bytes(b"not a model")
    set_current(models_dir, broken.name)
    with other.service_wide_lock():
        other.announce(broken.name)
    wait_for(lambda: bool(app_messages(caplog, logging.ERROR)))

    [failure] = app_messages(caplog, logging.ERROR)
    assert failure.startswith(f"reload to {broken.name} announced by another worker failed, still serving {new}: ")
    assert "checksum mismatch for model.joblib" in failure
