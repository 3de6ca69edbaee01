"""A tiny one-feature bundle, built the way a training run builds one, for the bundle tests."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

from bundle.drift_reference import DriftReference, numeric_reference
from bundle.features import FeatureSchema, fit_feature
from bundle.manifest import Manifest, new_version, utc_now_iso
from bundle.store import publish, staging


def tiny_manifest(seed: int = 0) -> tuple[Manifest, LogisticRegression]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=200)
    y = (x + rng.normal(scale=0.5, size=200) > 0).astype(int)
    schema = FeatureSchema([fit_feature("x", "numeric", list(x))], target="Churn", positive_label=1)
    model = LogisticRegression().fit(schema.encode({"x": list(x)}, 200).matrix, y)
    manifest = Manifest(
        version=new_version(),
        created_at=utc_now_iso(),
        model_family="logistic_regression",
        artifact="model.joblib",
        artifact_format="joblib",
        schema=schema,
        drift_reference=DriftReference(
            features=[numeric_reference("x", x)], score=numeric_reference("score", rng.random(200), kind="score")
        ),
        threshold=0.5,
    )
    return manifest, model


def write_bundle_files(staged: Path, model: LogisticRegression) -> None:
    joblib.dump(model, staged / "model.joblib")
    (staged / "report").mkdir()
    (staged / "report" / "report.md").write_text("# report\n")


def publish_tiny_bundle(models_dir: Path, seed: int = 0, make_current: bool = True) -> Path:
    manifest, model = tiny_manifest(seed)
    with staging(models_dir, manifest.version) as staged:
        write_bundle_files(staged, model)
        return publish(staged, manifest, models_dir, make_current=make_current)
