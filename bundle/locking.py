"""Who may change a model directory, and which staging directories still belong to a running publisher.

Every change to a model directory (creating a staging directory, discarding stale ones, moving a
bundle into place, switching ``current``) happens under an exclusive ``flock`` on ``.lock`` inside
it, so two training runs at once take turns instead of undoing each other's work. Each staging
directory holds ``.owner``, locked by the process that builds in it for as long as it lives: the
kernel releases that lock when the process dies, however it dies, so "nobody holds it" means stale.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

MODEL_DIR_LOCK = ".lock"
STAGING_OWNER = ".owner"


@contextmanager
def model_dir_lock(models_dir: Path) -> Iterator[None]:
    """Hold the model directory's lock; waits while another process holds it."""
    models_dir.mkdir(parents=True, exist_ok=True)
    # Read-only is enough to lock, so a lock file another user created does not stand in the way.
    fd = os.open(models_dir / MODEL_DIR_LOCK, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def claim(staging: Path) -> IO[str]:
    """Mark ``staging`` as this process's; keep the returned file open for as long as it is in use."""
    handle = open(staging / STAGING_OWNER, "w")  # noqa: SIM115 - held open on purpose: the lock lives with it
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    # For people looking at the directory; the lock, not this record, decides what is stale.
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    handle.flush()
    return handle


def has_live_owner(staging: Path) -> bool:
    """True while the process that claimed ``staging`` still runs (in this process too)."""
    try:
        handle = open(staging / STAGING_OWNER)  # noqa: SIM115 - closed below, releasing any lock taken
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:
        return True  # cannot tell: keep it
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False
