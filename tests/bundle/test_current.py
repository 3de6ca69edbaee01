"""``current`` can only name a real bundle directory directly inside the model directory."""

from __future__ import annotations

import os

import pytest

from bundle.manifest import BundleError
from bundle.store import bundle_path, current_bundle_dir, set_current
from tests.bundle.tiny_bundle import publish_tiny_bundle


@pytest.mark.parametrize("content", ["../etc", "/etc", "..", ".", ".hidden", "a/b", "a\\b", "", "x\x00y", "v" * 300])
def test_a_pointer_that_names_no_plain_version_is_refused(tmp_path, content):
    (tmp_path / "current").write_text(content + "\n")
    with pytest.raises(BundleError, match="does not name a bundle"):
        current_bundle_dir(tmp_path)


def test_current_as_a_symbolic_link_is_refused(tmp_path):
    published = publish_tiny_bundle(tmp_path, make_current=False)
    os.symlink(published, tmp_path / "current")
    with pytest.raises(BundleError, match="is a symbolic link"):
        current_bundle_dir(tmp_path)


def test_a_bundle_directory_linking_outside_is_refused(tmp_path):
    elsewhere = publish_tiny_bundle(tmp_path / "elsewhere")
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    os.symlink(elsewhere, models_dir / "20260101T000000Z-abcdef")
    (models_dir / "current").write_text("20260101T000000Z-abcdef\n")
    with pytest.raises(BundleError, match="symbolic link"):
        current_bundle_dir(models_dir)
    with pytest.raises(BundleError, match="symbolic link"):
        set_current(models_dir, "20260101T000000Z-abcdef")


@pytest.mark.parametrize("version", ["../elsewhere", "/tmp", "..", ".staging-x", ""])
def test_set_current_refuses_names_outside_the_model_directory(tmp_path, version):
    first = publish_tiny_bundle(tmp_path)
    with pytest.raises(BundleError, match="does not name a bundle"):
        set_current(tmp_path, version)
    assert current_bundle_dir(tmp_path) == first


def test_set_current_writes_a_plain_file_even_over_a_link(tmp_path):
    published = publish_tiny_bundle(tmp_path, make_current=False)
    os.symlink(published, tmp_path / "current")
    set_current(tmp_path, published.name)
    assert not (tmp_path / "current").is_symlink()
    assert (tmp_path / "current").read_text() == published.name + "\n"
    assert current_bundle_dir(tmp_path) == published


def test_bundle_path_names_an_existing_bundle_only(tmp_path):
    published = publish_tiny_bundle(tmp_path)
    assert bundle_path(tmp_path, published.name) == published
    with pytest.raises(BundleError, match="does not exist"):
        bundle_path(tmp_path, "20990101T000000Z-ffffff")
