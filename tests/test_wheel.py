"""Install anywhere: the built wheel, installed (not editable) with its `images` extra into a fresh
virtual environment, runs `cnnrt --version`, `cnnrt eval` and `cnnrt predict` on PNG files from an
unrelated directory, with its own model and test set.

Needs pip and the venv module, and pip's configured index (or find-links) for setuptools, NumPy,
safetensors and Pillow, as `make test` itself does.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import ROOT

WHEEL_DATA = {
    "cnnrt/data/deep_mnist/deep_mnist.safetensors",
    "cnnrt/data/deep_mnist/training.json",
    "cnnrt/data/mnist/t10k-images-idx3-ubyte.gz",
    "cnnrt/data/mnist/t10k-labels-idx1-ubyte.gz",
    "cnnrt/backends/cuda_kernels/deep_mnist.cu",
}


def _run(cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    for module in ("venv", "pip"):
        if subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode:
            pytest.skip(f"the {module} module is not available to {sys.executable}: cannot build and install a wheel")
    work = tmp_path_factory.mktemp("wheel")
    # a clean copy of what the wheel is built from: no build/ or egg-info in the checkout, and the
    # article-format copy of the weights (never packaged) is left out of the copy
    src = work / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, src / f)
    shutil.copytree(ROOT / "cnnrt", src / "cnnrt",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "article"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work / "dist", src])
    wheel = next((work / "dist").glob("cnnrt-*.whl"))
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", f"{wheel}[images]"])
    return wheel, venv


def _env() -> dict:
    """No PYTHONPATH: the installed package must be the one that runs, not this checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def test_wheel_carries_the_model_and_the_test_set(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert WHEEL_DATA <= names, WHEEL_DATA - names
    assert not [n for n in names if "/article/" in n or "train-" in n], "the article copy or training set is packaged"
    assert wheel.stat().st_size < 20 * 2**20


def test_installed_wheel_evaluates_from_any_directory(installed, tmp_path):
    _, venv = installed
    cnnrt = venv / "bin" / "cnnrt"
    where = _run([venv / "bin" / "python", "-c", "import cnnrt; print(cnnrt.__file__)"], cwd=tmp_path, env=_env())
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed copy, not the checkout
    version = _run([cnnrt, "--version"], cwd=tmp_path, env=_env()).stdout
    assert version.startswith("cnnrt ")
    r = json.loads(_run([cnnrt, "eval", "--limit", "100", "--json"], cwd=tmp_path, env=_env()).stdout)
    assert r["images"] == 100 and r["accuracy"] >= 0.97 and r["model"].startswith(str(venv))
    text = _run([cnnrt, "eval", "--limit", "100"], cwd=tmp_path, env=_env()).stdout
    assert "Accuracy: " in text
    assert os.listdir(tmp_path) == []  # eval wrote nothing into the working directory


def test_installed_wheel_predicts_png_files(installed, tmp_path, mnist_test):
    """`cnnrt predict` with the wheel's `images` extra: MNIST test digits drawn as a user would (black
    on white, larger, off centre) as PNG files in the working directory, judged by their labels."""
    from PIL import Image

    _, venv = installed
    x, y = mnist_test
    names = []
    for i in range(3):  # the test set's first digits: 7, 2, 1
        ink = np.asarray(Image.fromarray(x[i]).resize((120, 120), Image.Resampling.BICUBIC))
        page = np.full((200, 240), 255, np.uint8)
        page[20 + 30 * i:140 + 30 * i, 10 + 50 * i:130 + 50 * i] = 255 - ink
        names.append(f"digit{i}.png")
        Image.fromarray(page, "L").save(tmp_path / names[-1])
    p = _run([venv / "bin" / "cnnrt", "predict", *names, "--json"], cwd=tmp_path, env=_env())
    out = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["file"] for r in out] == names
    assert [int(r["label"]) for r in out] == [int(v) for v in y[:3]], out
    assert all(r["model"].startswith(str(venv)) and r["preprocess"] == "mnist" for r in out), out
    assert sorted(os.listdir(tmp_path)) == names  # predict wrote nothing


def test_installed_wheel_train_asks_for_the_training_set(installed, tmp_path):
    """The training set is not in the wheel: train says so (before needing TensorFlow) and writes nothing."""
    _, venv = installed
    p = subprocess.run([str(venv / "bin" / "cnnrt"), "train", "--out", "m", "--epochs", "1"], capture_output=True,
                       text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "the MNIST training set ships only with the source repository" in p.stderr
    assert os.listdir(tmp_path) == []


def test_installed_wheel_eval_asks_for_the_fashion_mnist_files(installed, tmp_path):
    """Fashion-MNIST is in the source repository only: eval --dataset fashion-mnist says so, exit 2."""
    _, venv = installed
    p = subprocess.run([str(venv / "bin" / "cnnrt"), "eval", "--dataset", "fashion-mnist", "--limit", "10"],
                       capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert ("the Fashion-MNIST test set ships only with the source repository (data/fashion-mnist/); "
            "pass --images and --labels") in p.stderr
    assert os.listdir(tmp_path) == []
