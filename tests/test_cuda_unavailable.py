"""Without CuPy or a GPU, --backend cuda must say so clearly and auto must fall back to NumPy."""
from __future__ import annotations

import numpy as np
import pytest

from cnnrt import backends
from cnnrt.backends import cuda as cuda_backend
from cnnrt.errors import BackendUnavailable
from cnnrt.model import deep_mnist

from conftest import random_deep_mnist_params

REASON = cuda_backend.available()
pytestmark = pytest.mark.skipif(REASON is None, reason="a GPU is usable here: tests/test_cuda.py covers it")


def test_reason_is_clear():
    assert "CuPy is not installed" in REASON or "no NVIDIA GPU" in REASON or "CuPy failed" in REASON


def test_cuda_backend_refuses_with_the_reason():
    model = deep_mnist(random_deep_mnist_params(np.random.default_rng(0)))
    with pytest.raises(BackendUnavailable, match="backend 'cuda' cannot run here") as e:
        backends.prepare(model, "cuda")
    assert REASON in str(e.value)


def test_auto_falls_back_to_numpy_and_says_why():
    name, note = backends.resolve("auto")
    assert name == "numpy" and REASON in note


def test_import_cnnrt_does_not_import_cupy():
    import subprocess
    import sys

    code = "import sys, cnnrt, cnnrt.backends.cuda; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
