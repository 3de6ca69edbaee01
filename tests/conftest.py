"""Shared fixtures: small, fast, seeded model bundles built straight through the bundle contract.

The builder fits the feature schema column by column (``bundle.features.fit_feature``), encodes
with ``FeatureSchema.encode``, fits one model of the requested family and publishes a verified
bundle, exactly the layout ``python -m training`` produces, in well under a second per family.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest

from bundle.drift_reference import DriftReference, categorical_reference, numeric_reference
from bundle.features import (
    DroppedColumn,
    FeatureSchema,
    FeatureSpec,
    clean_boolean,
    clean_numeric,
    fit_feature,
)
from bundle.manifest import Calibration, Manifest, library_versions, new_version, utc_now_iso
from bundle.store import publish, staging

TARGET = "Churn"
ID_COLUMN = "customerID"
CONSTANT_COLUMN = "Country"  # dropped by the schema: one value only

_YES_NO = ["Yes", "No"]
_SERVICES = ["OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport", "StreamingTV", "StreamingMovies"]


def synthetic_customers(n_rows: int = 600, seed: int = 0) -> pd.DataFrame:
    """A Telco-shaped table whose churn depends on contract, tenure, charges and internet service."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 73, n_rows)
    contract = rng.choice(["Month-to-month", "One year", "Two year"], n_rows, p=[0.55, 0.25, 0.2])
    internet = rng.choice(["DSL", "Fiber optic", "No"], n_rows, p=[0.35, 0.45, 0.2])
    monthly = np.round(rng.uniform(18.0, 118.0, n_rows), 2)
    phone = rng.choice(_YES_NO, n_rows, p=[0.9, 0.1])
    multiple = np.where(phone == "No", "No phone service", rng.choice(_YES_NO, n_rows))
    total = np.round(monthly * tenure, 2).astype(str).astype(object)
    total[tenure == 0] = " "  # the Telco export leaves new customers' total blank
    logit = (
        -1.0
        + 1.4 * (contract == "Month-to-month")
        - 0.04 * tenure
        + 0.015 * (monthly - 65)
        + 0.8 * (internet == "Fiber optic")
    )
    churn = rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logit))
    frame = {
        ID_COLUMN: [f"{i:04d}-CUST" for i in range(n_rows)],
        "gender": rng.choice(["Female", "Male"], n_rows),
        "SeniorCitizen": rng.choice([0, 1], n_rows, p=[0.84, 0.16]),
        "Partner": rng.choice(_YES_NO, n_rows),
        "Dependents": rng.choice(_YES_NO, n_rows, p=[0.3, 0.7]),
        "tenure": tenure,
        "PhoneService": phone,
        "MultipleLines": multiple,
        "InternetService": internet,
    }
    for service in _SERVICES:
        frame[service] = np.where(internet == "No", "No internet service", rng.choice(_YES_NO, n_rows))
    frame.update(
        {
            "Contract": contract,
            "PaperlessBilling": rng.choice(_YES_NO, n_rows, p=[0.6, 0.4]),
            "PaymentMethod": rng.choice(
                ["Electronic check", "Mailed check", "Bank transfer (automatic)", "Credit card (automatic)"], n_rows
            ),
            "MonthlyCharges": monthly,
            "TotalCharges": total,
            CONSTANT_COLUMN: "United States",
            TARGET: np.where(churn, "Yes", "No"),
        }
    )
    return pd.DataFrame(frame)


# ---- schema fitting -----------------------------------------------------------------------------
def _boolean_labels(values: list[Any]) -> tuple[Any, Any] | None:
    """The table's own true/false labels when a column is two-valued yes/no or 1/0, else None."""
    distinct = {value for value in values if value is not None}
    if len(distinct) != 2:
        return None
    try:
        readings = {value: clean_boolean(value) for value in distinct}
    except ValueError:
        return None
    if set(readings.values()) != {True, False}:
        return None
    true_label = next(value for value, reading in readings.items() if reading)
    false_label = next(value for value, reading in readings.items() if not reading)
    return true_label, false_label


