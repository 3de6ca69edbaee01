"""The model registry: the stage of every bundle in a model directory, and every change of stage.

Stages: the **champion** is the bundle ``current`` names (the one the service loads); the
**challenger** is the bundle the ``challenger`` pointer file names (written atomically like
``current``); **archived** bundles sit in ``<models_dir>/.archive/`` where nothing loads them; every
other published bundle has no stage.

Every change takes the model directory's lock, refuses with the reason when the target bundle does
not verify (every checksum, as loading does), writes what it is about to do to a journal file, applies
it (pointer files replaced atomically, bundle directories renamed), appends the record to
:mod:`bundle.history` and only then removes the journal. A change interrupted part way is finished
by the next change anyone makes, so each pointer always names a verified bundle and the history
records every change exactly once. The service picks up a new champion on ``POST /admin/reload``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
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
from bundle.store import bundle_path, check_version_name, list_bundles, read_manifest, read_pointer, verify_bundle
from bundle.store import write_pointer as write_pointer_file

ARCHIVE_DIR = ".archive"
JOURNAL = ".registry-change.json"
POINTER_OF_STAGE = {CHAMPION: CURRENT, CHALLENGER_STAGE: CHALLENGER}


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
        champion, challenger = self._pointer_or_none(CURRENT), self._pointer_or_none(CHALLENGER)
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

    def _pointer_or_none(self, name: str) -> str | None:
        try:
            return read_pointer(self.models_dir, name) if self.models_dir.is_dir() else None
        except BundleError:
            return None

    # ---- changing ----------------------------------------------------------------------------
    def promote(self, version: str, reason: str | None) -> dict[str, Any]:
        """Make ``version`` the champion; the one it replaces becomes the rollback target."""
        with self._changing():
            champion = self.champion()
            if version == champion:
                raise RegistryError(f"{version} is already the champion")
            self._verify_live(version, "promote")
            event = new_event("promote", CHAMPION, version, champion, version, reason)
            return self._commit(event, self._champion_pointers(version))

    def rollback(self, reason: str | None) -> dict[str, Any]:
        """Make the previous champion (from the history) the champion again."""
        with self._changing():
            champion, previous = self.champion(), self.previous_champion()
            if previous is None:
                raise RegistryError("the history names no earlier champion to roll back to")
            self._verify_live(previous, "roll back to")
            event = new_event("rollback", CHAMPION, previous, champion, previous, reason)
            return self._commit(event, self._champion_pointers(previous))

    def set_challenger(self, version: str, reason: str | None) -> dict[str, Any]:
        with self._changing():
            if version == self.champion():
                raise RegistryError(f"{version} is the champion; a challenger must be another bundle")
            before = self.challenger()
            if version == before:
                raise RegistryError(f"{version} is already the challenger")
            self._verify_live(version, "make challenger")
            event = new_event("challenger", CHALLENGER_STAGE, version, before, version, reason)
            return self._commit(event, {CHALLENGER: version})

    def clear_challenger(self, reason: str | None) -> dict[str, Any]:
        with self._changing():
            before = self.challenger()
            if before is None:
                raise RegistryError("there is no challenger to clear")
            event = new_event("clear-challenger", CHALLENGER_STAGE, before, before, None, reason)
            return self._commit(event, {CHALLENGER: None})

    def archive(self, versions: list[str], reason: str | None, delete: bool = False) -> list[dict[str, Any]]:
        """Move ``versions`` to the archive (or delete them); never the champion, challenger or rollback target."""
        with self._changing():
            protected = self._protected()
            for version in versions:
                check_version_name(version)
                if version in protected:
                    raise RegistryError(f"{version} is the {protected[version]}; it cannot be archived")
                if not self._stored_at(version):
                    raise RegistryError(f"no bundle {version!r} in {self.models_dir}")
                if not delete and self._stored_at(version) == self.archive_dir:
                    raise RegistryError(f"{version} is already archived")
            action, after = ("delete", "deleted") if delete else ("archive", ARCHIVED)
            events = []
            for version in versions:
                before = ARCHIVED if self._stored_at(version) == self.archive_dir else None
                events.append(self._commit(new_event(action, ARCHIVED, version, before, after, reason), {}))
            return events

    def restore(self, version: str, reason: str | None) -> dict[str, Any]:
        """Bring an archived bundle back among the published ones (with no stage)."""
        with self._changing():
            if self._stored_at(check_version_name(version)) != self.archive_dir:
                raise RegistryError(f"{version} is not archived")
            if (self.models_dir / version).exists():
                raise RegistryError(f"{self.models_dir / version} already exists")
            return self._commit(new_event("restore", ARCHIVED, version, ARCHIVED, None, reason), {})

    def retention_candidates(self, keep: int) -> list[str]:
        """Published bundles beyond the newest ``keep``, not counting the champion, challenger and rollback target."""
        protected = self._protected()
        live = [entry for entry in self.entries() if entry.stage != ARCHIVED and entry.version not in protected]
        return [entry.version for entry in live[: max(0, len(live) - keep)]]

    def recover(self) -> dict[str, Any] | None:
        """Finish a change a crash interrupted; returns its record, or None when there was none."""
        with model_dir_lock(self.models_dir):
            return self._finish_journal()

    # ---- the change protocol -----------------------------------------------------------------
    @contextmanager
    def _changing(self) -> Iterator[None]:
        with model_dir_lock(self.models_dir):
            self._finish_journal()
            self._record_outside_change()
            yield

    def _commit(self, event: dict[str, Any], pointers: dict[str, str | None]) -> dict[str, Any]:
        event["pointers"] = pointers
        write_atomically(self.models_dir / JOURNAL, json.dumps(event))
        self._apply(event)
        self._close(event)
        return event

    def _apply(self, event: dict[str, Any]) -> None:
        """Bring the directory to the state ``event`` describes; doing it twice changes nothing more."""
        for name, version in event["pointers"].items():
            write_pointer_file(self.models_dir, name, version)
        version, action = event["version"], event["action"]
        if action == "archive" and (self.models_dir / version).is_dir():
            self.archive_dir.mkdir(exist_ok=True)
            move(self.models_dir / version, self.archive_dir / version)
        elif action == "restore" and (self.archive_dir / version).is_dir():
            move(self.archive_dir / version, self.models_dir / version)
        elif action == "delete":
            trash = self.models_dir / f".deleted-{event['id']}"
            for place in (self.models_dir / version, self.archive_dir / version):
                if place.is_dir() and not place.is_symlink():
                    move(place, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def _close(self, event: dict[str, Any]) -> None:
        events = self.history()
        if not events or events[-1].get("id") != event["id"]:
            append_event(self.models_dir, event)
        (self.models_dir / JOURNAL).unlink(missing_ok=True)
        fsync_directory(self.models_dir)

    def _finish_journal(self) -> dict[str, Any] | None:
        path = self.models_dir / JOURNAL
        for stray in self.models_dir.glob(f"{JOURNAL}.*.tmp"):
            stray.unlink(missing_ok=True)  # a journal never completed: its change never started
        try:
            event = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            path.unlink(missing_ok=True)  # written atomically, so never torn: a stray file, not a change
            return None
        event["recovered"] = True
        self._apply(event)
        self._close(event)
        return event

    def _record_outside_change(self) -> None:
        """Record it when ``current`` moved without the registry (by hand, an older tool), so rollback stays right."""
        lineage = champion_lineage(self.history())
        champion = self._pointer_or_none(CURRENT)
        if lineage and champion and lineage[-1] != champion:
            reason = "current was changed outside the registry"
            append_event(self.models_dir, new_event("adopt", CHAMPION, champion, lineage[-1], champion, reason))

    # ---- checks ------------------------------------------------------------------------------
    def _champion_pointers(self, version: str) -> dict[str, str | None]:
        # A promoted challenger stops being the challenger: one bundle holds one stage.
        return {CURRENT: version, CHALLENGER: None} if self.challenger() == version else {CURRENT: version}

    def _verify_live(self, version: str, doing: str) -> None:
        check_version_name(version)
        if self._stored_at(version) == self.archive_dir:
            raise RegistryError(f"cannot {doing} {version}: it is archived (restore it first)")
        try:
            verify_bundle(bundle_path(self.models_dir, version))
        except BundleError as exc:
            raise RegistryError(f"cannot {doing} {version}: {exc}") from None

    def _stored_at(self, version: str) -> Path | None:
        for place in (self.models_dir, self.archive_dir):
            if (place / version / MANIFEST).is_file() and not (place / version).is_symlink():
                return place
        return None

    def _protected(self) -> dict[str, str]:
        protected = {self.previous_champion(): "rollback target (previous champion)"}
        protected.update({self.challenger(): CHALLENGER_STAGE, self.champion(): CHAMPION})
        protected.pop(None, None)
        return protected


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


def move(source: Path, destination: Path) -> None:
    os.replace(source, destination)
    fsync_directory(source.parent)
    fsync_directory(destination.parent)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
