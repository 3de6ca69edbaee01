"""Error logging that a failure repeated on every batch or request cannot flood."""

from __future__ import annotations

import logging
import time
from typing import Any

ERROR_LOG_INTERVAL_S = 60.0  # a broken database is logged once a minute, not once per batch


class ThrottledErrors:
    """Logs an error at most once per ``interval_s`` (the others are counted by metrics, not logged)."""

    def __init__(self, logger: logging.Logger, interval_s: float = ERROR_LOG_INTERVAL_S) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last_logged = float("-inf")

    def error(self, message: str, *args: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        if now - self._last_logged >= self.interval_s:
            self._last_logged = now
            self.logger.error(message, *args, **kwargs)


class ThrottledLosses:
    """Logs lost rows with their count at most once per ``interval_s``: the first loss at once, later
    ones summed into the next line, so every lost row is told without flooding the log."""

    def __init__(self, logger: logging.Logger, interval_s: float = ERROR_LOG_INTERVAL_S) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last_logged = float("-inf")
        self._pending: dict[str, int] = {}
        self._detail = ""

    def add(self, reason: str, rows: int, detail: object) -> None:
        if rows <= 0:
            return
        self._pending[reason] = self._pending.get(reason, 0) + rows
        self._detail = self._detail or str(detail)
        self.flush_if_due()

    def flush_if_due(self) -> None:
        now = time.monotonic()
        if self._pending and now - self._last_logged >= self.interval_s:
            self._last_logged = now
            counts = ", ".join(f"{rows} {reason}" for reason, rows in sorted(self._pending.items()))
            self.logger.error("prediction log lost rows (%s): %s", counts, self._detail)
            self._pending, self._detail = {}, ""