def _numeric_values(values: list[Any]) -> list[float | None] | None:
    try:
        return [clean_numeric(value) for value in values]
    except ValueError:
        return None


def fit_schema(frame: pd.DataFrame, target: str = TARGET, id_column: str | None = ID_COLUMN) -> FeatureSchema:
    """Learn a FeatureSchema from a raw table the way training does: one kind per column."""
    features: list[FeatureSpec] = []
    dropped: list[DroppedColumn] = []
    for name in frame.columns:
        if name in (target, id_column):
            continue
        raw = [
            None if isinstance(v, float) and np.isnan(v) else (v.item() if hasattr(v, "item") else v)
            for v in frame[name]
        ]
        if len({str(v) for v in raw}) <= 1:
            dropped.append(DroppedColumn(name=name, reason="constant: a single value in training"))
            continue
        labels = _boolean_labels(raw)
        numbers = None if labels else _numeric_values(raw)
        if labels:
            cleaned = [None if v is None else clean_boolean(v) for v in raw]
            features.append(fit_feature(name, "boolean", cleaned, true_label=labels[0], false_label=labels[1]))
        elif numbers is not None:
            features.append(fit_feature(name, "numeric", numbers))
        else:
            features.append(fit_feature(name, "categorical", [None if v is None else str(v).strip() for v in raw]))
    if id_column:
        dropped.insert(0, DroppedColumn(name=id_column, reason="identifier"))
    return FeatureSchema(features=features, target=target, positive_label="Yes", id_column=id_column, dropped=dropped)


def clean_frame(schema: FeatureSchema, frame: pd.DataFrame) -> dict[str, list[Any]]:
    return {
        spec.name: [schema.clean_value(spec.name, v.item() if hasattr(v, "item") else v) for v in frame[spec.name]]
        for spec in schema.features
    }


# ---- model fitting --------------------------------------------------------------------------------
def _fit_estimator(family: str, matrix: np.ndarray, labels: np.ndarray, seed: int) -> Any:
    if family == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=2000).fit(matrix, labels)
    if family == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=30, max_depth=6, random_state=seed, n_jobs=1).fit(matrix, labels)
    if family == "xgboost":
        from xgboost import XGBClassifier

        return XGBClassifier(n_estimators=60, max_depth=3, learning_rate=0.1, n_jobs=1, random_state=seed).fit(
            matrix, labels
        )
    if family == "lightgbm":
        from lightgbm import LGBMClassifier

        return LGBMClassifier(
            n_estimators=60, num_leaves=15, learning_rate=0.1, n_jobs=1, random_state=seed, verbose=-1
        ).fit(matrix, labels)
    raise ValueError(f"no builder for model family {family!r}")


