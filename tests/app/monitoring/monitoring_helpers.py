"""Helpers for the monitoring tests: a fabricated bundle manifest, synthetic scored events, a small app."""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI

from app.monitoring import Monitor, NullMonitor
from app.monitoring.events import PredictionEvent
from app.settings import Settings
from bundle.drift_reference import DriftReference, FeatureReference, categorical_reference, numeric_reference
from bundle.features import FeatureSchema, fit_feature
from bundle.manifest import Manifest

API_KEY = "test-key"
BANDS = {"low": 0.0, "medium": 0.3, "high": 0.6}
CONTRACTS = ["Month-to-month", "One year", "Two year"]


def training_table(n: int = 5000, seed: int = 0) -> dict[str, list[Any]]:
    rng = np.random.default_rng(seed)
    tenure = rng.gamma(2.0, 12.0, n).round()
    charges = rng.normal(65, 30, n).clip(18, 120).round(2)
    charges_list: list[Any] = charges.tolist()
    for row in rng.choice(n, size=n // 50, replace=False):  # some gaps, so the missing bin is populated
        charges_list[row] = None
    return {
        "tenure": tenure.tolist(),
        "monthly_charges": charges_list,
        "contract": rng.choice(CONTRACTS, size=n, p=[0.55, 0.21, 0.24]).tolist(),
        "paperless": (rng.random(n) < 0.6).tolist(),
    }


@functools.lru_cache(maxsize=16)  # manifests are only read; building one takes ~30 ms
def make_manifest(
    version: str = "20261123T000000Z-aaaaaa", seed: int = 0, positive_rate: float | None = 0.3
) -> Manifest:
    table = training_table(seed=seed)
    schema = FeatureSchema(
        features=[
            fit_feature("tenure", "numeric", table["tenure"]),
            fit_feature("monthly_charges", "numeric", table["monthly_charges"]),
            fit_feature("contract", "categorical", table["contract"]),
            fit_feature("paperless", "boolean", table["paperless"]),
        ],
        target="churn",
        positive_label="Yes",
        id_column="customer_id",
    )
    rng = np.random.default_rng(seed + 1)
    scores = rng.beta(2, 4, len(table["tenure"]))
    reference = DriftReference(
        features=[
            numeric_reference("tenure", np.asarray(table["tenure"], dtype=float)),
            numeric_reference(
                "monthly_charges", np.array([np.nan if v is None else v for v in table["monthly_charges"]])
            ),
            categorical_reference("contract", table["contract"]),
            categorical_reference("paperless", table["paperless"]),
        ],
        score=numeric_reference("score", scores, kind="score"),
    )
    return Manifest(
        version=version,
        created_at="2026-11-23T00:00:00+00:00",
        model_family="logistic_regression",
        artifact="model.joblib",
        artifact_format="joblib",
        schema=schema,
        drift_reference=reference,
        threshold=0.5,
        metrics={"positive_rate": positive_rate} if positive_rate is not None else {},
    )


def value_in_bin(reference: FeatureReference, index: int) -> Any:
    """A value that the reference puts in bin ``index``."""
    if index == reference.n_bins - 1:
        return None  # the missing bin
    if reference.kind == "categorical":
        if index == len(reference.categories):
            return "__a value training never saw__"
        value = reference.categories[index]
        return {"True": True, "False": False}.get(value, value)
    edges = reference.edges
    if index == 0:
        return edges[0] - 1.0
    return edges[index - 1]  # bins are [e_{i-1}, e_i): the left edge belongs to bin i


def sample_column(reference: FeatureReference, n: int, rng: np.random.Generator, shift: float = 0.0) -> list[Any]:
    """n values whose bins follow the reference proportions (shift > 0 moves mass toward the first bins)."""
    proportions = np.asarray(reference.proportions, dtype=float)
    if shift:
        weights = np.exp(-shift * np.arange(proportions.size))
        proportions = proportions * weights
        proportions /= proportions.sum()
    bins = rng.choice(proportions.size, size=n, p=proportions / proportions.sum())
    return [value_in_bin(reference, int(b)) for b in bins]


def sample_scores(reference: FeatureReference, n: int, rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    values = sample_column(reference, n, rng, shift)
    return np.array([0.5 if v is None else min(max(v, 0.0), 1.0) for v in values], dtype=float)


def band_of(score: float) -> str:
    return max((bound, name) for name, bound in BANDS.items() if score >= bound)[1]


def make_event(
    manifest: Manifest,
    n: int = 1,
    *,
    seed: int = 0,
    timestamp: float | None = None,
    shift: float = 0.0,
    customer_ids: list[str | None] | None = None,
    scores: np.ndarray | None = None,
    version: str | None = None,
) -> PredictionEvent:
    rng = np.random.default_rng(seed)
    reference = manifest.drift_reference
    columns = {feature.name: sample_column(feature, n, rng, shift) for feature in reference.features}
    if scores is None:
        scores = sample_scores(reference.score, n, rng, shift)
    decisions = scores >= manifest.threshold
    imputed = [(i, "monthly_charges") for i, v in enumerate(columns["monthly_charges"]) if v is None]
    unseen = [(i, "contract") for i, v in enumerate(columns["contract"]) if v not in CONTRACTS and v is not None]
    return PredictionEvent(
        timestamp=time.time() if timestamp is None else timestamp,
        model_version=version or manifest.version,
        prediction_ids=[uuid.uuid4().hex for _ in range(n)],
        customer_ids=customer_ids if customer_ids is not None else [f"C-{seed}-{i}" for i in range(n)],
        columns=columns,
        scores=scores,
        decisions=decisions,
        risk_bands=[band_of(float(s)) for s in scores],
        imputed=imputed,
        unseen=unseen,
        stage_seconds={"validation": 0.0001, "features": 0.0002, "inference": 0.0003, "explanation": 0.0001},
    )


def single_events(event: PredictionEvent, timestamps: list[float] | None = None) -> list[PredictionEvent]:
    """``event``'s records as the /predict path hands them over: one event each."""
    singles = []
    for i in range(len(event.prediction_ids)):
        columns = {name: (values[i],) for name, values in event.columns.items()}
        singles.append(
            PredictionEvent(
                timestamp=event.timestamp if timestamps is None else timestamps[i],
                model_version=event.model_version,
                prediction_ids=[event.prediction_ids[i]],
                customer_ids=[event.customer_ids[i]],
                columns=columns,
                scores=event.scores[i : i + 1],
                decisions=event.decisions[i : i + 1],
                risk_bands=[event.risk_bands[i]],
                imputed=[(0, name) for row, name in event.imputed if row == i],
                unseen=[(0, name) for row, name in event.unseen if row == i],
                stage_seconds=dict(event.stage_seconds),
            )
        )
    return singles


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'predictions.sqlite3'}",
        "prediction_log_spool_dir": tmp_path / "spool",
        "api_key": API_KEY,
        "drift_update_seconds": 3600.0,  # tests trigger updates themselves
        "performance_update_seconds": 3600.0,
        "prediction_log_flush_seconds": 0.05,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def build_app(settings: Settings, monitor: Monitor | NullMonitor, manifest: Manifest | None = None) -> FastAPI:
    """A stand-in for the service: the monitoring router, the middleware, and routes that record events."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await monitor.start()
        if manifest is not None:
            monitor.model_loaded(manifest)
        yield
        await monitor.stop()

    app = FastAPI(lifespan=lifespan)
    app.state.settings = settings
    monitor.install(app)

    @app.post("/predict")
    def predict(seed: int = 0, n: int = 1) -> dict[str, Any]:
        assert manifest is not None
        event = make_event(manifest, n, seed=seed)
        monitor.record(event)
        return {"prediction_ids": event.prediction_ids, "scores": event.scores.tolist()}

    @app.get("/customers/{customer_id}")
    def customer(customer_id: str) -> dict[str, str]:
        return {"customer_id": customer_id}

    return app


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def metric_value(exposition: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition (None when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


@contextlib.contextmanager
def running(monitor: Monitor) -> Iterator[Monitor]:
    """Start and stop a monitor outside an app."""
    import asyncio

    asyncio.run(monitor.start())
    try:
        yield monitor
    finally:
        asyncio.run(monitor.stop())
