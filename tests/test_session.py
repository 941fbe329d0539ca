"""cnnrt.load() and the Session: metadata, results against the float64 reference, threads, errors."""
import threading

import numpy as np
import pytest

import cnnrt
from cnnrt.errors import FormatError
from cnnrt.formats import save_bundle
from cnnrt.ir import run_reference
from cnnrt.ir.chain import as_graph

from conftest import SHIPPED


def test_metadata_of_the_shipped_model():
    s = cnnrt.load(SHIPPED / "deep_mnist.safetensors", backend="numpy")
    assert (s.backend, s.precision, s.input_shape, s.num_classes) == ("numpy", "fp32", (28, 28, 1), 10)
    assert s.labels == [str(i) for i in range(10)]
    assert [t.as_dict() for t in s.inputs] == [{"name": "images", "shape": [-1, 28, 28, 1], "datatype": "UINT8"}]
    assert [t.name for t in s.outputs] == ["probabilities", "label"]
    d = s.describe()
    assert d["name"] == "deep_mnist" and d["backend"] == "numpy" and d["inputs"][0]["datatype"] == "UINT8"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_results_match_the_float64_reference(tmp_path, random_model, rng, precision):
    save_bundle(random_model, tmp_path / "m.safetensors")
    s = cnnrt.load(tmp_path / "m.safetensors", backend="numpy", precision=precision)
    x = rng.integers(0, 256, (37, 28, 28), dtype=np.uint8)
    want = run_reference(as_graph(random_model), {"images": x[..., None] / 255.0},
                         fp16_storage=precision == "fp16")["probabilities"]
    p = s.probabilities(x)
    assert p.shape == (37, 10) and p.dtype == np.float32
    # fp16: storage rounding differs where the engine keeps float32 between fused steps; a few ulps
    np.testing.assert_allclose(p, want, atol=1e-5 if precision == "fp32" else 1e-2)
    out = s.run(x)
    np.testing.assert_array_equal(out["label"], s.predict(x))
    np.testing.assert_array_equal(out["label"], out["probabilities"].argmax(1))


def test_concurrent_calls_from_four_threads_give_the_serial_answers(tmp_path, random_model, rng):
    save_bundle(random_model, tmp_path / "m.safetensors")
    s = cnnrt.load(tmp_path / "m.safetensors", backend="numpy")
    batches = [rng.integers(0, 256, (int(n), 28, 28), dtype=np.uint8) for n in rng.integers(1, 300, 12)]
    serial = [s.probabilities(b) for b in batches]
    got = [None] * len(batches)
    errors = []

    def work(k):
        try:
            for i in range(k, len(batches), 4):
                got[i] = s.probabilities(batches[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for a, b in zip(got, serial):
        np.testing.assert_array_equal(a, b)


def test_labels_from_the_model(tmp_path, random_model):
    g = as_graph(random_model)
    g.labels = [f"class {i}" for i in range(10)]
    save_bundle(g, tmp_path / "m.safetensors")
    assert cnnrt.load(tmp_path / "m.safetensors", backend="numpy").labels[3] == "class 3"


def test_bad_inputs_are_clear_errors(tmp_path):
    s = cnnrt.load(SHIPPED / "deep_mnist.safetensors", backend="numpy")
    with pytest.raises(FormatError, match=r"expected an array of shape \(N, 28, 28, 1\) or \(N, 28, 28\), got \(3, 27, 28\)"):
        s.predict(np.zeros((3, 27, 28), np.uint8))
    with pytest.raises(FormatError, match="NaN or Inf"):
        s.predict(np.full((1, 28, 28), np.nan, np.float32))
    with pytest.raises(FormatError, match="no such model file"):
        cnnrt.load(tmp_path / "missing.safetensors")


def test_input_buffer_is_pinned_on_the_gpu_and_feeds_the_fast_path(rng, monkeypatch):
    # NumPy backend: an ordinary array. GPU planner (on the CPU fake of CuPy): page-locked memory,
    # which a large input takes straight to the streams (no staging copy; an ordinary array is
    # first staged into the runner's pinned buffer); results as from an ordinary array, and
    # against the NumPy backend
    from cnnrt.backends import cuda_graph
    from cnnrt.testing import fake_cupy

    s = cnnrt.load(SHIPPED / "deep_mnist.safetensors", backend="numpy")
    buf = s.input_buffer(3)
    assert buf.shape == (3, 28, 28, 1) and buf.dtype == np.uint8
    fake_cupy.install(monkeypatch)
    monkeypatch.setattr(cuda_graph, "DIRECT_BYTES", 1000)
    g = cnnrt.load(SHIPPED / "deep_mnist.safetensors", backend="cuda", precision="fp32")  # the planner
    assert g.backend == "cuda"
    x = rng.integers(0, 256, (30, 28, 28, 1), dtype=np.uint8)
    buf = g.input_buffer(30)
    buf[...] = x
    import cupy

    assert cupy.cuda.runtime.pointerGetAttributes(buf.ctypes.data).type == 1
    seen = []
    monkeypatch.setattr(cuda_graph.GraphRunner, "_run_direct",  # records whether the input was staged
                        lambda self, *a, _f=cuda_graph.GraphRunner._run_direct: seen.append(a[4:]) or _f(self, *a))
    p_pinned = g.probabilities(buf)
    assert seen == [(False,)]
    p_plain = g.probabilities(x)
    assert seen == [(False,), (True,)]  # an ordinary array is staged first
    np.testing.assert_array_equal(p_pinned, p_plain)
    np.testing.assert_allclose(p_pinned, s.probabilities(x), atol=1e-5)
