"""``python -m app``: serve with uvicorn using the host, port, workers and log level from settings.

Before anything imports the Prometheus client, PROMETHEUS_MULTIPROC_DIR is pointed at a fresh,
empty directory so the metrics of every worker process add up (and stale files from an earlier
run cannot). With several workers, CHURN_RELOAD_DIR is pointed at a fresh directory inside it, where
a reload taken by one worker is announced to all the others. Numeric libraries get one thread each:
parallelism comes from worker processes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

APP_FACTORY = "app.main:create_app"
RELOAD_DIR_ENV = "CHURN_RELOAD_DIR"
_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def fresh_metrics_dir(configured: Path | None) -> tuple[Path, bool]:
    """An empty directory for multiprocess metrics; True when it is a temp dir to remove at exit."""
    if configured is None:
        return Path(tempfile.mkdtemp(prefix="churn-metrics-")), True
    if configured.exists():
        shutil.rmtree(configured)
    configured.mkdir(parents=True)
    return configured, False


def share_reloads(metrics_dir: Path, workers: int) -> None:
    """Give several workers a directory to announce reloads in: fresh, because the metrics one is."""
    if workers < 2:
        return  # one process: nobody else to tell (and its settings are already read)
    reload_dir = metrics_dir / "reload"
    reload_dir.mkdir()
    os.environ[RELOAD_DIR_ENV] = str(reload_dir)


def main() -> None:
    for variable in _ONE_THREAD:
        os.environ.setdefault(variable, "1")

    from app.settings import get_settings

    settings = get_settings()
    metrics_dir, temporary = fresh_metrics_dir(settings.metrics_multiproc_dir)
    # Workers are separate processes that inherit this environment.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    share_reloads(metrics_dir, settings.workers)

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    # The service's own log (model loaded, not ready and why) goes where uvicorn's does.
    log_config = {**LOGGING_CONFIG, "loggers": {**LOGGING_CONFIG["loggers"]}}
    log_config["loggers"]["app"] = {"handlers": ["default"], "level": settings.log_level.upper(), "propagate": False}

    try:
        # The factory import string lets every worker build its own app (required for workers > 1).
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level.lower(),
            log_config=log_config,
            access_log=settings.access_log,
            loop="uvloop",
            http="httptools",
            timeout_graceful_shutdown=30,
        )
    finally:
        if temporary:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
