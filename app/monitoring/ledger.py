"""The ledger: how many predictions a worker answered and how many of those its log accounted for.

With the default durability (``flush``) a worker killed with ``-9`` loses the rows it answered since
its last flush, and only its memory knew them. So each worker also keeps two counters in a small
memory-mapped file of its own: records answered (the request path adds to it, a memory write) and
records accounted for (written, spooled or dropped and counted, added by whoever accounted for them).
A file whose worker is gone (its lock is free) is settled by any worker, at its start or in its
housekeeping: answered minus accounted is counted as ``worker_killed`` in
``churn_prediction_log_dropped_total``, said in one log line, and the file is removed. Rows written in
the very instant of the kill may be counted although they reached the log: the count is an upper
bound. With the journal (``CHURN_PREDICTION_LOG_DURABILITY=journal``) nothing answered is lost and
no ledger is kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import struct
import threading
import time
from pathlib import Path

from app.monitoring.spool import abandoned

logger = logging.getLogger(__name__)

SUFFIX = ".ledger"
_SLOT = struct.Struct("<q")
_ANSWERED, _ACCOUNTED = 0, 8


class Ledger:
    """This worker's answered and accounted counts, in a file that outlives the process."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._path = directory / f"{os.getpid()}-{time.time_ns()}{SUFFIX}"  # one per monitor, even in one process
        self._descriptor: int | None = None
        self._map: mmap.mmap | None = None
        self._answered = 0
        self._accounted = 0
        self._lock = threading.Lock()  # accounting comes from the request path (drops) and the background

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.ftruncate(descriptor, 2 * _SLOT.size)
        self._descriptor, self._map = descriptor, mmap.mmap(descriptor, 2 * _SLOT.size)

    def answered(self, records: int) -> None:
        """Called from the request path only (one thread), so no lock."""
        if self._map is not None:
            self._answered += records
            _SLOT.pack_into(self._map, _ANSWERED, self._answered)

    def accounted(self, records: int) -> None:
        if self._map is not None:
            with self._lock:
                self._accounted += records
                _SLOT.pack_into(self._map, _ACCOUNTED, self._accounted)

    def stop(self) -> None:
        """A worker that stops normally has accounted for everything: its ledger goes."""
        if self._map is not None and self._descriptor is not None:
            self._map.close()
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
            os.close(self._descriptor)
            self._map = self._descriptor = None


def settle(directory: Path) -> int:
    """Count what workers that died left unaccounted; records lost (removes their ledgers)."""
    lost = 0
    for path in abandoned(directory, f"*{SUFFIX}"):
        try:
            data = path.read_bytes()
            if len(data) >= 2 * _SLOT.size:
                (answered,), (accounted,) = _SLOT.unpack_from(data, _ANSWERED), _SLOT.unpack_from(data, _ACCOUNTED)
                missing = max(answered - accounted, 0)
                if missing:
                    logger.error(
                        "prediction log: worker %s stopped without writing %d answered predictions (killed?)",
                        path.stem.split("-")[0],
                        missing,
                    )
                lost += missing
            path.unlink()
        except OSError as exc:
            logger.error("prediction log: cannot settle the ledger %s: %s", path, exc)
    return lost