def _save_torchscript_mlp(matrix: np.ndarray, labels: np.ndarray, path: Path, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    network = torch.nn.Sequential(torch.nn.Linear(matrix.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimiser = torch.optim.Adam(network.parameters(), lr=0.02)
    inputs = torch.from_numpy(matrix.astype(np.float32))
    targets = torch.from_numpy(labels.astype(np.float32)).reshape(-1, 1)
    for _ in range(60):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(network(inputs), targets)
        loss.backward()
        optimiser.step()
    network.eval()
    torch.jit.save(torch.jit.script(network), str(path))


def _drift_reference(schema: FeatureSchema, columns: dict[str, list[Any]], scores: np.ndarray) -> DriftReference:
    references = []
    for spec in schema.features:
        values = columns[spec.name]
        if spec.kind == "numeric":
            references.append(numeric_reference(spec.name, np.array([np.nan if v is None else v for v in values])))
        else:
            references.append(categorical_reference(spec.name, [None if v is None else str(v) for v in values]))
    return DriftReference(features=references, score=numeric_reference("score", scores, kind="score"))


def build_bundle(
    models_dir: Path,
    family: str = "logistic_regression",
    frame: pd.DataFrame | None = None,
    *,
    seed: int = 0,
    make_current: bool = True,
    calibration: Calibration | None = None,
) -> Path:
    """Fit and publish one bundle of ``family`` into ``models_dir``; returns the bundle directory."""
    frame = synthetic_customers(seed=seed) if frame is None else frame
    schema = fit_schema(frame)
    columns = clean_frame(schema, frame)
    matrix = schema.encode(columns, len(frame)).matrix
    labels = (frame[TARGET].astype(str) == "Yes").to_numpy().astype(int)
    version = new_version()
    with staging(models_dir, version) as staged:
        if family == "mlp":
            artifact, artifact_format = "model.pt", "torchscript"
            _save_torchscript_mlp(matrix, labels, staged / artifact, seed)
        else:
            artifact, artifact_format = "model.joblib", "joblib"
            joblib.dump(_fit_estimator(family, matrix, labels, seed), staged / artifact)
        manifest = Manifest(
            version=version,
            created_at=utc_now_iso(),
            model_family=family,
            artifact=artifact,
            artifact_format=artifact_format,
            schema=schema,
            drift_reference=_drift_reference(schema, columns, np.linspace(0, 1, len(frame))),
            threshold=0.4,
            calibration=calibration or Calibration(),
            metrics={"roc_auc": 0.8, "f1": 0.6},
            training={"rows": len(frame), "seed": seed, "source": "synthetic test table"},
            libraries=library_versions(),
        )
        return publish(staged, manifest, models_dir, make_current=make_current)


# ---- fixtures -------------------------------------------------------------------------------------
BundleBuilder = Callable[..., Path]


@pytest.fixture(scope="session")
def customers() -> pd.DataFrame:
    return synthetic_customers()


@pytest.fixture(scope="session")
def bundle_builder() -> BundleBuilder:
    return build_bundle


@pytest.fixture(scope="session")
def linear_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory whose current bundle is a logistic regression (shared, never modified)."""
    models_dir = tmp_path_factory.mktemp("linear") / "models"
    build_bundle(models_dir, "logistic_regression")
    return models_dir


API_KEY = "test-api-key"


@pytest.fixture(scope="session", autouse=True)
def prediction_log_spool_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Services started by tests spool their prediction log under a temp dir, never in the worktree."""
    import os

    directory = tmp_path_factory.mktemp("prediction-log-spool")
    previous = os.environ.get("CHURN_PREDICTION_LOG_SPOOL_DIR")
    os.environ["CHURN_PREDICTION_LOG_SPOOL_DIR"] = str(directory)
    yield directory
    if previous is None:
        del os.environ["CHURN_PREDICTION_LOG_SPOOL_DIR"]
    else:
        os.environ["CHURN_PREDICTION_LOG_SPOOL_DIR"] = previous


def service_settings(models_dir: Path, **overrides: Any) -> Any:
    """Settings for a test service: no monitoring side effects unless asked, a known API key."""
    from app.settings import Settings

    values: dict[str, Any] = {"model_dir": models_dir, "api_key": API_KEY, "monitoring_enabled": False}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def serve() -> Any:
    """``serve(models_dir, **settings)`` -> a started TestClient (lifespan run), closed after the test."""
    from contextlib import ExitStack

    from fastapi.testclient import TestClient

    from app.main import create_app

    with ExitStack() as stack:

        def start(models_dir: Path, **overrides: Any) -> TestClient:
            return stack.enter_context(TestClient(create_app(service_settings(models_dir, **overrides))))

        yield start


@pytest.fixture(scope="session")
def family_models_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One models directory per model family, each with a current bundle (built once per session)."""
    dirs = {}
    for family in ("logistic_regression", "random_forest", "xgboost", "lightgbm", "mlp"):
        dirs[family] = tmp_path_factory.mktemp(family) / "models"
        build_bundle(dirs[family], family)
    return dirs


def customer_record(frame: pd.DataFrame, row: int = 0, drop_extra: bool = True) -> dict[str, Any]:
    """One row of the table as a JSON-ready request body (numpy scalars made plain)."""
    record = {name: (value.item() if hasattr(value, "item") else value) for name, value in frame.iloc[row].items()}
    if drop_extra:
        for name in (ID_COLUMN, TARGET, CONSTANT_COLUMN):
            record.pop(name, None)
    return record
