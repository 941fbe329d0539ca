"""Atomic writes: whole files or none, modes from the umask, existing files kept unless asked."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from cnnrt.errors import CnnrtError
from cnnrt.fileio import StagedDir, atomic_write
from cnnrt.formats import load_model, save_article, save_bundle


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def _listing(d) -> list[str]:
    return sorted(os.listdir(d))


def test_bundle_and_article_modes_follow_the_umask(tmp_path, random_model, umask_027):
    save_bundle(random_model, tmp_path / "m.safetensors")
    save_article(random_model, tmp_path / "art")
    assert _mode(tmp_path / "m.safetensors") == 0o640  # was 0600 (safetensors' own temp file)
    assert _mode(tmp_path / "art") == 0o750
    assert {_mode(p) for p in (tmp_path / "art").iterdir()} == {0o640}


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    (tmp_path / "f").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "f", overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert (tmp_path / "f").read_bytes() == b"old"
    assert _listing(tmp_path) == ["f"]


def test_atomic_write_refuses_to_overwrite_unless_asked(tmp_path):
    (tmp_path / "f").write_bytes(b"old")
    with pytest.raises(CnnrtError, match="f: already exists"):
        with atomic_write(tmp_path / "f"):
            pytest.fail("must refuse before yielding")
    with atomic_write(tmp_path / "f", overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert (tmp_path / "f").read_bytes() == b"new" and _listing(tmp_path) == ["f"]


def test_atomic_write_into_a_directory_name(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(CnnrtError, match="d: is a directory"):
        with atomic_write(tmp_path / "d", overwrite=True):
            pass


def test_staged_dir_keeps_other_files_and_refuses_conflicts(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("mine")
    (out / "model").write_text("old model")
    with StagedDir(out) as s:
        (s.path / "model").write_text("new model")
        with pytest.raises(CnnrtError, match="already holds model"):
            s.commit()
    assert (out / "model").read_text() == "old model" and _listing(tmp_path) == ["out"]
    with StagedDir(out, overwrite=True) as s:
        (s.path / "model").write_text("new model")
        (s.path / "extra").write_text("x")
        s.commit()
    assert (out / "model").read_text() == "new model" and (out / "README.md").read_text() == "mine"
    assert _listing(out) == ["README.md", "extra", "model"] and _listing(tmp_path) == ["out"]


def test_staged_dir_discards_on_failure(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with StagedDir(tmp_path / "new") as s:
            (s.path / "half").write_text("x")
            raise KeyboardInterrupt
    assert _listing(tmp_path) == []


def test_save_article_into_an_existing_model_without_overwrite(tmp_path, random_model):
    save_article(random_model, tmp_path / "a")
    before = (tmp_path / "a" / "W_fc1").read_bytes()
    other = load_model(tmp_path / "a")
    other.params["fc1.weight"][...] += 1
    with pytest.raises(CnnrtError, match="already holds W_conv1"):
        save_article(other, tmp_path / "a", overwrite=False)
    assert (tmp_path / "a" / "W_fc1").read_bytes() == before
    assert _listing(tmp_path) == ["a"]


def test_save_article_accepts_a_differently_named_softmax(tmp_path, random_model):
    """The Keras importer names a Softmax layer `softmax_softmax`: names are not part of the raw
    format, so save_article must not compare them (this is what broke `cnnrt train`)."""
    random_model.layers[-1].name = "softmax_softmax"
    save_article(random_model, tmp_path / "a")
    back = load_model(tmp_path / "a")
    for k, v in random_model.params().items():
        np.testing.assert_array_equal(back.params[k], v)
