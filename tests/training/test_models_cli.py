"""``python -m training models ...``: every command, as tables and as JSON, and training's --as-challenger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundle.history import read_history
from bundle.store import read_pointer
from tests.bundle.tiny_bundle import publish_tiny_bundle
from training.cli import main
from training.synthetic import generate_customers

FAST = ["--models", "logistic_regression", "--trials", "2", "--quiet", "--no-report"]


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, list[str]]:
    versions = [publish_tiny_bundle(tmp_path, seed=seed, make_current=seed == 0).name for seed in range(3)]
    return tmp_path, versions


def run(capsys, models_dir: Path, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(["models", *argv, "--model-dir", str(models_dir)])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_as_table_and_json(capsys, models) -> None:
    models_dir, (a, b, c) = models
    code, out, _ = run(capsys, models_dir, "list")
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split()[:3] == ["VERSION", "STAGE", "FAMILY"]
    assert any(row.startswith(a) and "champion" in row for row in rows) and len(rows) == 3
    code, out, _ = run(capsys, models_dir, "list", "--json")
    listed = {entry["version"]: entry for entry in json.loads(out)}
    assert listed[a]["stage"] == "champion" and listed[b]["stage"] is None
    assert listed[c]["family"] == "logistic_regression"


def test_show_verifies_the_bundle(capsys, models) -> None:
    models_dir, (a, b, _) = models
    code, out, _ = run(capsys, models_dir, "show", a)
    assert code == 0 and "verified    every checksum matches" in out and "stage       champion" in out
    (models_dir / b / "model.joblib").write_bytes(b"tampered")
    code, out, _ = run(capsys, models_dir, "show", b, "--json")
    assert code == 0 and json.loads(out)["verified"].startswith("NO: checksum mismatch")
    code, _, err = run(capsys, models_dir, "show", "20990101T000000Z-aaaaaa")
    assert code == 1 and "refused: no bundle" in err


def test_promote_rollback_and_history(capsys, models) -> None:
    models_dir, (a, b, _) = models
    code, out, _ = run(capsys, models_dir, "promote", b, "--reason", "better")
    assert code == 0 and f"champion {a} -> {b}" in out and "/admin/reload" in out
    code, out, _ = run(capsys, models_dir, "rollback", "--reason", "worse in production")
    assert code == 0 and read_pointer(models_dir, "current") == a
    code, out, _ = run(capsys, models_dir, "history")
    assert code == 0 and "better" in out and "worse in production" in out
    code, out, _ = run(capsys, models_dir, "history", "--json", "--limit", "1")
    [event] = json.loads(out)
    assert (event["action"], event["from"], event["to"], event["reason"]) == ("rollback", b, a, "worse in production")


def test_promote_needs_a_reason_and_refuses_with_exit_1(capsys, models) -> None:
    models_dir, (a, _, _) = models
    code, _, err = run(capsys, models_dir, "promote", a)
    assert code == 2 and "--reason" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, models_dir, "promote", a, "--reason", "x")
    assert code == 1 and err.strip() == f"refused: {a} is already the champion"
    code, _, err = run(capsys, models_dir, "rollback", "--reason", "x")
    assert code == 1 and "no earlier champion" in err


def test_challenger_set_and_clear(capsys, models) -> None:
    models_dir, (_, b, _) = models
    assert run(capsys, models_dir, "challenger", b, "--reason", "shadow")[0] == 0
    assert read_pointer(models_dir, "challenger") == b
    assert run(capsys, models_dir, "challenger", "--clear")[0] == 0
    assert read_pointer(models_dir, "challenger") is None
    code, _, err = run(capsys, models_dir, "challenger")
    assert code == 2 and "version --clear is required" in err


def test_archive_by_retention_dry_run_then_for_real_and_restore(capsys, models) -> None:
    models_dir, (a, b, c) = models
    code, out, _ = run(capsys, models_dir, "archive", "--keep", "1", "--dry-run")
    assert code == 0 and out.strip() == f"would archive: {b}"
    assert (models_dir / b).is_dir()
    code, out, _ = run(capsys, models_dir, "archive", "--keep", "1", "--reason", "retention")
    assert code == 0 and not (models_dir / b).exists()
    _, out, _ = run(capsys, models_dir, "list", "--json")
    assert {entry["version"]: entry["stage"] for entry in json.loads(out)} == {a: "champion", b: "archived", c: None}
    assert run(capsys, models_dir, "restore", b)[0] == 0 and (models_dir / b).is_dir()
    code, _, err = run(capsys, models_dir, "archive", a)
    assert code == 1 and "is the champion" in err
    assert run(capsys, models_dir, "archive", c, "--delete")[0] == 0 and not (models_dir / c).exists()
    assert [event["action"] for event in read_history(models_dir).events] == ["archive", "restore", "delete"]


def test_empty_model_directory(capsys, tmp_path: Path) -> None:
    assert run(capsys, tmp_path, "list")[1].strip() == "no bundles yet: train one (python -m training)"
    assert run(capsys, tmp_path, "history")[1].strip() == "no stage changes recorded yet"


def test_training_as_challenger_keeps_the_champion(capsys, tmp_path: Path) -> None:
    data = tmp_path / "customers.csv"
    generate_customers(400, seed=3).to_csv(data, index=False)
    models_dir = tmp_path / "models"
    assert main(["--data", str(data), "--model-dir", str(models_dir), *FAST]) == 0
    champion = read_pointer(models_dir, "current")
    assert main(["--data", str(data), "--model-dir", str(models_dir), "--as-challenger", *FAST]) == 0
    assert "stage       challenger" in capsys.readouterr().out
    challenger = read_pointer(models_dir, "challenger")
    assert read_pointer(models_dir, "current") == champion and challenger not in (None, champion)
    events = read_history(models_dir).events
    assert [(event["action"], event["to"]) for event in events] == [("promote", champion), ("challenger", challenger)]
