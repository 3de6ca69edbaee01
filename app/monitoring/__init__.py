"""In-service monitoring: Prometheus metrics, drift against the bundle's reference, the prediction log,
feedback with realized performance, and the daily report.

The service creates one monitor per worker with :func:`create_monitor` and talks to it only through
the :class:`Monitor` interface (which :class:`NullMonitor` mirrors when monitoring is disabled).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Monitor", "NullMonitor", "create_monitor"]


def __getattr__(name: str) -> Any:
    # Imported on first use: importing a submodule (events, for the predictor) stays light.
    if name in __all__:
        from app.monitoring import monitor

        return getattr(monitor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
