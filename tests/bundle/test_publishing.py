"""Publishing under concurrency: publishers take turns, a live run's staging survives, verification gates current."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bundle.locking import STAGING_OWNER, has_live_owner, model_dir_lock
from bundle.manifest import BundleError
from bundle.store import (
    current_bundle_dir,
    discard_staging,
    list_bundles,
    publish,
    set_current,
    staging,
    verify_bundle,
    verify_staged,
)
from tests.bundle.tiny_bundle import publish_tiny_bundle, tiny_manifest, write_bundle_files

ROOT = Path(__file__).resolve().parents[2]

# A second process: claims a staging directory, says where, then waits to be killed.
HOLD_STAGING = """
import sys
from pathlib import Path
from bundle.store import staging
with staging(Path(sys.argv[1]), "held") as staged:
    print(staged, flush=True)
    sys.stdin.read()
"""
# A second process: a whole training run's publishing steps.
PUBLISH_ONE = """
import sys
from pathlib import Path
from bundle.store import discard_staging
from tests.bundle.tiny_bundle import publish_tiny_bundle
discard_staging(Path(sys.argv[1]))
print(publish_tiny_bundle(Path(sys.argv[1]), seed=5))
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def staging_dirs(models_dir: Path) -> list[Path]:
    return sorted(models_dir.glob(".staging-*"))


def test_a_live_runs_staging_survives_another_runs_cleanup_and_both_publish(tmp_path):
    manifest, model = tiny_manifest(seed=1)
    with staging(tmp_path, manifest.version) as staged:
        write_bundle_files(staged, model)
        other = run_python(PUBLISH_ONE, str(tmp_path))
        assert other.returncode == 0, other.stderr
        assert staged.is_dir() and (staged / "model.joblib").is_file()
        mine = publish(staged, manifest, tmp_path)
    theirs = Path(other.stdout.strip())
    assert sorted(list_bundles(tmp_path)) == sorted([mine.name, theirs.name])
    verify_bundle(theirs)
    verify_bundle(mine)
    assert current_bundle_dir(tmp_path) == mine
    assert staging_dirs(tmp_path) == []


def test_a_dead_runs_staging_is_discarded_and_a_live_ones_is_not(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_STAGING, str(tmp_path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        held = Path(holder.stdout.readline().strip())
        assert has_live_owner(held)
        assert discard_staging(tmp_path) == []
        assert held.is_dir()
    finally:
        holder.kill()  # dies without cleaning up, as a crashed run would
        holder.wait()
    assert held.is_dir() and not has_live_owner(held)
    assert discard_staging(tmp_path) == [held]
    assert staging_dirs(tmp_path) == []


def test_a_second_publisher_waits_for_the_lock(tmp_path):
    published = publish_tiny_bundle(tmp_path, make_current=False)
    switched = threading.Event()

    def switch() -> None:
        set_current(tmp_path, published.name)
        switched.set()

    with model_dir_lock(tmp_path):
        other = threading.Thread(target=switch)
        other.start()
        assert not switched.wait(0.3)  # still waiting for the lock
        assert not (tmp_path / "current").exists()
    other.join()
    assert switched.is_set() and current_bundle_dir(tmp_path) == published


@pytest.mark.parametrize("pointer", ["current", "challenger"])
def test_a_pointer_file_left_by_a_crash_is_discarded(tmp_path, pointer):
    published = publish_tiny_bundle(tmp_path)
    leftover = tmp_path / f".{pointer}.0123abcd.tmp"
    leftover.write_text("half")
    assert discard_staging(tmp_path) == [leftover]
    assert current_bundle_dir(tmp_path) == published


def test_a_bundle_being_staged_is_never_listed(tmp_path):
    published = publish_tiny_bundle(tmp_path)
    manifest, model = tiny_manifest(seed=1)
    with staging(tmp_path, manifest.version) as staged:
        write_bundle_files(staged, model)
        (staged / "manifest.json").write_text("{}")  # publish writes it before the rename
        assert list_bundles(tmp_path) == [published.name]


def test_this_processs_own_staging_is_live(tmp_path):
    with staging(tmp_path, "v") as staged:
        assert discard_staging(tmp_path) == []
        assert staged.is_dir()
    assert not staged.exists()  # left unpublished: removed on the way out


def test_staging_without_an_owner_record_is_stale(tmp_path):
    leftover = tmp_path / ".staging-old-abc"
    leftover.mkdir()
    (leftover / "model.joblib").write_bytes(b"half written")
    assert discard_staging(tmp_path) == [leftover]


def test_published_bundle_carries_no_owner_record(tmp_path):
    published = publish_tiny_bundle(tmp_path)
    assert not (published / STAGING_OWNER).exists()
    assert STAGING_OWNER not in verify_bundle(published).files


def test_a_bundle_without_its_model_is_not_published(tmp_path):
    first = publish_tiny_bundle(tmp_path, seed=1)
    manifest, _ = tiny_manifest(seed=2)
    with staging(tmp_path, manifest.version) as staged:
        (staged / "report.md").write_text("# no model here\n")
        with pytest.raises(BundleError, match=r"model artifact 'model\.joblib'"):
            publish(staged, manifest, tmp_path)
    assert list_bundles(tmp_path) == [first.name]
    assert current_bundle_dir(tmp_path) == first
    assert staging_dirs(tmp_path) == []


def test_a_vanished_staging_directory_is_reported(tmp_path):
    manifest, model = tiny_manifest()
    with staging(tmp_path, manifest.version) as staged:
        write_bundle_files(staged, model)
        import shutil

        shutil.rmtree(staged)
        with pytest.raises(BundleError, match="has disappeared"):
            publish(staged, manifest, tmp_path)
    assert list_bundles(tmp_path) == []


def test_a_link_to_a_file_outside_the_bundle_is_refused(tmp_path):
    models_dir = tmp_path / "models"
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of any bundle")
    manifest, model = tiny_manifest()
    with staging(models_dir, manifest.version) as staged:
        write_bundle_files(staged, model)
        os.symlink(secret, staged / "extra.txt")
        with pytest.raises(BundleError, match="outside the bundle"):
            publish(staged, manifest, models_dir)
    assert list_bundles(models_dir) == []


def test_files_the_manifest_does_not_list_fail_verification(tmp_path):
    manifest, model = tiny_manifest()
    with staging(tmp_path, manifest.version) as staged:
        write_bundle_files(staged, model)
        published = publish(staged, manifest, tmp_path, make_current=False)
    (published / "surprise.pkl").write_bytes(b"unlisted")
    with pytest.raises(BundleError, match=r"does not list: surprise\.pkl"):
        verify_staged(published, verify_bundle(published))
