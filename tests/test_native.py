"""The optional compiled kernels (cnnrt.backends.native): built once and cached, and the NumPy
kernels take over, saying why, when they cannot be built. Their arithmetic is checked against the
float64 reference in test_numpy_graph.py (every kernel test runs with and without them)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnrt.backends import native
from cnnrt.backends.numpy_graph import GraphRunner
from cnnrt.testing import cpu_graphs as graphs

ROOT = Path(__file__).resolve().parent.parent
CODE = ("import json; from cnnrt.backends import native; native.lib(); "
        "print(json.dumps({'why': native.why(), **native.info()}))")


@pytest.fixture
def fresh(monkeypatch):
    native.reset()
    yield monkeypatch
    native.reset()


def test_disabled_by_the_environment_the_numpy_kernels_run(fresh, rng):
    fresh.setenv("CNNRT_NATIVE", "0")
    assert native.lib() is None and native.why() == "CNNRT_NATIVE=0"
    g = graphs.mobilenet_v2(seed=1, size=32)
    r = GraphRunner(g, "fp32", threads=1)
    kernels = {k for _, _, k in r.describe()}
    assert not any(k.startswith("native.") for k in kernels) and "numpy.conv.depthwise+bias+clip" in kernels
    assert r.run({"images": rng.random((2, 32, 32, 3), dtype=np.float32)})["logits"].shape == (2, 1000)


def test_no_compiler_is_a_reason_not_an_error(fresh):
    fresh.delenv("CC", raising=False)
    fresh.setattr(native.shutil, "which", lambda name: None)
    fresh.setattr(native.importlib_util(), "find_spec", lambda name: None)
    assert native.lib() is None
    assert "no C compiler" in native.why() and "cnnrt[native]" in native.why()


def test_the_zig_toolchain_is_the_last_resort(fresh):
    fresh.delenv("CC", raising=False)
    fresh.setattr(native.shutil, "which", lambda name: None)
    fresh.setattr(native.importlib_util(), "find_spec", lambda name: object() if name == "ziglang" else None)
    assert native._compiler() == [sys.executable, "-m", "ziglang", "cc"]


def test_a_build_failure_is_reported(fresh, tmp_path):
    bad = tmp_path / "kernels.c"
    bad.write_text("this is not C\n")
    fresh.setattr(native, "SOURCE", bad)
    fresh.setenv("CNNRT_CACHE_DIR", str(tmp_path / "cache"))
    if native._compiler() is None:
        pytest.skip("no C compiler here")
    assert native.lib() is None and native.why().startswith("C build failed")
    assert not list((tmp_path / "cache").glob("*.so")) and not list((tmp_path / "cache").glob(".kernels-*"))


def test_built_once_then_loaded_from_the_cache(tmp_path):
    if native._compiler() is None:
        pytest.skip("no C compiler here")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CNNRT_CACHE_DIR": str(tmp_path)}
    env.pop("CNNRT_NATIVE", None)
    runs = [json.loads(subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                                      check=True, timeout=300).stdout) for _ in range(2)]
    assert runs[0]["why"] is None and runs[0]["compiled_now"] and runs[0]["compile_seconds"] > 0
    assert not runs[1]["compiled_now"] and runs[1]["library"] == runs[0]["library"]
    assert runs[0]["vector_width"] in (8, 16)
    assert [p.name for p in tmp_path.iterdir()] == [Path(runs[0]["library"]).name]
