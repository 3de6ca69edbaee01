"""The model directory's append-only history of stage changes: who changed what, from what, to what, when and why.

``<models_dir>/history.jsonl`` holds one JSON object per line, appended and fsynced under the model
directory's lock and never rewritten. A line cut short by a crash is skipped when reading (and
counted), and the next append starts on a fresh line so it cannot run into it.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundle.manifest import utc_now_iso

HISTORY = "history.jsonl"
CHAMPION = "champion"
CHALLENGER_STAGE = "challenger"
ARCHIVED = "archived"


def who() -> dict[str, Any]:
    """The user, host and process making a change."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid()}


def new_event(action: str, stage: str, version: str | None, before: Any, after: Any, reason: str | None) -> dict:
    """One history record: ``stage`` went from ``before`` to ``after`` because of ``action`` on ``version``."""
    return {
        "id": uuid.uuid4().hex,
        "at": utc_now_iso(),
        "who": who(),
        "action": action,
        "stage": stage,
        "version": version,
        "from": before,
        "to": after,
        "reason": reason,
    }


@dataclass
class HistoryLog:
    """Readable records, oldest first, and how many lines could not be read."""

    events: list[dict[str, Any]] = field(default_factory=list)
    unreadable_lines: int = 0


def read_history(models_dir: Path) -> HistoryLog:
    log = HistoryLog()
    try:
        lines = (models_dir / HISTORY).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return log
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            log.unreadable_lines += 1
            continue
        if isinstance(event, dict):
            log.events.append(event)
        else:
            log.unreadable_lines += 1
    return log


def append_event(models_dir: Path, event: dict[str, Any]) -> None:
    """Append one record and fsync it; the caller holds the model directory's lock."""
    path = models_dir / HISTORY
    line = json.dumps(event, sort_keys=True) + "\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # a crash cut the last record short: keep it apart from this one
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def champion_lineage(events: list[dict[str, Any]]) -> list[str]:
    """The champions in the order they took over, as rollbacks unwind them: the last one is today's.

    A promotion (or a change found made outside the registry) stacks its new champion; a rollback
    takes the top one off, so rolling back twice goes two champions back.
    """
    lineage: list[str] = []
    for event in events:
        if event.get("stage") != CHAMPION:
            continue
        if event.get("action") == "rollback":
            if lineage:
                lineage.pop()
            continue
        before, after = event.get("from"), event.get("to")
        if not lineage and before:
            lineage.append(before)
        if after and (not lineage or lineage[-1] != after):
            lineage.append(after)
    return lineage
