"""No password leaves the service: settings repr, GET /metadata and the log all show it masked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings
from bundle.manifest import MANIFEST
from bundle.store import current_bundle_dir

ROOT = Path(__file__).resolve().parents[2]
DATABASE_URL = "postgresql://churn:s3cret@db:5432/churn?password=s3cret"


def test_settings_repr_masks_the_database_password(tmp_path):
    settings = Settings(model_dir=tmp_path, database_url=DATABASE_URL)
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)
    assert "postgresql://churn:***@db:5432/churn" in repr(settings)
    assert settings.database_url == DATABASE_URL  # the service itself still connects with it


def test_metadata_masks_a_password_a_bundle_recorded(serve, linear_models_dir, tmp_path):
    models_dir = tmp_path / "models"
    shutil.copytree(linear_models_dir, models_dir)
    manifest_path = current_bundle_dir(models_dir) / MANIFEST
    manifest = json.loads(manifest_path.read_text())  # checksums cover the other files, not this one
    manifest["training"]["data"] = {"source": "postgresql://churn:s3cret@db/crm table customers"}
    manifest_path.write_text(json.dumps(manifest))

    body = serve(models_dir).get("/metadata").json()

    assert "s3cret" not in json.dumps(body)
    assert body["training"]["data"]["source"] == "postgresql://churn:***@db/crm table customers"


def test_the_services_log_masks_passwords():
    code = (
        "import logging.config\n"
        "from app.__main__ import log_config\n"
        "from app.settings import Settings\n"
        "logging.config.dictConfig(log_config(Settings()))\n"
        f"logging.getLogger('app').error('prediction log unavailable: %s', {DATABASE_URL!r})\n"
        f"logging.getLogger('uvicorn.error').warning('settings: %r', Settings(database_url={DATABASE_URL!r}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert "prediction log unavailable: postgresql://churn:***@db:5432/churn" in completed.stderr
    assert "s3cret" not in completed.stderr + completed.stdout


@pytest.mark.parametrize("key", ["change-me", "CHANGEME", " secret "])
def test_a_placeholder_api_key_stops_the_start(tmp_path, key):
    with pytest.raises(ValidationError, match="well-known placeholder"):
        Settings(model_dir=tmp_path, api_key=key)
