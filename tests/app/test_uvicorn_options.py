"""Settings reach uvicorn: connection limits, keep-alive, backlog."""

from __future__ import annotations

import uvicorn

from app.__main__ import APP_FACTORY, uvicorn_options
from app.settings import Settings


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    # Without the log configuration: applying it would rewire this test process's logging.
    return uvicorn.Config(APP_FACTORY, factory=True, **{**uvicorn_options(settings), "log_config": None})


def test_connection_settings_reach_uvicorns_config(tmp_path):
    settings = Settings(model_dir=tmp_path, limit_concurrency=64, timeout_keep_alive=3, backlog=128, workers=2)
    config = uvicorn_config(settings)
    assert (config.limit_concurrency, config.timeout_keep_alive, config.backlog, config.workers) == (64, 3, 128, 2)
    assert (config.http, config.loop) == ("httptools", "uvloop")


def test_defaults_keep_uvicorns_own(tmp_path):
    config = uvicorn_config(Settings(model_dir=tmp_path))
    assert config.limit_concurrency is None
    assert (config.timeout_keep_alive, config.backlog) == (5, 2048)


def test_settings_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CHURN_LIMIT_CONCURRENCY", "500")
    monkeypatch.setenv("CHURN_TIMEOUT_KEEP_ALIVE", "4")
    monkeypatch.setenv("CHURN_BACKLOG", "1024")
    options = uvicorn_options(Settings(model_dir=tmp_path))
    assert (options["limit_concurrency"], options["timeout_keep_alive"], options["backlog"]) == (500, 4, 1024)


def test_every_log_handler_masks_passwords(tmp_path):
    handlers = uvicorn_options(Settings(model_dir=tmp_path))["log_config"]["handlers"]
    assert handlers and all(handler["filters"] == ["redact_secrets"] for handler in handlers.values())
