"""The served bundle shipped to Dask workers as bytes, and loaded once per worker process.

Workers may run on other hosts without the model directory, so the client sends the bundle's files
themselves (once per worker, through ``Client.scatter``). Each worker writes them to a private temp
directory and loads them with ``Predictor.load``: the same checksum verification, model loading,
compilation and warm-up as the service, from the same bytes.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from app.serving.predictor import Predictor
from app.serving.risk import RiskPolicy
from bundle.manifest import MANIFEST, Manifest
from bundle.store import bundle_path, current_bundle_dir, verify_bundle


@dataclass(frozen=True)
class ScoringPolicy:
    """What turns a probability into the service's answer: risk bands, playbook, number of reasons."""

    risk_bands: dict[str, float]
    playbook: dict[str, list[str]]
    top_reasons: int


@dataclass(frozen=True)
class ShippedBundle:
    """Every file of one verified bundle, by its path inside the bundle directory."""

    version: str
    files: dict[str, bytes] = field(repr=False)

    @property
    def digest(self) -> str:
        """Names the bundle's exact content: the manifest lists every other file's SHA-256."""
        return hashlib.sha256(self.files[MANIFEST]).hexdigest()


def pack_bundle(model_dir: Path, version: str | None = None) -> tuple[ShippedBundle, Manifest]:
    """The bundle ``current`` names (or ``version``), verified, as bytes; BundleError with the reason."""
    bundle_dir = current_bundle_dir(model_dir) if version is None else bundle_path(model_dir, version)
    manifest = verify_bundle(bundle_dir)
    names = [MANIFEST, *manifest.files]
    return ShippedBundle(manifest.version, {name: (bundle_dir / name).read_bytes() for name in names}), manifest


class PredictorCache:
    """One loaded predictor per bundle and policy in this process, shared by its threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, str], Predictor] = {}

    def get(self, bundle: ShippedBundle, policy: ScoringPolicy) -> Predictor:
        key = (bundle.digest, repr(policy))
        with self._lock:
            if key not in self._loaded:
                self._loaded.clear()  # a new job's bundle replaces the last one
                self._loaded[key] = load_shipped(bundle, policy)
            return self._loaded[key]


def load_shipped(bundle: ShippedBundle, policy: ScoringPolicy) -> Predictor:
    """Write the bundle to a temp model directory and load it as the service does (files removed after)."""
    risk = RiskPolicy(policy.risk_bands, policy.playbook)
    with tempfile.TemporaryDirectory(prefix="churn-bundle-") as model_dir:
        bundle_dir = Path(model_dir) / bundle.version
        for name, content in bundle.files.items():
            path = bundle_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        return Predictor.load(Path(model_dir), risk, policy.top_reasons, version=bundle.version)


worker_predictors = PredictorCache()
