"""Experiment tracking with MLflow against a real local tracking store (SQLite backend)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from training.config import TrainingConfig
from training.models_cli import main as models_main
from training.pipeline import run_training
from training.synthetic import generate_customers

mlflow = pytest.importorskip("mlflow", reason="needs requirements-mlflow.txt")


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A tracking store in a SQLite file, artifacts beside it, as MLFLOW_TRACKING_URI sets it up."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTERED_MODEL", "churn-test")
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("churn", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield uri
    mlflow.set_tracking_uri(None)


def train(models: Path, seed: int, **options: object) -> str:
    config = TrainingConfig(
        data=generate_customers(600, seed=seed), model_dir=models, models=("logistic_regression",), trials=2,
        report=False, progress=False, **options,
    )  # fmt: skip
    return run_training(config).manifest.version


def test_a_training_run_is_logged_registered_and_its_stage_follows_the_model_directory(
    tracking: str, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    first = train(models, seed=1)  # MLFLOW_TRACKING_URI alone turns tracking on
    second = train(models, seed=2, as_challenger=True)
    client = mlflow.MlflowClient()

    runs = mlflow.search_runs(output_format="list")
    by_bundle = {run.data.tags["bundle_version"]: run for run in runs}
    assert set(by_bundle) == {first, second}
    run = by_bundle[first]
    assert run.data.params["winner"] == "logistic_regression" and run.data.params["trials"] == "2"
    assert 0.5 < run.data.metrics["test_roc_auc"] <= 1.0
    assert "cv_roc_auc.logistic_regression" in run.data.metrics
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "bundle")}
    assert {"bundle/manifest.json", "bundle/model.joblib"} <= artifacts

    def aliased(alias: str) -> str:
        version = client.get_model_version_by_alias("churn-test", alias)
        return version.tags["bundle_version"]

    assert (aliased("champion"), aliased("challenger")) == (first, second)
    assert models_main(["promote", second, "--model-dir", str(models), "--reason", "better on recent customers"]) == 0
    assert aliased("champion") == second
    assert models_main(["rollback", "--model-dir", str(models), "--reason", "complaints"]) == 0
    assert aliased("champion") == first


def test_an_unreachable_tracking_server_never_stops_a_bundle_from_being_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    version = train(tmp_path / "models", seed=3)
    assert (tmp_path / "models" / "current").read_text().strip() == version
