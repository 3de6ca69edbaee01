"""The model registry: the stage of every bundle in a model directory, and every change of stage.

Stages: the **champion** is the bundle ``current`` names (the one the service loads); the
**challenger** is the bundle the ``challenger`` pointer file names (written atomically like
``current``); **archived** bundles sit in ``<models_dir>/.archive/`` where nothing loads them; every
other published bundle has no stage.

Every change takes the model directory's lock, refuses with the reason when the target bundle does
not verify (every checksum, as loading does) and goes through :mod:`bundle.stage_journal`: a change
interrupted part way is finished by the next one anyone makes, so each pointer always names a
verified bundle and :mod:`bundle.history` records every change exactly once. The service picks up a
new champion on ``POST /admin/reload``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle.history import (
    ARCHIVED,
    CHALLENGER_STAGE,
    CHAMPION,
    append_event,
    champion_lineage,
    new_event,
    read_history,
)
from bundle.locking import model_dir_lock
from bundle.manifest import CHALLENGER, CURRENT, MANIFEST, BundleError
from bundle.stage_journal import ARCHIVE_DIR, StageJournal
from bundle.store import bundle_path, check_version_name, list_bundles, read_manifest, read_pointer, verify_bundle


class RegistryError(BundleError):
    """A stage change that was refused; the message says why and nothing changed."""


@dataclass
class BundleEntry:
    """One bundle as the registry lists it; ``problem`` says why its manifest cannot be read."""

    version: str
    stage: str | None
    path: Path
    family: str | None = None
    created_at: str | None = None
    metrics: dict[str, Any] | None = None
    fingerprint: str | None = None
    rows: int | None = None
    threshold: float | None = None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


class ModelRegistry:
    """Reads and changes the stages of the bundles in ``models_dir``."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self.journal = StageJournal(self.models_dir)

    # ---- reading (never writes, takes no lock) ------------------------------------------------
    def champion(self) -> str | None:
        return read_pointer(self.models_dir, CURRENT) if self.models_dir.is_dir() else None

    def challenger(self) -> str | None:
        return read_pointer(self.models_dir, CHALLENGER) if self.models_dir.is_dir() else None

    def history(self) -> list[dict[str, Any]]:
        return read_history(self.models_dir).events

    def previous_champion(self) -> str | None:
        """The champion a rollback returns to, if the history names one."""
        lineage = champion_lineage(self.history())
        return lineage[-2] if len(lineage) >= 2 else None

    def entries(self) -> list[BundleEntry]:
        """Every published and archived bundle, oldest first."""
        champion, challenger = pointer_or_none(self.models_dir, CURRENT), pointer_or_none(self.models_dir, CHALLENGER)
        stages = {champion: CHAMPION, challenger: CHALLENGER_STAGE}
        found = [describe(self.models_dir / v, stages.get(v)) for v in list_bundles(self.models_dir)]
        found += [describe(self.archive_dir / v, ARCHIVED) for v in list_bundles(self.archive_dir)]
        return sorted(found, key=age)

    def entry(self, version: str) -> BundleEntry:
        check_version_name(version)
        for found in self.entries():
            if found.version == version:
                return found
        raise RegistryError(f"no bundle {version!r} in {self.models_dir} (see: python -m training models list)")

    @property
    def archive_dir(self) -> Path:
        return self.models_dir / ARCHIVE_DIR

    # ---- changing ----------------------------------------------------------------------------
    def promote(self, version: str, reason: str | None) -> dict[str, Any]:
        """Make ``version`` the champion; the one it replaces becomes the rollback target."""
        with self._changing():
            champion = self.champion()
            if version == champion:
                raise RegistryError(f"{version} is already the champion")
            self._verify_live(version, "promote")
            event = new_event("promote", CHAMPION, version, champion, version, reason)
            return self.journal.commit(event, self._champion_pointers(version))

    def rollback(self, reason: str | None) -> dict[str, Any]:
        """Make the previous champion (from the history) the champion again."""
        with self._changing():
            champion, previous = self.champion(), self.previous_champion()
            if previous is None:
                raise RegistryError("the history names no earlier champion to roll back to")
            self._verify_live(previous, "roll back to")
            event = new_event("rollback", CHAMPION, previous, champion, previous, reason)
            return self.journal.commit(event, self._champion_pointers(previous))

    def set_challenger(self, version: str, reason: str | None) -> dict[str, Any]:
        with self._changing():
            if version == self.champion():
                raise RegistryError(f"{version} is the champion; a challenger must be another bundle")
            before = self.challenger()
            if version == before:
                raise RegistryError(f"{version} is already the challenger")
            self._verify_live(version, "make challenger")
            event = new_event("challenger", CHALLENGER_STAGE, version, before, version, reason)
            return self.journal.commit(event, {CHALLENGER: version})

    def clear_challenger(self, reason: str | None) -> dict[str, Any]:
        with self._changing():
            before = self.challenger()
            if before is None:
                raise RegistryError("there is no challenger to clear")
            event = new_event("clear-challenger", CHALLENGER_STAGE, before, before, None, reason)
            return self.journal.commit(event, {CHALLENGER: None})

    def archive(self, versions: list[str], reason: str | None, delete: bool = False) -> list[dict[str, Any]]:
        """Move ``versions`` to the archive (or delete them); never the champion, challenger or rollback target."""
        with self._changing():
            protected = self._protected()
            for version in versions:
                check_version_name(version)
                if version in protected:
                    raise RegistryError(f"{version} is the {protected[version]}; it cannot be archived")
                if not stored_at(self.models_dir, version):
                    raise RegistryError(f"no bundle {version!r} in {self.models_dir}")
                if not delete and stored_at(self.models_dir, version) == self.archive_dir:
                    raise RegistryError(f"{version} is already archived")
            action, after = ("delete", "deleted") if delete else ("archive", ARCHIVED)
            events = []
            for version in versions:
                before = ARCHIVED if stored_at(self.models_dir, version) == self.archive_dir else None
                events.append(self.journal.commit(new_event(action, ARCHIVED, version, before, after, reason), {}))
            return events

    def restore(self, version: str, reason: str | None) -> dict[str, Any]:
        """Bring an archived bundle back among the published ones (with no stage)."""
        with self._changing():
            if stored_at(self.models_dir, check_version_name(version)) != self.archive_dir:
                raise RegistryError(f"{version} is not archived")
            if (self.models_dir / version).exists():
                raise RegistryError(f"{self.models_dir / version} already exists")
            return self.journal.commit(new_event("restore", ARCHIVED, version, ARCHIVED, None, reason), {})

    def retention_candidates(self, keep: int) -> list[str]:
        """Published bundles beyond the newest ``keep``, not counting the champion, challenger and rollback target."""
        protected = self._protected()
        live = [entry for entry in self.entries() if entry.stage != ARCHIVED and entry.version not in protected]
        return [entry.version for entry in live[: max(0, len(live) - keep)]]

    def recover(self) -> dict[str, Any] | None:
        """Finish a change a crash interrupted; returns its record, or None when there was none."""
        with model_dir_lock(self.models_dir):
            return self.journal.finish()

    # ---- the change protocol -----------------------------------------------------------------
    @contextmanager
    def _changing(self) -> Iterator[None]:
        with model_dir_lock(self.models_dir):
            self.journal.finish()
            self._record_outside_change()
            yield

    def _record_outside_change(self) -> None:
        """Record it when ``current`` moved without the registry (by hand, an older tool), so rollback stays right."""
        lineage = champion_lineage(self.history())
        champion = pointer_or_none(self.models_dir, CURRENT)
        if lineage and champion and lineage[-1] != champion:
            reason = "current was changed outside the registry"
            append_event(self.models_dir, new_event("adopt", CHAMPION, champion, lineage[-1], champion, reason))

    # ---- checks ------------------------------------------------------------------------------
    def _champion_pointers(self, version: str) -> dict[str, str | None]:
        # A promoted challenger stops being the challenger: one bundle holds one stage.
        return {CURRENT: version, CHALLENGER: None} if self.challenger() == version else {CURRENT: version}

    def _verify_live(self, version: str, doing: str) -> None:
        check_version_name(version)
        if stored_at(self.models_dir, version) == self.archive_dir:
            raise RegistryError(f"cannot {doing} {version}: it is archived (restore it first)")
        try:
            verify_bundle(bundle_path(self.models_dir, version))
        except BundleError as exc:
            raise RegistryError(f"cannot {doing} {version}: {exc}") from None

    def _protected(self) -> dict[str, str]:
        protected = {self.previous_champion(): "rollback target (previous champion)"}
        protected.update({self.challenger(): CHALLENGER_STAGE, self.champion(): CHAMPION})
        protected.pop(None, None)
        return protected


