"""Turn an encoded feature matrix into calibrated churn probabilities, for every model family.

The scorer is what serving keeps in memory. It avoids per-call overhead where the libraries
allow it: logistic regression is a dot product, XGBoost uses ``inplace_predict`` on the array,
LightGBM predicts from the Booster directly, and torch is imported only for an MLP bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.bundle import BundleError, Calibration, Manifest


class RawModel(Protocol):
    def raw_proba(self, matrix: np.ndarray) -> np.ndarray: ...


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def apply_calibration(calibration: Calibration, raw: np.ndarray) -> np.ndarray:
    if calibration.method == "platt":
        return _sigmoid(calibration.platt_a * _logit(raw) + calibration.platt_b)
    if calibration.method == "isotonic":
        return np.interp(raw, calibration.isotonic_x, calibration.isotonic_y)
    return raw


class LinearModel:
    """Logistic regression as coefficients: one dot product per batch."""

    def __init__(self, estimator: Any) -> None:
        self.coef = np.asarray(estimator.coef_, dtype=np.float64).ravel()
        self.intercept = float(np.ravel(estimator.intercept_)[0])
        self.estimator = estimator

    def raw_proba(self, matrix: np.ndarray) -> np.ndarray:
        return _sigmoid(matrix @ self.coef + self.intercept)

    def logit_contributions(self, matrix: np.ndarray, centre: np.ndarray) -> np.ndarray:
        return (matrix - centre) * self.coef


class SklearnModel:
    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        if hasattr(estimator, "n_jobs"):
            estimator.n_jobs = 1  # one thread per worker: parallelism comes from processes

    def raw_proba(self, matrix: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(matrix)[:, 1]


class XGBoostModel:
    def __init__(self, estimator: Any) -> None:
        self.booster = estimator.get_booster() if hasattr(estimator, "get_booster") else estimator
        self.booster.set_param({"nthread": 1})
        self.estimator = estimator

    def raw_proba(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(matrix, predict_type="value"), dtype=np.float64).reshape(-1)


class LightGBMModel:
    def __init__(self, estimator: Any) -> None:
        self.booster = estimator.booster_ if hasattr(estimator, "booster_") else estimator
        self.estimator = estimator

    def raw_proba(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(matrix, num_threads=1), dtype=np.float64).reshape(-1)


class TorchScriptModel:
    """A TorchScript module mapping float32 (n, features) to logits (n,) or (n, 1)."""

    def __init__(self, path: Path) -> None:
        import torch  # only MLP bundles pay for importing torch

        torch.set_num_threads(1)
        self._torch = torch
        self.module = torch.jit.load(str(path), map_location="cpu")
        self.module.eval()

    def raw_proba(self, matrix: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            logits = self.module(torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)))
        return _sigmoid(logits.reshape(-1).double().numpy())


def wrap_estimator(family: str, estimator: Any) -> RawModel:
    if family == "logistic_regression":
        return LinearModel(estimator)
    if family == "xgboost":
        return XGBoostModel(estimator)
    if family == "lightgbm":
        return LightGBMModel(estimator)
    if family == "random_forest":
        return SklearnModel(estimator)
    raise BundleError(f"no scorer for model family {family!r}")


def load_raw_model(bundle_dir: Path, manifest: Manifest) -> RawModel:
    """Deserialise the artifact. Call only after :func:`models.bundle.verify_bundle`."""
    path = bundle_dir / manifest.artifact
    try:
        if manifest.artifact_format == "torchscript":
            return TorchScriptModel(path)
        import joblib

        return wrap_estimator(manifest.model_family, joblib.load(path))
    except BundleError:
        raise
    except Exception as exc:  # any library error while deserialising means an unusable artifact
        raise BundleError(f"cannot load {manifest.artifact}: {type(exc).__name__}: {exc}") from exc


class Scorer:
    """Raw model + calibration: encoded matrix in, calibrated churn probabilities out."""

    def __init__(self, model: RawModel, calibration: Calibration) -> None:
        self.model = model
        self.calibration = calibration

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        return np.clip(apply_calibration(self.calibration, self.model.raw_proba(matrix)), 0.0, 1.0)
