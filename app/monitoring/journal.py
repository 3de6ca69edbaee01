"""The journal: each answered prediction's log row, appended to a file before the answer leaves.

On with ``CHURN_PREDICTION_LOG_DURABILITY=journal``. The monitor thread writes rows to the database
(or the spool) in batches, so a worker killed with ``-9`` loses what it answered since its last
flush. With the journal, the request path also appends the rows to this worker's journal file (one
``write``, no fsync: what the kernel has survives the process). At each flush the monitor thread
starts a new file and removes the old one once its rows are in the log or the spool. A file whose
writer died (its lock is free) is moved into the spool at the next start of any worker, and replayed
from there like any spooled rows (rows the log already holds are skipped). The price is the row's
serialisation and one system call on every request; a machine crash (rather than a process kill)
can still lose what the kernel had not written to disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from app.monitoring.spool import Spool, abandoned

logger = logging.getLogger(__name__)

SUFFIX = ".journal"


class JournalFile:
    """One journal file, held open and locked by the worker that writes it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"{time.time_ns():020d}-{os.getpid()}{SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        self.descriptor = os.open(self.path, flags, 0o600)
        fcntl.flock(self.descriptor, fcntl.LOCK_EX)

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.descriptor, view) :]

    def remove(self) -> None:
        """Its rows are in the log or the spool: the file goes, then its lock."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.descriptor)


class Journal:
    """This worker's current journal file, and the rotation the monitor thread drives."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._current: JournalFile | None = None

    def start(self, spool: Spool) -> int:
        """Open this worker's file after moving dead writers' files into ``spool``; rows recovered."""
        self.directory.mkdir(parents=True, exist_ok=True)
        recovered = recover(self.directory, spool)
        with self._lock:
            self._current = JournalFile(self.directory)
        return recovered

    def append(self, rows: list[tuple[Any, ...]]) -> None:
        """Append rows (raises OSError when the disk fails; the caller decides what that costs)."""
        data = b"".join(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for row in rows)
        with self._lock:
            if self._current is not None:
                self._current.append(data)

    def rotate(self) -> JournalFile | None:
        """Start a new file; the old one (rows appended so far) for the caller to remove once logged."""
        with self._lock:
            old = self._current
            if old is not None:
                self._current = JournalFile(self.directory)
            return old

    def stop(self) -> None:
        """Called after every row was written: nothing in the current file is still needed."""
        with self._lock:
            if self._current is not None:
                self._current.remove()
                self._current = None


def recover(directory: Path, spool: Spool) -> int:
    """Move the rows of journal files whose writer is gone into ``spool``; rows moved."""
    moved = 0
    for path in abandoned(directory, f"*{SUFFIX}"):
        try:
            rows = read_rows(path)
            segment = spool.write(rows) if rows else None
            if rows and segment is None:
                logger.error("prediction log journal: the spool has no room for the %d rows of %s", len(rows), path)
                continue
            if segment is not None:
                segment.release()  # for any worker's replay to claim
            moved += len(rows)
            path.unlink()
        except OSError as exc:
            logger.error("prediction log journal: cannot recover %s: %s", path, exc)
    if moved:
        logger.warning("prediction log journal: %d answered rows of a stopped worker recovered into the spool", moved)
    return moved


def read_rows(path: Path) -> list[tuple[Any, ...]]:
    """The whole rows of a journal file; a last line cut short by a kill is left out."""
    rows = []
    for line in path.read_bytes().split(b"\n"):
        try:
            rows.append(tuple(orjson.loads(line)))
        except orjson.JSONDecodeError:
            continue
    return rows
