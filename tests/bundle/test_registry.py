"""The model registry: stages, verified atomic changes, the history, rollback, retention and crash recovery."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bundle.stage_journal as journal_module
from bundle.history import read_history
from bundle.manifest import BundleError
from bundle.registry import ModelRegistry, RegistryError
from bundle.store import read_pointer, set_current
from tests.bundle.tiny_bundle import publish_tiny_bundle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, list[str]]:
    """A model directory with four bundles; the first is current."""
    versions = [publish_tiny_bundle(tmp_path, seed=seed, make_current=seed == 0).name for seed in range(4)]
    return tmp_path, versions


def stages(registry: ModelRegistry) -> dict[str, str | None]:
    return {entry.version: entry.stage for entry in registry.entries()}


def actions(models_dir: Path) -> list[tuple[str, str | None, str | None]]:
    return [(event["action"], event["from"], event["to"]) for event in read_history(models_dir).events]


def test_list_shows_every_bundle_with_its_stage_and_manifest_facts(models) -> None:
    models_dir, (a, b, c, _) = models
    registry = ModelRegistry(models_dir)
    registry.set_challenger(b, "try it")
    registry.archive([c], "old")
    assert stages(registry) == {a: "champion", b: "challenger", c: "archived", models[1][3]: None}
    entry = registry.entry(a)
    assert entry.family == "logistic_regression" and entry.threshold == 0.5 and entry.created_at
    assert entry.to_dict()["path"] == str(models_dir / a)
    with pytest.raises(RegistryError, match="no bundle 'nope'"):
        registry.entry("nope")


def test_promote_moves_current_and_records_who_what_when_why(models) -> None:
    models_dir, (a, b, _, _) = models
    event = ModelRegistry(models_dir).promote(b, "better on last month")
    assert read_pointer(models_dir, "current") == b
    [recorded] = read_history(models_dir).events
    assert recorded == event
    assert (recorded["action"], recorded["stage"], recorded["from"], recorded["to"]) == ("promote", "champion", a, b)
    assert recorded["reason"] == "better on last month" and recorded["at"]
    assert set(recorded["who"]) == {"user", "host", "pid"}
    assert not (models_dir / journal_module.JOURNAL).exists()


def test_promoting_the_challenger_clears_it(models) -> None:
    models_dir, (_, b, _, _) = models
    registry = ModelRegistry(models_dir)
    registry.set_challenger(b, None)
    registry.promote(b, "it won")
    assert registry.champion() == b and registry.challenger() is None


def test_rollback_unwinds_champions_one_at_a_time(models) -> None:
    models_dir, (a, b, c, _) = models
    registry = ModelRegistry(models_dir)
    registry.promote(b, "1")
    registry.promote(c, "2")
    assert registry.previous_champion() == b
    registry.rollback("c misbehaves")
    assert registry.champion() == b
    registry.rollback("b too")
    assert registry.champion() == a
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback("again")
    assert actions(models_dir)[-2:] == [("rollback", c, b), ("rollback", b, a)]


def test_a_champion_changed_by_hand_is_recorded_so_rollback_returns_to_it(models) -> None:
    models_dir, (a, b, c, _) = models
    registry = ModelRegistry(models_dir)
    registry.promote(b, "1")
    set_current(models_dir, c)  # outside the registry
    registry.promote(a, "2")
    assert actions(models_dir) == [("promote", a, b), ("adopt", b, c), ("promote", c, a)]
    registry.rollback("back")
    assert registry.champion() == c


def test_challenger_set_and_clear(models) -> None:
    models_dir, (a, b, c, _) = models
    registry = ModelRegistry(models_dir)
    registry.set_challenger(b, "shadow it")
    registry.set_challenger(c, "this one instead")
    assert read_pointer(models_dir, "challenger") == c
    with pytest.raises(RegistryError, match="is the champion"):
        registry.set_challenger(a, None)
    registry.clear_challenger("done")
    assert registry.challenger() is None
    with pytest.raises(RegistryError, match="no challenger"):
        registry.clear_challenger(None)
    assert actions(models_dir) == [("challenger", None, b), ("challenger", b, c), ("clear-challenger", c, None)]


def test_a_broken_bundle_is_refused_and_nothing_changes(models) -> None:
    models_dir, (a, b, _, _) = models
    artifact = models_dir / b / "model.joblib"
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    registry = ModelRegistry(models_dir)
    with pytest.raises(RegistryError, match=f"cannot promote {b}: checksum mismatch for model.joblib"):
        registry.promote(b, "x")
    with pytest.raises(RegistryError, match="checksum mismatch"):
        registry.set_challenger(b, "x")
    with pytest.raises(RegistryError, match="does not exist"):
        registry.promote("20990101T000000Z-aaaaaa", "x")
    with pytest.raises(BundleError, match="does not name a bundle"):
        registry.promote("../elsewhere", "x")
    assert registry.champion() == a and registry.challenger() is None
    assert read_history(models_dir).events == []


def test_archive_restore_and_delete(models) -> None:
    models_dir, (a, b, c, d) = models
    registry = ModelRegistry(models_dir)
    registry.archive([b, c], "old")
    assert not (models_dir / b).exists() and (models_dir / ".archive" / b / "manifest.json").is_file()
    with pytest.raises(RegistryError, match="is archived"):
        registry.promote(b, "x")
    registry.restore(b, "needed again")
    registry.promote(b, "now")
    registry.archive([c, d], "space", delete=True)
    assert set(stages(registry)) == {a, b}
    assert actions(models_dir) == [
        ("archive", None, "archived"),
        ("archive", None, "archived"),
        ("restore", "archived", None),
        ("promote", a, b),
        ("delete", "archived", "deleted"),
        ("delete", None, "deleted"),
    ]


def test_archive_never_takes_the_champion_challenger_or_rollback_target(models) -> None:
    models_dir, (a, b, c, _) = models
    registry = ModelRegistry(models_dir)
    registry.promote(b, "x")
    registry.set_challenger(c, None)
    for version, stage in ((a, "rollback target"), (b, "champion"), (c, "challenger")):
        with pytest.raises(RegistryError, match=stage):
            registry.archive([version], None)
    assert set(stages(registry)) == set(models[1])


def test_retention_keeps_the_newest_besides_the_protected_ones(tmp_path: Path) -> None:
    versions = [publish_tiny_bundle(tmp_path, seed=seed, make_current=seed == 0).name for seed in range(7)]
    registry = ModelRegistry(tmp_path)
    registry.promote(versions[1], "x")  # versions[0] becomes the rollback target
    registry.set_challenger(versions[2], None)
    assert registry.retention_candidates(keep=2) == versions[3:5]
    assert registry.retention_candidates(keep=10) == []
    registry.archive(registry.retention_candidates(keep=2), "retention")
    live = [entry.version for entry in registry.entries() if entry.stage != "archived"]
    assert live == [versions[0], versions[1], versions[2], versions[5], versions[6]]


def test_a_crash_after_the_journal_is_finished_by_the_next_change(models, monkeypatch) -> None:
    models_dir, (a, b, c, _) = models

    def crash(*args, **kwargs):
        raise OSError("power cut")

    monkeypatch.setattr(journal_module, "write_pointer_file", crash)
    with pytest.raises(OSError, match="power cut"):
        ModelRegistry(models_dir).promote(b, "x")
    monkeypatch.undo()
    registry = ModelRegistry(models_dir)
    assert registry.champion() == a and read_history(models_dir).events == []  # the service still sees a
    registry.set_challenger(c, None)
    assert registry.champion() == b
    assert actions(models_dir) == [("promote", a, b), ("challenger", None, c)]
    assert read_history(models_dir).events[0]["recovered"] is True


def test_a_crash_before_the_history_line_records_the_change_exactly_once(models, monkeypatch) -> None:
    models_dir, (a, b, _, _) = models

    def crash(*args, **kwargs):
        raise OSError("killed")

    monkeypatch.setattr(journal_module, "append_event", crash)
    with pytest.raises(OSError, match="killed"):
        ModelRegistry(models_dir).promote(b, "x")
    monkeypatch.undo()
    assert read_pointer(models_dir, "current") == b
    assert ModelRegistry(models_dir).recover()["to"] == b
    assert ModelRegistry(models_dir).recover() is None
    assert actions(models_dir) == [("promote", a, b)]


def test_a_process_killed_mid_archive_leaves_a_consistent_directory(models) -> None:
    models_dir, (a, b, _, _) = models
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        import bundle.stage_journal as journal
        from bundle.registry import ModelRegistry
        journal.append_event = lambda *args: os._exit(9)  # dies after the move, before the record
        ModelRegistry(Path({str(models_dir)!r})).archive([{b!r}], "old")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr
    registry = ModelRegistry(models_dir)
    assert stages(registry)[b] == "archived" and registry.champion() == a
    registry.recover()
    assert actions(models_dir) == [("archive", None, "archived")]


def test_two_processes_promoting_at_once_take_turns(models) -> None:
    models_dir, (a, b, c, _) = models
    commands = [
        [
            sys.executable,
            "-m",
            "training",
            "models",
            "promote",
            version,
            "--reason",
            "race",
            "--model-dir",
            str(models_dir),
        ]
        for version in (b, c)
    ]
    runs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for command in commands]
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
    history = actions(models_dir)
    assert len(history) == 2 and history[0][1] == a and history[1][1] == history[0][2]
    assert read_pointer(models_dir, "current") == history[1][2]


def test_a_record_cut_short_is_skipped_and_the_next_one_stays_whole(models) -> None:
    models_dir, (_, b, _, _) = models
    (models_dir / "history.jsonl").write_text(json.dumps({"action": "promote"})[:10])
    ModelRegistry(models_dir).promote(b, "x")
    log = read_history(models_dir)
    assert log.unreadable_lines == 1 and [event["to"] for event in log.events] == [b]
