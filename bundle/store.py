"""The model bundle: layout, manifest, checksums, atomic publishing and verified loading.

A bundle is a directory ``<models_dir>/<version>/`` holding the model artifact (joblib for
scikit-learn, XGBoost, LightGBM and soft-vote ensembles of them; TorchScript for the MLP),
optional extras (report, plots) and ``manifest.json``: the feature schema (which is also the
fitted preprocessing), threshold, calibration, metrics, leaderboard, drift reference, library
versions and the SHA-256 of every other file. ``<models_dir>/current`` is a file holding the
version name of the bundle to serve.

Publishing builds in a hidden staging directory, writes the manifest, verifies the staged bundle,
renames it into place and only then replaces ``current`` atomically, so a crash at any point leaves
the previous bundle current and intact. Publishers of one model directory take turns
(:mod:`bundle.locking`), and a staging directory is only ever discarded once its owner is gone.
Loading verifies every checksum before anything is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bundle.locking import STAGING_OWNER, claim, has_live_owner, model_dir_lock
from bundle.manifest import CURRENT, MANIFEST, POINTERS, STAGING_PREFIX, BundleError, Manifest

# A version is one plain path component: no separators, no leading dot, nothing that climbs out.
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_POINTER_MAX_BYTES = 256


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- publishing ----------------------------------------------------------------------------
@contextmanager
def staging(models_dir: Path, version: str) -> Iterator[Path]:
    """A fresh hidden directory, owned by this process, to build a bundle in; invisible to loaders.

    :func:`publish` moves it into place; if the block ends without publishing, it is removed.
    """
    with model_dir_lock(models_dir):
        directory = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=models_dir))
        # mkdtemp makes it private (0700); a published bundle gets a directory's usual permissions, so a
        # service running as another user (the container's) can read it.
        directory.chmod(0o777 & ~_current_umask())
        owner = claim(directory)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # gone already once published
        owner.close()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: Path) -> None:
    """Flush a file's or directory's entry to disk (a rename is durable once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _bundle_files(staged: Path) -> list[Path]:
    owner = staged / STAGING_OWNER
    return [path for path in sorted(staged.rglob("*")) if path.is_file() and path != owner]


def publish(staged: Path, manifest: Manifest, models_dir: Path, make_current: bool = True) -> Path:
    """Checksum the staged files, write the manifest, verify, move the bundle into place, point ``current`` at it.

    Raises BundleError, with nothing published, when the staged bundle does not verify. Each step is
    atomic on a POSIX filesystem; until the final ``os.replace`` of ``current`` the previous bundle
    stays the one that is served.
    """
    with model_dir_lock(models_dir):
        if not staged.is_dir():
            raise BundleError(f"staging directory {staged} has disappeared; nothing was published")
        manifest_path = staged / MANIFEST
        manifest.files = {
            str(path.relative_to(staged)): sha256_file(path) for path in _bundle_files(staged) if path != manifest_path
        }
        manifest_path.write_text(json.dumps(manifest.to_dict(), indent=2, default=_json_default))
        for path in _bundle_files(staged):
            fsync_path(path)
        verify_staged(staged, manifest)
        final = models_dir / manifest.version
        if final.exists() or final.is_symlink():
            raise BundleError(f"bundle {final} already exists")
        (staged / STAGING_OWNER).unlink()
        os.replace(staged, final)
        fsync_path(models_dir)
        if make_current:
            write_pointer(models_dir, CURRENT, manifest.version)
    return final


def verify_staged(staged: Path, manifest: Manifest) -> None:
    """The bundle about to be published is exactly what its manifest lists, or BundleError says what differs."""
    check_version_name(manifest.version)
    written = verify_bundle(staged)
    if written.version != manifest.version or written.files != manifest.files:
        raise BundleError(f"the manifest in {staged} is not the one just written")
    listed = set(manifest.files) | {MANIFEST}
    unlisted = sorted(str(path.relative_to(staged)) for path in _bundle_files(staged))
    unlisted = [name for name in unlisted if name not in listed]
    if unlisted:
        raise BundleError(f"staged bundle holds files its manifest does not list: {', '.join(unlisted[:5])}")
    if any(path.is_symlink() for path in staged.rglob("*")):
        raise BundleError(f"staged bundle {staged} holds a symbolic link; a bundle holds plain files only")


def set_current(models_dir: Path, version: str) -> None:
    """Atomically point ``current`` at an existing bundle directly inside ``models_dir``."""
    with model_dir_lock(models_dir):
        write_pointer(models_dir, CURRENT, version)


def write_pointer(models_dir: Path, name: str, version: str | None) -> None:
    """Atomically make pointer file ``name`` name bundle ``version`` (``None`` removes it); hold the lock.

    The caller holds :func:`bundle.locking.model_dir_lock`, which is not re-entrant.
    """
    pointer = models_dir / name
    if version is None:
        pointer.unlink(missing_ok=True)
        fsync_path(models_dir)
        return
    bundle = bundle_path(models_dir, version)
    if not (bundle / MANIFEST).is_file():
        raise BundleError(f"cannot point {name} at {version!r}: {bundle / MANIFEST} does not exist")
    tmp = models_dir / f".{name}.{uuid.uuid4().hex}.tmp"
    with tmp.open("w") as handle:
        handle.write(version + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, pointer)  # replaces a symlink itself, never what it points to
    fsync_path(models_dir)


def discard_staging(models_dir: Path) -> list[Path]:
    """Remove what dead publishers left (staging directories, pointer files); never a running publisher's."""
    removed: list[Path] = []
    if not models_dir.is_dir():
        return removed
    with model_dir_lock(models_dir):
        for path in models_dir.glob(f"{STAGING_PREFIX}*"):
            if path.is_dir() and not path.is_symlink() and not has_live_owner(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        # Pointer files are only ever written under the lock: any found now was left by a crash.
        for name in POINTERS:
            for path in models_dir.glob(f".{name}.*.tmp"):
                path.unlink(missing_ok=True)
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
def check_version_name(version: str) -> str:
    """``version`` if it can name a bundle (one plain path component), else BundleError."""
    if not isinstance(version, str) or not _VERSION_NAME.fullmatch(version):
        raise BundleError(f"{version!r} does not name a bundle: a version is letters, digits, '.', '_' and '-'")
    return version


def bundle_path(models_dir: Path, version: str) -> Path:
    """The directory of bundle ``version``: a real directory directly inside ``models_dir``, never a link out."""
    bundle = models_dir / check_version_name(version)
    if bundle.is_symlink():
        raise BundleError(f"{bundle} is a symbolic link; a bundle must be a directory inside {models_dir}")
    if not bundle.is_dir():
        raise BundleError(f"bundle {version} does not exist in {models_dir}")
    if bundle.resolve().parent != models_dir.resolve():
        raise BundleError(f"bundle {version} resolves outside {models_dir}")
    return bundle


def read_current(models_dir: Path) -> str:
    """The version ``current`` names; BundleError with the reason if it names none."""
    if not models_dir.is_dir():
        raise BundleError(f"model directory {models_dir} does not exist: train a model first (python -m training)")
    version = read_pointer(models_dir, CURRENT)
    if version is None:
        pointer = models_dir / CURRENT
        raise BundleError(f"no current bundle: {pointer} does not exist: train a model first (python -m training)")
    return version


def read_pointer(models_dir: Path, name: str) -> str | None:
    """The version pointer file ``name`` names, None when there is no such file; BundleError if unreadable."""
    pointer = models_dir / name
    if pointer.is_symlink():
        raise BundleError(f"{pointer} is a symbolic link; it must be a file holding a bundle version")
    if not pointer.exists():
        return None
    try:
        fd = os.open(pointer, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            content = handle.read(_POINTER_MAX_BYTES + 1)
    except OSError as exc:
        raise BundleError(f"{pointer} cannot be read: {exc.strerror or exc}") from None
    version = content.decode("utf-8", errors="replace").strip()
    if len(content) > _POINTER_MAX_BYTES or not _VERSION_NAME.fullmatch(version):
        raise BundleError(f"{pointer} does not name a bundle (content {version[:80]!r})")
    return version


def current_bundle_dir(models_dir: Path) -> Path:
    """The directory ``current`` names; BundleError with the reason if there is none."""
    version = read_current(models_dir)
    try:
        return bundle_path(models_dir, version)
    except BundleError as exc:
        raise BundleError(f"{models_dir / CURRENT} names {version!r}, which is unusable: {exc}") from None


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
    return sorted(
        p.name
        for p in models_dir.iterdir()
        if _VERSION_NAME.fullmatch(p.name) and p.is_dir() and (p / MANIFEST).is_file()  # never a staging directory
    )
