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
