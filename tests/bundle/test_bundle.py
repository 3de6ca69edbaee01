"""Bundle publishing and verified loading: checksums, the current pointer, crash safety."""

import json
import os
from pathlib import Path

import pytest

from bundle import store as bundle_module
from bundle.manifest import BundleError
from bundle.scoring import Scorer, load_raw_model
from bundle.store import current_bundle_dir, list_bundles, read_manifest, verify_bundle
from tests.bundle.tiny_bundle import publish_tiny_bundle


def test_published_bundle_verifies_and_predicts(tmp_path):
    published = publish_tiny_bundle(tmp_path)
    assert current_bundle_dir(tmp_path) == published
    manifest = verify_bundle(published)
    assert set(manifest.files) == {"model.joblib", "report/report.md"}
    scorer = Scorer(load_raw_model(published, manifest), manifest.calibration)
    proba = scorer.predict_proba(manifest.schema.encode({"x": [-2.0, 2.0]}, 2).matrix)
    assert proba[0] < 0.5 < proba[1]


def test_a_published_bundle_is_readable_by_other_users_as_the_umask_allows(tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        published = publish_tiny_bundle(tmp_path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(published.stat().st_mode) == 0o755  # not mkdtemp's private 0700
    assert all(stat.S_IMODE(path.stat().st_mode) & 0o004 for path in published.rglob("*"))


def test_tampered_file_fails_verification_before_loading(tmp_path):
    published = publish_tiny_bundle(tmp_path)
    with (published / "model.joblib").open("ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(BundleError, match=r"checksum mismatch for model\.joblib"):
        verify_bundle(published)


def test_missing_listed_file_is_reported(tmp_path):
    published = publish_tiny_bundle(tmp_path)
    (published / "report" / "report.md").unlink()
    with pytest.raises(BundleError, match="missing"):
        verify_bundle(published)


def test_malformed_manifest_is_reported(tmp_path):
    published = publish_tiny_bundle(tmp_path)
    (published / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(published)
    (published / "manifest.json").write_text(json.dumps({"format_version": 1, "model": {}}))
    with pytest.raises(BundleError, match="malformed"):
        read_manifest(published)


def test_no_current_bundle_says_how_to_get_one(tmp_path):
    with pytest.raises(BundleError, match="train a model first"):
        current_bundle_dir(tmp_path)
    (tmp_path / "current").write_text("../etc\n")
    with pytest.raises(BundleError, match="does not name a bundle"):
        current_bundle_dir(tmp_path)
    (tmp_path / "current").write_text("20260101T000000Z-abcdef\n")
    with pytest.raises(BundleError, match="does not exist"):
        current_bundle_dir(tmp_path)


def test_crash_before_pointer_swap_keeps_previous_bundle_current(tmp_path, monkeypatch):
    first = publish_tiny_bundle(tmp_path, seed=1)
    real_replace = os.replace

    def crash_on_pointer(src, dst):
        if Path(dst).name == "current":
            raise KeyboardInterrupt("killed while switching")
        return real_replace(src, dst)

    monkeypatch.setattr(bundle_module.os, "replace", crash_on_pointer)
    with pytest.raises(KeyboardInterrupt):
        publish_tiny_bundle(tmp_path, seed=2)
    monkeypatch.undo()
    assert current_bundle_dir(tmp_path) == first
    verify_bundle(first)
    assert len(list_bundles(tmp_path)) == 2  # the new one is complete but not current


def test_crash_while_staging_leaves_nothing_visible(tmp_path, monkeypatch):
    first = publish_tiny_bundle(tmp_path, seed=1)
    monkeypatch.setattr(bundle_module, "sha256_file", lambda path: (_ for _ in ()).throw(OSError("disk died")))
    with pytest.raises(OSError):
        publish_tiny_bundle(tmp_path, seed=2)
    monkeypatch.undo()
    assert current_bundle_dir(tmp_path) == first
    assert list_bundles(tmp_path) == [first.name]
    assert list_bundles(tmp_path) == [first.name]
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".staging-")] == []


def test_older_bundles_stay_after_a_new_publish(tmp_path):
    first = publish_tiny_bundle(tmp_path, seed=1)
    second = publish_tiny_bundle(tmp_path, seed=2)
    assert current_bundle_dir(tmp_path) == second
    verify_bundle(first)
    assert list_bundles(tmp_path) == sorted([first.name, second.name])
