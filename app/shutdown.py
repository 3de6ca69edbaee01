"""Graceful shutdown: on SIGTERM a worker first stops being ready, keeps answering, then stops.

Orchestrators (Kubernetes, Docker, a load balancer) send SIGTERM and keep routing to the instance
until its readiness probe fails. So on SIGTERM each worker at once answers ``GET /ready`` with 503
("shutting down") while it goes on answering every request for ``CHURN_SHUTDOWN_DRAIN_SECONDS``;
then it hands the signal to uvicorn, whose own graceful shutdown stops accepting connections,
answers the requests in flight (up to its graceful timeout) and runs the lifespan's shutdown, which
writes every recorded prediction to the log. A second SIGTERM, or SIGINT (Ctrl-C), skips the wait.
The handler wraps uvicorn's through Python's ``signal`` API, from the worker's main thread.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger("app")

SignalHandler = Callable[[int, FrameType | None], Any]


class Drain:
    """Whether this worker is draining, and the SIGTERM handler that starts the drain."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.draining = False
        self._server_handler: SignalHandler | None = None

    def install(self) -> bool:
        """Put the drain in front of the server's SIGTERM handler; False where signals cannot be taken."""
        if self.seconds <= 0 or threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return False  # no server handler to hand over to (default or ignored)
        self._server_handler = previous
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return True

    def _on_sigterm(self, sig: int, frame: FrameType | None) -> None:
        if self.draining or self._server_handler is None:
            self._stop_now(sig, frame)
            return
        self.draining = True
        logger.info("shutting down: not ready any more, answering requests for %.1f s more", self.seconds)
        # uvicorn's handler only sets a flag its main loop polls, so calling it from a timer thread is safe.
        timer = threading.Timer(self.seconds, self._stop_now, (sig, frame))
        timer.daemon = True
        timer.start()

    def _stop_now(self, sig: int, frame: FrameType | None) -> None:
        if self._server_handler is not None:
            self._server_handler(sig, frame)
