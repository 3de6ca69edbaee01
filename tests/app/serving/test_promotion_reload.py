"""A registry promotion or rollback reaches the service through the existing POST /admin/reload."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bundle.registry import ModelRegistry
from bundle.store import read_current
from tests.conftest import API_KEY, build_bundle

KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    models_dir = tmp_path / "models"
    build_bundle(models_dir, "logistic_regression")
    build_bundle(models_dir, "logistic_regression", seed=1, make_current=False)
    return models_dir


def served(client) -> str:
    return client.get("/ready").json()["model_version"]


def test_promote_then_reload_serves_the_new_champion_and_rollback_brings_the_old_one_back(serve, models_dir) -> None:
    client = serve(models_dir)
    registry = ModelRegistry(models_dir)
    champion = registry.champion()
    [other] = [entry.version for entry in registry.entries() if entry.version != champion]

    registry.promote(other, "better")
    assert served(client) == champion  # nothing changes until the reload
    answer = client.post("/admin/reload", headers=KEY)
    assert answer.status_code == 200 and answer.json()["model_version"] == other

    registry.rollback("worse after all")
    assert client.post("/admin/reload", headers=KEY).json()["model_version"] == champion
    assert served(client) == champion


def test_reloads_during_promotions_always_load_a_whole_bundle(serve, models_dir) -> None:
    client = serve(models_dir)
    registry = ModelRegistry(models_dir)
    first = registry.champion()
    [second] = [entry.version for entry in registry.entries() if entry.version != first]
    done = threading.Event()

    def promote_back_and_forth() -> None:
        for round_ in range(8):
            registry.promote(second if round_ % 2 == 0 else first, f"round {round_}")
        done.set()

    promoter = threading.Thread(target=promote_back_and_forth)
    promoter.start()
    answers = [client.post("/admin/reload", headers=KEY)]
    while not done.is_set():
        answers.append(client.post("/admin/reload", headers=KEY))
    promoter.join()
    assert all(answer.status_code == 200 for answer in answers)
    assert {answer.json()["model_version"] for answer in answers} <= {first, second}
    assert client.post("/admin/reload", headers=KEY).json()["model_version"] == read_current(models_dir)
    assert len(registry.history()) == 8
