"""Fixtures for the monitoring tests (helpers live in monitoring_helpers, importable by name)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.monitoring import Monitor, create_monitor
from app.settings import Settings
from bundle.manifest import Manifest
from tests.app.monitoring.monitoring_helpers import build_app, make_manifest, make_settings


@pytest.fixture
def manifest() -> Manifest:
    return make_manifest()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def monitor(settings: Settings) -> Iterator[Monitor]:
    created = create_monitor(settings)
    assert isinstance(created, Monitor)
    yield created


@pytest.fixture
def client(settings: Settings, monitor: Monitor, manifest: Manifest) -> Iterator[TestClient]:
    with TestClient(build_app(settings, monitor, manifest)) as test_client:
        yield test_client
