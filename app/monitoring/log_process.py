"""The prediction log's writer in a process of its own.

Building each record's row and handing it to the database driver is Python work. In the service's
process it shares the interpreter lock with the requests: a 10,000-record batch's rows held it for
about 100 ms while the next batch was being scored. Here the service sends pending rows (about a
microsecond per record to serialise, done by the monitor's drain: see
:meth:`~app.monitoring.prediction_log.PredictionLog.enqueue_many`) and a child process, started
with the worker and ended with it, builds and writes them with
:class:`~app.monitoring.log_store.LogWriter`.

Protocol, over the child's stdin and stdout: frames of an 8-byte little-endian length and a pickle.
The first frame is the writer's configuration; then each request (``("write", rows, prepared)``
with ``prepared`` a list of :class:`~app.monitoring.log_store.PreparedRows`, ``("retention", now,
days)``, ``("close",)``) gets one :class:`WriteReport` in reply. The child exits at ``close`` or
when its stdin closes (the service has gone), and logs to the service's stderr. Only this
package's own process ever writes to the pipe, so unpickling is safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from app.monitoring.log_store import LogWriter, PendingRow, PreparedRows, WriteReport

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct("<Q")
REPLY_TIMEOUT_S = 120.0  # a write waits at most 5 s per locked SQLite try and 5 s per PostgreSQL connect
STOP_TIMEOUT_S = 10.0
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding the ``app`` package


class WriterProcessError(RuntimeError):
    """The writer process died, hung or could not start."""


def _send(stream: IO[bytes], message: Any) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise EOFError("the other end closed the pipe")
    return data


def _receive(stream: IO[bytes]) -> Any:
    (size,) = _LENGTH.unpack(_read_exactly(stream, _LENGTH.size))
    return pickle.loads(_read_exactly(stream, size))


class LogWriterProcess:
    """A :class:`LogWriter` living in a child process, with the same calls.

    When the child dies or stops answering, the rows of that call are reported dropped (reason
    ``writer_failed``), as are the rows it was keeping for another try, and a new child starts.
    """

    def __init__(self, database_url: str, *, batch_size: int, queue_size: int) -> None:
        self.config = {"database_url": database_url, "batch_size": batch_size, "queue_size": queue_size}
        self.retry_records = 0  # as of the child's last report
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The child's process id while one runs."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child (it imports and connects on its own time: nothing here waits for it)."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "app.monitoring.log_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=str(PACKAGE_ROOT),
            close_fds=True,
            start_new_session=True,  # a terminal's Ctrl-C goes to the service, which then closes us
        )
        assert self._process.stdin is not None
        _send(self._process.stdin, self.config)

    def close(self) -> WriteReport:
        """Have the child give up its waiting rows and exit; what it dropped."""
        with self._lock:
            if self._process is None:
                return WriteReport()
            try:
                report = self._call(("close",), timeout_s=STOP_TIMEOUT_S)
            except WriterProcessError as exc:
                logger.error("the prediction log writer process did not stop cleanly: %s", exc)
                report = self._lost(0)
            self._stop_process()
            return report

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    # ---- calls -----------------------------------------------------------------------------------
    def write(self, pending: list[PendingRow], prepared: Sequence[PreparedRows] = ()) -> WriteReport:
        # Prepared rows travel as the bytes they already are: pickling bytes is a copy.
        records = len(pending) + sum(parcel.records for parcel in prepared)
        return self._request(("write", pending, list(prepared)), records)

    def enforce_retention(self, now: float, retention_days: int) -> WriteReport:
        return self._request(("retention", now, retention_days), 0)

    def _request(self, message: tuple[Any, ...], records: int) -> WriteReport:
        with self._lock:
            try:
                if self._process is None:
                    self._start()
                elif self._process.poll() is not None:
                    raise WriterProcessError(f"it exited ({self._process.returncode})")
                return self._call(message, timeout_s=REPLY_TIMEOUT_S)
            except (WriterProcessError, OSError) as exc:
                logger.error("the prediction log writer process failed: %s; starting a new one", exc)
                report = self._lost(records)
                self._stop_process()
                with contextlib.suppress(OSError):  # else the next call tries again
                    self._start()
                return report

    def _lost(self, records: int) -> WriteReport:
        """The rows of a failed call and those the child was keeping, reported dropped."""
        report = WriteReport()
        lost = records + self.retry_records
        if lost:
            report.dropped["writer_failed"] = lost
        self.retry_records = 0
        return report

    def _call(self, message: tuple[Any, ...], timeout_s: float) -> WriteReport:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        try:
            _send(process.stdin, message)
        except (BrokenPipeError, ValueError) as exc:
            raise WriterProcessError(f"cannot reach it: {exc}") from exc
        ready, _, _ = select.select([process.stdout], [], [], timeout_s)
        if not ready:
            process.kill()
            raise WriterProcessError(f"no answer within {timeout_s:g} s")
        try:
            report = _receive(process.stdout)
        except (EOFError, pickle.UnpicklingError, struct.error) as exc:
            raise WriterProcessError(f"it exited ({process.poll()})") from exc
        if not isinstance(report, WriteReport):
            raise WriterProcessError(f"unexpected answer {type(report).__name__}")
        self.retry_records = report.waiting
        return report


# ---- the child ---------------------------------------------------------------------------------------
def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Answer requests until ``close`` or the end of ``requests``."""
    config = _receive(requests)
    writer = LogWriter(config["database_url"], batch_size=config["batch_size"], queue_size=config["queue_size"])
    writer.start()
    while True:
        try:
            message = _receive(requests)
        except EOFError:  # the service went away without a close: nothing will read a report
            writer.close()
            return
        kind = message[0]
        if kind == "write":
            report = writer.write(message[1], message[2])
        elif kind == "retention":
            report = writer.enforce_retention(message[1], message[2])
        elif kind == "close":
            _send(replies, writer.close())
            return
        else:
            report = WriteReport(errors=1)
            logger.error("the prediction log writer got an unknown request %r", kind)
        _send(replies, report)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service stops us, after sending its last rows
    logging.basicConfig(
        level=os.environ.get("CHURN_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s prediction-log-writer[%(process)d] %(message)s",
        stream=sys.stderr,
    )
    started = time.monotonic()
    serve(sys.stdin.buffer, sys.stdout.buffer)
    logger.debug("prediction log writer exiting after %.0f s", time.monotonic() - started)


if __name__ == "__main__":
    main()
