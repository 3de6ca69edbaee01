"""In-service monitoring: Prometheus metrics, drift against the bundle's reference, the prediction log,
feedback with realized performance, and the daily report.

The service creates one monitor per worker with :func:`create_monitor` and talks to it only through
the :class:`Monitor` interface (which :class:`NullMonitor` mirrors when monitoring is disabled).
"""

from app.monitoring.monitor import Monitor, NullMonitor, create_monitor

__all__ = ["Monitor", "NullMonitor", "create_monitor"]
