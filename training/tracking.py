"""Experiment tracking with MLflow, for teams that use it: ``python -m training --mlflow`` or ``MLFLOW_TRACKING_URI``.

MLflow stays out of the default install and of the serving image (``pip install -r requirements-mlflow.txt``).
A training run becomes an MLflow run named after the bundle version: its settings as parameters,
each family's cross-validated figures and the winner's test metrics as metrics, the report, plots and
the whole bundle as artifacts. The bundle is registered as a version of the registered model
(``MLFLOW_REGISTERED_MODEL``, default ``churn``) tagged with the bundle version, and every stage change
of the model directory (training, ``python -m training models``, a retraining's promotion) moves
the ``champion`` and ``challenger`` aliases to the matching model version. The model directory stays
the source of truth: tracking mirrors it, and a tracking server that cannot be reached costs a
warning, never a published bundle.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger("training")

MLFLOW_INSTALL = "pip install -r requirements-mlflow.txt"
ALIASED_STAGES = ("champion", "challenger")
BUNDLE_TAG = "bundle_version"


def tracking_enabled(requested: bool = False) -> bool:
    return requested or bool(os.environ.get("MLFLOW_TRACKING_URI"))


def tracking_available() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def registered_model_name() -> str:
    return os.environ.get("MLFLOW_REGISTERED_MODEL", "churn")


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise RuntimeError(f"MLflow tracking was asked for, but mlflow is not installed: {MLFLOW_INSTALL}") from None
    return mlflow


def run_params(config: Any, manifest: Any) -> dict[str, Any]:
    """The settings of a training run that explain its result, as MLflow parameters."""
    training = manifest.training if isinstance(manifest.training, dict) else {}
    params: dict[str, Any] = {
        "models": ",".join(config.models) if config.models else "all",
        "trials": config.trials,
        "time_budget": config.time_budget,
        "seed": config.seed,
        "threshold_strategy": config.threshold_strategy,
        "winner": manifest.model_family,
        "threshold": round(manifest.threshold, 6),
        "calibration": manifest.calibration.method,
        "rows": training.get("rows"),
        "source": training.get("source"),
    }
    return {key: str(value)[:500] for key, value in params.items() if value is not None}


def run_metrics(manifest: Any) -> dict[str, float]:
    """Each family's cross-validated figures and the winner's test metrics, as MLflow metrics."""
    metrics = {
        f"test_{name}": float(value)
        for name, value in manifest.metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    for row in manifest.leaderboard:
        family = row.get("family")
        for name in ("cv_roc_auc", "cv_roc_auc_std", "oof_log_loss", "fit_seconds"):
            if family and isinstance(row.get(name), int | float):
                metrics[f"{name}.{family}"] = float(row[name])
    return metrics


def log_training(config: Any, manifest: Any, bundle_dir: Path, stage: str | None) -> str | None:
    """Log one published training run and register its bundle; the MLflow run id (None if it failed)."""
    try:
        mlflow = _mlflow()
        with mlflow.start_run(run_name=manifest.version) as run:
            mlflow.set_tags({BUNDLE_TAG: manifest.version, "model_family": manifest.model_family})
            mlflow.log_params(run_params(config, manifest))
            mlflow.log_metrics(run_metrics(manifest))
            mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
        version = register(mlflow, run, manifest.version)
        if stage in ALIASED_STAGES:
            mlflow.MlflowClient().set_registered_model_alias(registered_model_name(), stage, version)
    except Exception as exc:  # the bundle is published whatever the tracking server does
        logger.warning("the run could not be logged to MLflow (the bundle is published): %s", exc)
        return None
    return run.info.run_id


def register(mlflow: Any, run: Any, bundle_version: str) -> str:
    """Register the run's bundle as a new version of the registered model; that version's number."""
    client = mlflow.MlflowClient()
    name = registered_model_name()
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, description="Churn model bundles (python -m training)")
    created = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id, tags={BUNDLE_TAG: bundle_version}
    )
    return str(created.version)


def mirror_stage(event: dict[str, Any]) -> None:
    """Move the MLflow alias of a stage change (champion, challenger) to the matching model version."""
    stage = event.get("stage")
    if stage not in ALIASED_STAGES or not tracking_enabled():
        return
    try:
        client = _mlflow().MlflowClient()
        name, bundle_version = registered_model_name(), event.get("to")
        if bundle_version is None:
            client.delete_registered_model_alias(name, stage)
            return
        found = client.search_model_versions(f"name = '{name}' and tags.{BUNDLE_TAG} = '{bundle_version}'")
        if not found:
            logger.warning("bundle %s was not logged to MLflow: alias %s left as it was", bundle_version, stage)
            return
        client.set_registered_model_alias(name, stage, str(found[0].version))
    except Exception as exc:  # the model directory is the truth; the mirror catches up at the next change
        logger.warning("the %s alias could not be moved in MLflow: %s", stage, exc)
