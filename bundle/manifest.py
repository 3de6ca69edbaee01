"""The bundle manifest: what a published model bundle declares about itself.

``manifest.json`` holds the model family and artifact, the feature schema (which is also the fitted
preprocessing), threshold, calibration, metrics, leaderboard, drift reference, library versions and
the SHA-256 of every other file. :mod:`bundle.store` writes and reads it.
"""

from __future__ import annotations

import platform
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bundle.drift_reference import DriftReference
from bundle.features import FeatureSchema

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CURRENT = "current"
CHALLENGER = "challenger"  # like current: names the bundle being tried against it
POINTERS = (CURRENT, CHALLENGER)
STAGING_PREFIX = ".staging-"
MODEL_FAMILIES = ("logistic_regression", "random_forest", "xgboost", "lightgbm", "mlp", "soft_vote")
ARTIFACT_FORMATS = ("joblib", "torchscript")


class BundleError(Exception):
    """A bundle that cannot be used; the message says exactly why."""


@dataclass
class Calibration:
    """Maps raw model scores to calibrated probabilities. Plain data, applied with numpy."""

    method: str = "none"  # "none" | "platt" | "isotonic"
    platt_a: float = 1.0  # p = sigmoid(a * logit(raw) + b)
    platt_b: float = 0.0
    isotonic_x: list[float] = field(default_factory=list)
    isotonic_y: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Manifest:
    version: str
    created_at: str
    model_family: str  # one of MODEL_FAMILIES
    artifact: str  # file name inside the bundle
    artifact_format: str  # one of ARTIFACT_FORMATS
    schema: FeatureSchema
    drift_reference: DriftReference
    threshold: float
    calibration: Calibration = field(default_factory=Calibration)
    threshold_strategy: str = "max_f1"
    metrics: dict[str, Any] = field(default_factory=dict)  # held-out test metrics of the winner
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    # Estimated (CBPE) and realized figures on the test split: what the live estimate is read against.
    performance_reference: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # data source, fingerprint, rows, seed, params, timings
    libraries: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    format_version: int = FORMAT_VERSION

    @property
    def framework(self) -> str:
        return {
            "logistic_regression": "scikit-learn",
            "random_forest": "scikit-learn",
            "xgboost": "xgboost",
            "lightgbm": "lightgbm",
            "mlp": "pytorch",
            "soft_vote": "ensemble",  # members' libraries are listed under "libraries"
        }.get(self.model_family, self.model_family)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "version": self.version,
            "created_at": self.created_at,
            "model": {
                "family": self.model_family,
                "framework": self.framework,
                "artifact": self.artifact,
                "artifact_format": self.artifact_format,
            },
            "threshold": self.threshold,
            "threshold_strategy": self.threshold_strategy,
            "calibration": self.calibration.to_dict(),
            "metrics": self.metrics,
            "leaderboard": self.leaderboard,
            "performance_reference": self.performance_reference,
            "training": self.training,
            "libraries": self.libraries,
            "schema": self.schema.to_dict(),
            "drift_reference": self.drift_reference.to_dict(),
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        try:
            if data.get("format_version") != FORMAT_VERSION:
                found = data.get("format_version")
                raise BundleError(f"manifest format_version {found!r} is not supported (expected {FORMAT_VERSION})")
            model = data["model"]
            if model["family"] not in MODEL_FAMILIES:
                raise BundleError(f"unknown model family {model['family']!r}")
            if model["artifact_format"] not in ARTIFACT_FORMATS:
                raise BundleError(f"unknown artifact format {model['artifact_format']!r}")
            return cls(
                version=data["version"],
                created_at=data["created_at"],
                model_family=model["family"],
                artifact=model["artifact"],
                artifact_format=model["artifact_format"],
                schema=FeatureSchema.from_dict(data["schema"]),
                drift_reference=DriftReference.from_dict(data["drift_reference"]),
                threshold=float(data["threshold"]),
                threshold_strategy=data.get("threshold_strategy", "max_f1"),
                calibration=Calibration(**data.get("calibration", {})),
                metrics=data.get("metrics", {}),
                leaderboard=data.get("leaderboard", []),
                performance_reference=data.get("performance_reference", {}),
                training=data.get("training", {}),
                libraries=data.get("libraries", {}),
                files=data["files"],
                format_version=data["format_version"],
            )
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"manifest is malformed: {type(exc).__name__}: {exc}") from exc


def library_versions() -> dict[str, str]:
    """Versions of what produced the bundle (python and the ML libraries that are installed)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("numpy", "pandas", "scikit-learn", "xgboost-cpu", "xgboost", "lightgbm", "torch", "joblib"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def new_version(now: datetime | None = None) -> str:
    """Sortable, unique bundle version such as ``20261123T125501Z-3fa2c1``."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
