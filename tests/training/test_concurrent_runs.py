"""Training runs sharing a model directory publish side by side; a bundle that fails verification is not published."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bundle.store import current_bundle_dir, list_bundles, verify_bundle
from training import pipeline
from training.cli import main
from training.synthetic import generate_customers

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--models", "logistic_regression", "--trials", "2", "--quiet", "--no-report"]


@pytest.fixture(scope="module")
def customers_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "customers.csv"
    generate_customers(600, seed=3).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_two_runs_at_once_both_publish_a_verified_bundle(customers_csv: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "training", "--data", str(customers_csv), "--model-dir", str(tmp_path), *FAST]
    runs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    runs.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outcomes = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    for code, _, err in outcomes:
        assert code == 0, err
    bundles = list_bundles(tmp_path)
    assert len(bundles) == 2
    for version in bundles:
        verify_bundle(tmp_path / version)
    assert current_bundle_dir(tmp_path).name in bundles
    assert list(tmp_path.glob(".staging-*")) == []


def test_a_bundle_that_loses_its_model_before_publishing_exits_1(
    capsys, customers_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_library_versions = pipeline.library_versions

    def lose_the_model() -> dict[str, str]:
        for artifact in tmp_path.glob(".staging-*/model.*"):
            artifact.unlink()
        return real_library_versions()

    monkeypatch.setattr(pipeline, "library_versions", lose_the_model)
    code = main(["--data", str(customers_csv), "--model-dir", str(tmp_path), *FAST])
    err = capsys.readouterr().err
    assert code == 1
    assert "publishing failed, nothing was published" in err and "model artifact" in err
    assert list_bundles(tmp_path) == []
    assert not (tmp_path / "current").exists()
    assert list(tmp_path.glob(".staging-*")) == []
