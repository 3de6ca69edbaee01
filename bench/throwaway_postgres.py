"""A throwaway PostgreSQL server in a temp dir (initdb + pg_ctl), for integration tests and drills.

Runs as the ``postgres`` system user when started by root (PostgreSQL refuses to run as root).
Trust authentication on 127.0.0.1 only; everything is deleted by :meth:`ThrowawayPostgres.remove`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BINARIES = ("initdb", "pg_ctl", "postgres")
USER = "churn"


def binary(name: str) -> str | None:
    """A PostgreSQL server binary: on the PATH, or where Debian's packages put it (newest version)."""
    found = shutil.which(name)
    if found is not None:
        return found
    candidates = [path for path in Path("/usr/lib/postgresql").glob(f"*/bin/{name}") if path.parts[-3].isdigit()]
    candidates.sort(key=lambda path: int(path.parts[-3]))
    return str(candidates[-1]) if candidates else None


def available() -> bool:
    """Whether the PostgreSQL server binaries are installed (and, as root, a postgres user exists)."""
    if any(binary(name) is None for name in BINARIES):
        return False
    return os.geteuid() != 0 or _system_user() is not None


def _system_user() -> tuple[int, int] | None:
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ThrowawayPostgres:
    """One server: ``start()``, ``stop()``, ``start()`` again (same data), ``remove()``."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="churn-postgres-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self._owner = _system_user() if os.geteuid() == 0 else None
        if self._owner is not None:
            os.chown(self.directory, *self._owner)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.directory / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            stop = self._command("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
            subprocess.run(stop, capture_output=True, check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _command(self, program: str, *args: str) -> list[str]:
        command = [binary(program) or program, *args]
        return ["runuser", "-u", "postgres", "--", *command] if self._owner is not None else command

    def _run(self, *args: str) -> None:
        subprocess.run(self._command(*args), check=True, capture_output=True, text=True)