def pointer_or_none(models_dir: Path, name: str) -> str | None:
    """What pointer file ``name`` names, None when it is absent or unreadable (for listing)."""
    try:
        return read_pointer(models_dir, name) if models_dir.is_dir() else None
    except BundleError:
        return None


def stored_at(models_dir: Path, version: str) -> Path | None:
    """The directory holding bundle ``version``: the model directory, its archive, or None."""
    for place in (models_dir, models_dir / ARCHIVE_DIR):
        if (place / version / MANIFEST).is_file() and not (place / version).is_symlink():
            return place
    return None


def describe(bundle_dir: Path, stage: str | None) -> BundleEntry:
    """What the manifest says about a bundle, without verifying its files."""
    entry = BundleEntry(version=bundle_dir.name, stage=stage, path=bundle_dir)
    try:
        manifest = read_manifest(bundle_dir)
    except BundleError as exc:
        entry.problem = str(exc)
        return entry
    data = manifest.training.get("data", {}) if isinstance(manifest.training.get("data"), dict) else {}
    entry.family, entry.created_at, entry.threshold = manifest.model_family, manifest.created_at, manifest.threshold
    entry.metrics = {key: value for key, value in manifest.metrics.items() if isinstance(value, (int, float))}
    entry.fingerprint = data.get("fingerprint")
    rows = data.get("rows", manifest.training.get("rows"))
    entry.rows = rows if isinstance(rows, int) else None
    return entry


def age(entry: BundleEntry) -> tuple[str, int]:
    """Sort key, oldest first: the manifest's creation time, then (within its one-second steps) the file's."""
    try:
        written = (entry.path / MANIFEST).stat().st_mtime_ns
    except OSError:
        written = 0
    return entry.created_at or "", written
