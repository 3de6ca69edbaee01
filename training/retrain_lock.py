"""One retraining at a time per model directory, and a cool-down between them.

The lock is an ``flock`` on its own file, not the model directory's publishing lock
(:mod:`bundle.locking`): the training run takes that one to publish, and a process holding it for the
whole run would wait on itself. The kernel releases the lock when the process dies, however it dies.
The cool-down reads the time of the newest retraining report, so a run that failed (and wrote none)
may be retried at once.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RETRAIN_LOCK = ".retrain.lock"
SECONDS_PER_HOUR = 3600


class RetrainSkipped(Exception):
    """Retraining did not start: another one is running or the last one is too recent."""


@contextmanager
def exclusive_retrain(model_dir: Path) -> Iterator[None]:
    """Hold the retraining lock of ``model_dir``; RetrainSkipped at once when another process holds it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(model_dir / RETRAIN_LOCK, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrainSkipped(f"another retraining of {model_dir} is running") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def last_retrain_at(reports_dir: Path) -> float | None:
    """When the newest retraining report was written (UNIX seconds), None before the first."""
    times = [path.stat().st_mtime for path in reports_dir.glob("*.json")] if reports_dir.is_dir() else []
    return max(times, default=None)


def require_due(reports_dir: Path, cool_down_hours: float, now: float | None = None) -> None:
    """RetrainSkipped when the last retraining finished less than ``cool_down_hours`` ago."""
    last = last_retrain_at(reports_dir)
    now = time.time() if now is None else now
    if last is not None and now - last < cool_down_hours * SECONDS_PER_HOUR:
        hours = (now - last) / SECONDS_PER_HOUR
        raise RetrainSkipped(f"the last retraining finished {hours:.1f} h ago; the cool-down is {cool_down_hours:g} h")
