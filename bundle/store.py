"""The model bundle: layout, manifest, checksums, atomic publishing and verified loading.

A bundle is a directory ``<models_dir>/<version>/`` holding the model artifact (joblib for
scikit-learn, XGBoost, LightGBM and soft-vote ensembles of them; TorchScript for the MLP),
optional extras (report, plots) and ``manifest.json``: the feature schema (which is also the
fitted preprocessing), threshold, calibration, metrics, leaderboard, drift reference, library
versions and the SHA-256 of every other file. ``<models_dir>/current`` names the bundle to serve.

Publishing writes into a hidden staging directory, fsyncs, renames it into place and only then
replaces ``current`` atomically, so a crash at any point leaves the previous bundle current and
intact. Loading verifies every checksum before anything is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bundle.manifest import CURRENT, MANIFEST, STAGING_PREFIX, BundleError, Manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- publishing ----------------------------------------------------------------------------
def staging_dir(models_dir: Path, version: str) -> Path:
    """A fresh hidden directory to build a bundle in; invisible to loaders until published."""
    models_dir.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=models_dir))
    # mkdtemp makes it private (0700); a published bundle gets a directory's usual permissions, so a
    # service running as another user (the container's) can read it.
    directory.chmod(0o777 & ~_current_umask())
    return directory


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staged: Path, manifest: Manifest, models_dir: Path, make_current: bool = True) -> Path:
    """Checksum the staged files, write the manifest, move the bundle into place, point ``current`` at it.

    Each step is atomic on a POSIX filesystem; until the final ``os.replace`` of ``current``
    the previous bundle stays the one that is served.
    """
    manifest.files = {
        str(path.relative_to(staged)): sha256_file(path)
        for path in sorted(staged.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    manifest_path = staged / MANIFEST
    manifest_path.write_text(json.dumps(manifest.to_dict(), indent=2, default=_json_default))
    for path in staged.rglob("*"):
        if path.is_file():
            _fsync_path(path)
    final = models_dir / manifest.version
    if final.exists():
        raise BundleError(f"bundle {final} already exists")
    os.replace(staged, final)
    _fsync_path(models_dir)
    if make_current:
        set_current(models_dir, manifest.version)
    return final


def set_current(models_dir: Path, version: str) -> None:
    """Atomically point ``current`` at an existing bundle."""
    if not (models_dir / version / MANIFEST).is_file():
        raise BundleError(f"cannot make {version!r} current: {models_dir / version / MANIFEST} does not exist")
    pointer = models_dir / CURRENT
    tmp = models_dir / f".{CURRENT}.{uuid.uuid4().hex}.tmp"
    with tmp.open("w") as handle:
        handle.write(version + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, pointer)
    _fsync_path(models_dir)


def discard_staging(models_dir: Path) -> list[Path]:
    """Remove staging directories left by crashed runs (never touches published bundles)."""
    removed = []
    if models_dir.is_dir():
        for path in models_dir.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---- loading --------------------------------------------------------------------------------
def current_bundle_dir(models_dir: Path) -> Path:
    """The directory ``current`` names; BundleError with the reason if there is none."""
    pointer = models_dir / CURRENT
    if not models_dir.is_dir():
        raise BundleError(f"model directory {models_dir} does not exist: train a model first (python -m training)")
    if not pointer.is_file():
        raise BundleError(f"no current bundle: {pointer} does not exist: train a model first (python -m training)")
    version = pointer.read_text().strip()
    if not version or "/" in version or version.startswith("."):
        raise BundleError(f"{pointer} does not name a bundle (content {version!r})")
    bundle = models_dir / version
    if not bundle.is_dir():
        raise BundleError(f"{pointer} names {version!r} but {bundle} does not exist")
    return bundle


def read_manifest(bundle_dir: Path) -> Manifest:
    path = bundle_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path} is not a JSON object")
    return Manifest.from_dict(data)


def verify_bundle(bundle_dir: Path) -> Manifest:
    """Read the manifest and check every listed file's SHA-256 before anything is deserialised."""
    manifest = read_manifest(bundle_dir)
    if manifest.artifact not in manifest.files:
        raise BundleError(f"manifest does not list a checksum for the model artifact {manifest.artifact!r}")
    for relative, expected in manifest.files.items():
        path = (bundle_dir / relative).resolve()
        if bundle_dir.resolve() not in path.parents:
            raise BundleError(f"manifest lists a file outside the bundle: {relative!r}")
        if not path.is_file():
            raise BundleError(f"{relative} is listed in the manifest but missing from {bundle_dir}")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(f"checksum mismatch for {relative}: expected {expected[:12]}..., found {actual[:12]}...")
    return manifest


def list_bundles(models_dir: Path) -> list[str]:
    """Published bundle versions, oldest first."""
    if not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if p.is_dir() and (p / MANIFEST).is_file())
