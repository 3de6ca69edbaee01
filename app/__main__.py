"""``python -m app``: serve with uvicorn using the host, port, workers and log level from settings.

Every setting is an environment variable (``CHURN_*``, see ``app.settings``); the few a command line
usually changes are flags too (``--help``), and a flag wins over its variable.

With several workers (or CHURN_METRICS_MULTIPROC_DIR set), PROMETHEUS_MULTIPROC_DIR is pointed at a
fresh, empty directory before anything imports the Prometheus client, so the metrics of every worker
process add up (and stale files from an earlier run cannot); one worker keeps its metrics in memory,
which costs each update far less than a shared file. With several workers, CHURN_RELOAD_DIR is pointed
at a fresh directory inside it, where a reload taken by one worker is announced to all the others.
Numeric libraries get one thread each: parallelism comes from worker processes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.settings import Settings

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


# Flag -> the setting's environment variable. Set in the environment rather than passed on, so that
# worker processes (which read settings anew) see them too.
_FLAGS = {
    "host": "CHURN_HOST",
    "port": "CHURN_PORT",
    "workers": "CHURN_WORKERS",
    "model_dir": "CHURN_MODEL_DIR",
    "log_level": "CHURN_LOG_LEVEL",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Serve churn predictions from the current bundle in the model directory.",
        epilog="Every setting is also an environment variable: CHURN_HOST, CHURN_PORT, CHURN_WORKERS, "
        "CHURN_MODEL_DIR, CHURN_API_KEY, CHURN_DATABASE_URL, ... (README: The prediction service). A flag wins over "
        "its variable.",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--workers", type=int, help="worker processes, one thread each: about one per core")
    parser.add_argument("--model-dir", help="directory whose `current` bundle is served (default models)")
    parser.add_argument("--log-level", type=str.lower, choices=["critical", "error", "warning", "info", "debug"])
    return parser.parse_args(argv)


def apply_flags(args: argparse.Namespace) -> None:
    for name, variable in _FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            os.environ[variable] = str(value)


def log_config(settings: Settings) -> dict[str, Any]:
    """uvicorn's logging, plus the service's own log (model loaded, not ready and why), passwords masked."""
    from uvicorn.config import LOGGING_CONFIG

    config = {**LOGGING_CONFIG, "loggers": {**LOGGING_CONFIG["loggers"]}}
    config["loggers"]["app"] = {"handlers": ["default"], "level": settings.log_level.upper(), "propagate": False}
    config["filters"] = {"redact_secrets": {"()": "bundle.redaction.RedactSecrets"}}
    config["handlers"] = {
        name: {**handler, "filters": ["redact_secrets"]} for name, handler in LOGGING_CONFIG["handlers"].items()
    }
    return config


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.run`` (besides the app) for these settings."""
    return {
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "log_level": settings.log_level.lower(),
        "log_config": log_config(settings),
        "access_log": settings.access_log,
        "loop": "uvloop",
        "http": "httptools",
        "limit_concurrency": settings.limit_concurrency,
        "timeout_keep_alive": settings.timeout_keep_alive,
        "backlog": settings.backlog,
        "timeout_graceful_shutdown": 30,
    }


def main(argv: Sequence[str] | None = None) -> None:
    apply_flags(parse_args(argv))
    for variable in _ONE_THREAD:
        os.environ.setdefault(variable, "1")

    from pydantic import ValidationError

    from app.settings import get_settings

    try:
        settings = get_settings()
    except ValidationError as exc:
        raise SystemExit(f"invalid settings:\n{exc}") from None
    metrics_dir, temporary = None, False
    if settings.workers > 1 or settings.metrics_multiproc_dir is not None:
        metrics_dir, temporary = fresh_metrics_dir(settings.metrics_multiproc_dir)
        # Workers are separate processes that inherit this environment.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        share_reloads(metrics_dir, settings.workers)

    import uvicorn

    try:
        # The factory import string lets every worker build its own app (required for workers > 1).
        uvicorn.run(APP_FACTORY, factory=True, **uvicorn_options(settings))
    finally:
        if metrics_dir is not None and temporary:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
