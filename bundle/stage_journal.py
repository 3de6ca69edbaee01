"""The write-ahead journal that makes a stage change all-or-nothing, even across a crash.

A change is written in full to ``<models_dir>/.registry-change.json`` (atomically) before anything
is touched; it is then applied (pointer files replaced atomically, bundle directories renamed), its
record appended to the history, and only then is the journal removed. Applying is idempotent, so
whoever next finds a journal (the next change, under the same lock) applies it again and records it
exactly once. Callers hold :func:`bundle.locking.model_dir_lock`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from bundle.history import append_event, read_history
from bundle.store import fsync_path
from bundle.store import write_pointer as write_pointer_file

ARCHIVE_DIR = ".archive"
JOURNAL = ".registry-change.json"


class StageJournal:
    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self.archive_dir = models_dir / ARCHIVE_DIR

    def commit(self, event: dict[str, Any], pointers: dict[str, str | None]) -> dict[str, Any]:
        """Journal, apply and record ``event``, which also sets each pointer file to its version (None removes)."""
        event["pointers"] = pointers
        write_atomically(self.models_dir / JOURNAL, json.dumps(event))
        self._apply(event)
        self._close(event)
        return event

    def finish(self) -> dict[str, Any] | None:
        """Complete the change a crash interrupted; its record, or None when there was none."""
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
        events = read_history(self.models_dir).events
        if not events or events[-1].get("id") != event["id"]:
            append_event(self.models_dir, event)
        (self.models_dir / JOURNAL).unlink(missing_ok=True)
        fsync_path(self.models_dir)


def move(source: Path, destination: Path) -> None:
    os.replace(source, destination)
    fsync_path(source.parent)
    fsync_path(destination.parent)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
