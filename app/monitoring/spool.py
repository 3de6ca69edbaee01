"""A bounded spool on local disk for prediction-log rows the database cannot take now.

Each spooled batch is one segment file, written under a ``.part`` name, fsync'd, then renamed to
``<time>-<pid>-<seq>-<rows>.rows`` (the directory is fsync'd too), so a sealed segment is always
whole. Any process of the deployment may replay any sealed segment: it claims the file with an
exclusive ``flock`` first, so one owner at a time replays it, and a writer keeps its own lock on a
segment it has yet to decide about (write-ahead). Locks die with their process, so a worker killed
with ``-9`` leaves segments the others (or its replacement) replay. Replaying is idempotent: the log
skips prediction ids it already holds.

Segments hold ``MAGIC rows crc32\\n`` then the rows as one JSON array. The byte budget covers every
file in the directory, whichever worker wrote it.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from app.monitoring.metrics import process_exists

logger = logging.getLogger(__name__)

MAGIC = b"churn-spool-1"
SEALED = ".rows"
PARTIAL = ".part"


class SpoolSegment:
    """One spooled batch, locked by this process until :meth:`remove` or :meth:`release`."""

    def __init__(self, path: Path, descriptor: int, rows: list[tuple[Any, ...]]) -> None:
        self.path = path
        self.rows = rows
        self._descriptor: int | None = descriptor

    def remove(self) -> None:
        """The rows are in the log: delete the segment (still locked, so nobody replays it meanwhile)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.release()

    def release(self) -> None:
        """Keep the segment for a later replay, by this process or another."""
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing drops the flock
            self._descriptor = None


class Spool:
    """The spool directory of one deployment: bounded, shared by its workers."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._sequence = itertools.count()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def start(self) -> int:
        """Create the directory and seal what dead writers left half-written; rows found unreadable."""
        if not self.enabled:
            return 0
        self.directory.mkdir(parents=True, exist_ok=True)
        return self.salvage()

    # ---- writing -------------------------------------------------------------------------------
    def write(self, rows: list[tuple[Any, ...]]) -> SpoolSegment | None:
        """Spool ``rows`` durably as one segment, locked by the caller; None when the budget has no room.

        Raises OSError when the disk fails.
        """
        if not self.enabled:
            return None
        payload = orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)
        data = b"%s %d %d\n%s" % (MAGIC, len(rows), zlib.crc32(payload), payload)
        if self.used_bytes() + len(data) > self.max_bytes:
            return None
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._sequence)}-{len(rows)}"
        partial, sealed = self.directory / f"{name}{PARTIAL}", self.directory / f"{name}{SEALED}"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
            os.rename(partial, sealed)
            self._sync_directory()
        except BaseException:
            os.close(descriptor)
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        return SpoolSegment(sealed, descriptor, rows)

    def _sync_directory(self) -> None:
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    # ---- reading -------------------------------------------------------------------------------
    def claim(self) -> Iterator[SpoolSegment | int]:
        """Sealed segments nobody else holds, oldest first, each locked for the caller.

        A segment that cannot be read is deleted and yields the number of rows it held instead.
        """
        for path in sorted(self.directory.glob(f"*{SEALED}")) if self.enabled else ():
            descriptor = lock_if_free(path)
            if descriptor is None:
                continue
            try:
                rows = _parse(path.read_bytes())
            except (OSError, ValueError) as exc:
                lost = segment_rows(path)
                logger.error("unreadable prediction log spool file %s (%d rows lost): %s", path, lost, exc)
                SpoolSegment(path, descriptor, []).remove()
                yield lost
                continue
            yield SpoolSegment(path, descriptor, rows)

    def used_bytes(self) -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self.directory) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat().st_size
        return total

    def pending_rows(self) -> int:
        """Rows in sealed segments, whoever wrote them (read from the file names, not the files)."""
        if not self.enabled:
            return 0
        with contextlib.suppress(FileNotFoundError):
            return sum(segment_rows(path) for path in self.directory.glob(f"*{SEALED}"))
        return 0

    def salvage(self) -> int:
        """Seal the whole ``.part`` files of writers killed mid-write; rows of torn ones (deleted), lost."""
        lost = 0
        for path in self.directory.glob(f"*{PARTIAL}"):
            pid = _writer_pid(path)
            if pid is None or pid == os.getpid() or process_exists(pid):
                continue
            descriptor = lock_if_free(path)
            if descriptor is None:
                continue
            try:
                _parse(path.read_bytes())
                path.rename(path.with_suffix(SEALED))
            except (OSError, ValueError) as exc:
                rows = segment_rows(path)
                lost += rows
                logger.error("torn prediction log spool file %s (%d rows lost): %s", path, rows, exc)
                with contextlib.suppress(OSError):
                    path.unlink()
            finally:
                os.close(descriptor)
        return lost


def segment_rows(path: Path) -> int:
    """Rows a segment holds, from its name (0 when the name does not say)."""
    last = path.stem.rsplit("-", 1)[-1]
    return int(last) if last.isdigit() else 0


def _writer_pid(path: Path) -> int | None:
    parts = path.stem.split("-")
    return int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None


def abandoned(directory: Path, pattern: str) -> Iterator[Path]:
    """Files matching ``pattern`` whose writer is gone (their lock is free), oldest name first, each
    locked for the caller while it handles it; a live writer's files are passed over."""
    for path in sorted(directory.glob(pattern)):
        descriptor = lock_if_free(path)
        if descriptor is None:
            continue
        try:
            yield path
        finally:
            os.close(descriptor)


def lock_if_free(path: Path) -> int | None:
    """An exclusive lock on ``path`` if nobody holds one and the file is still there, else None."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Removed (or replaced) between our open and our lock: someone else replayed it already.
        if os.fstat(descriptor).st_ino != os.stat(path).st_ino:
            raise FileNotFoundError(path)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def _parse(data: bytes) -> list[tuple[Any, ...]]:
    header, _, payload = data.partition(b"\n")
    magic, rows, crc = header.split(b" ")
    if magic != MAGIC or zlib.crc32(payload) != int(crc):
        raise ValueError("bad header or checksum (a torn write)")
    parsed = orjson.loads(payload)
    if len(parsed) != int(rows):
        raise ValueError("row count differs from the header")
    return [tuple(row) for row in parsed]
