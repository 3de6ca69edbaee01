"""The prediction log's writer in a process of its own: a one-worker ``ProcessPoolExecutor``.

Building rows and handing them to the database driver then never holds the service's interpreter
lock; the service only pickles the events. The child keeps its own :class:`LogWriter` (with the
rows it keeps for another try) from call to call.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from app.monitoring.events import RecordedEvent
from app.monitoring.log_store import LogWriter, WriteReport

logger = logging.getLogger(__name__)

CALL_TIMEOUT_S = 120.0

_writer: LogWriter | None = None  # the child's own


def _open(database_url: str, batch_size: int, queue_size: int) -> None:
    global _writer
    _writer = LogWriter(database_url, batch_size=batch_size, queue_size=queue_size)
    _writer.start()


def _write(events: Sequence[RecordedEvent]) -> WriteReport:
    assert _writer is not None
    return _writer.write(events)


def _retention(now: float, days: int) -> WriteReport:
    assert _writer is not None
    return _writer.enforce_retention(now, days)


def _close() -> WriteReport:
    assert _writer is not None
    return _writer.close()


class ProcessLogWriter:
    """A :class:`LogWriter` in a child process, with the same calls; a dead child is replaced."""

    def __init__(self, database_url: str, *, batch_size: int, queue_size: int) -> None:
        self.config = (database_url, batch_size, queue_size)
        self.retry_records = 0  # as of the child's last report
        self._executor: ProcessPoolExecutor | None = None

    def start(self) -> None:
        self._executor = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_open, initargs=self.config
        )

    def write(self, events: Sequence[RecordedEvent]) -> WriteReport:
        return self._call(_write, sum(recorded.event.size for recorded in events), events)

    def enforce_retention(self, now: float, retention_days: int) -> WriteReport:
        return self._call(_retention, 0, now, retention_days)

    def close(self) -> WriteReport:
        report = self._call(_close, 0)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        return report

    def _call(self, function, records: int, *args) -> WriteReport:  # type: ignore[no-untyped-def]
        if self._executor is None:
            self.start()
        assert self._executor is not None
        try:
            report = self._executor.submit(function, *args).result(timeout=CALL_TIMEOUT_S)
        except (BrokenProcessPool, TimeoutError, OSError) as exc:
            logger.error("the prediction log writer process failed: %s; starting a new one", exc)
            report = WriteReport()
            report.dropped["writer_failed"] = records + self.retry_records
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self.retry_records = report.waiting
        return report
