"""The CPU backend's kernels and the whole backend against the float64 reference, on fresh random inputs.

Each kernel (Winograd F(m x m, r x r), im2col conv with the pool fused, the stage pipeline with
its chunks and threads) is compared with reference.py computed in float64, for several shapes,
paddings and strides, batch 1 and odd batches included. The bounds are relative errors of the
whole output (norm of the difference over norm of the reference).
"""
import numpy as np
import pytest

from cnnrt.backends import numpy_backend, reference as R
from cnnrt.backends.cpu_kernels import BlasThreads, Im2colConv, Scratch, WinogradConv, winograd_matrices
from cnnrt.errors import FormatError
from cnnrt.model import Conv2D, Dense, MaxPool2D, Model, Softmax, deep_mnist

from conftest import random_deep_mnist_params


def rel_err(a, ref):
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - ref) / np.linalg.norm(ref))


def conv_err(out, x, w, b, stride, padding, relu, pool):
    """Largest error over the largest pre-activation value: ReLU can leave only small outputs
    whose relative error says nothing of the kernel (their sums cancel)."""
    ref = conv_ref64(x, w, b, stride, padding, relu, pool)
    assert out.shape == ref.shape
    scale = np.abs(conv_ref64(x, w, b, stride, padding, False, None)).max()
    return float(np.abs(out.astype(np.float64) - ref).max() / scale)


def conv_ref64(x, w, b, stride, padding, relu, pool):
    y = R.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), stride, padding)
    if relu:
        y = R.relu(y)
    if pool is not None:
        y = R.maxpool2d(y, pool.size, pool.stride, pool.padding)
    return y


def random_conv(rng, h, w, c, o, k):
    x = rng.random((1, h, w, c)).astype(np.float32)  # ReLU-like, non-negative
    wt = (rng.standard_normal((o, k, k, c)) / np.sqrt(k * k * c)).astype(np.float32)
    b = (rng.standard_normal(o) * 0.1).astype(np.float32)
    return x, wt, b


@pytest.mark.parametrize("m,r", [(2, 3), (4, 3), (2, 5), (3, 5), (4, 5), (6, 3)])
def test_winograd_matrices_compute_a_correlation(rng, m, r):
    at, g, bt = winograd_matrices(m, r)
    d, w = rng.standard_normal(m + r - 1), rng.standard_normal(r)
    direct = np.array([d[i:i + r] @ w for i in range(m)])
    np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)), direct, rtol=1e-12, atol=1e-12)


WINO_CASES = [
    # h, w, c, o, k, padding, pooled, batch
    (14, 14, 32, 64, 5, "same", True, 1),  # Deep MNIST's conv2
    (14, 14, 32, 64, 5, "same", True, 5),
    (9, 10, 8, 5, 5, "same", True, 3),  # odd height: the pool cannot be fused
    (9, 10, 8, 5, 5, "same", False, 1),
    (13, 11, 3, 7, 3, "valid", False, 2),
    (8, 8, 16, 12, 3, "same", True, 7),
    (6, 7, 4, 3, 5, "valid", False, 1),  # 2x3 output, smaller than one tile
]


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("h,w,c,o,k,padding,pooled,n", WINO_CASES)
def test_winograd_conv_matches_float64(rng, m, h, w, c, o, k, padding, pooled, n):
    x, wt, b = random_conv(rng, h, w, c, o, k)
    x = rng.random((n, h, w, c)).astype(np.float32)
    pool = MaxPool2D("p") if pooled else None
    kern = WinogradConv((h, w, c), wt, b, padding, "relu", pool, m=m)
    out = kern(x, Scratch())
    if pooled and not kern.pool:  # not fusible here: the reference pool after the kernel
        out = R.maxpool2d(out)
    assert conv_err(out, x, wt, b, 1, padding, True, pool) < 1e-5


IM2COL_CASES = [
    # h, w, c, o, k, stride, padding, pooled, relu, batch
    (28, 28, 1, 32, 5, 1, "same", True, True, 1),  # Deep MNIST's conv1
    (28, 28, 1, 32, 5, 1, "same", True, True, 9),
    (14, 14, 32, 64, 5, 1, "same", True, True, 3),
    (13, 11, 3, 8, 3, 2, "same", False, True, 2),  # stride 2, odd sizes
    (13, 11, 3, 8, 3, 2, "valid", False, False, 1),
    (16, 16, 2, 4, 3, 2, "same", True, True, 5),  # stride 2 then a fused pool
    (10, 12, 4, 6, 1, 1, "valid", True, False, 1),  # 1x1 kernel
    (7, 9, 5, 3, 4, 3, "same", False, True, 3),  # even kernel, stride 3
]


@pytest.mark.parametrize("h,w,c,o,k,stride,padding,pooled,relu,n", IM2COL_CASES)
def test_im2col_conv_matches_float64(rng, h, w, c, o, k, stride, padding, pooled, relu, n):
    _, wt, b = random_conv(rng, h, w, c, o, k)
    x = rng.random((n, h, w, c)).astype(np.float32)
    pool = MaxPool2D("p") if pooled else None
    kern = Im2colConv((h, w, c), wt, b, stride, padding, "relu" if relu else "none", pool)
    out = kern(x, Scratch())
    if pooled and not kern.pool:
        out = R.maxpool2d(out)
    assert conv_err(out, x, wt, b, stride, padding, relu, pool) < 1e-5


def test_scratch_buffers_survive_changing_chunk_sizes(rng):
    """Buffers are shared by chunks of any size; the padded borders must stay zero."""
    x, wt, b = random_conv(rng, 14, 14, 32, 64, 5)
    x = rng.random((9, 14, 14, 32)).astype(np.float32) + 1.0
    kern, s = WinogradConv((14, 14, 32), wt, b, "same", "relu", MaxPool2D("p"), m=4), Scratch()
    ref = conv_ref64(x, wt, b, 1, "same", True, MaxPool2D("p"))
    for sl in (slice(0, 9), slice(0, 2), slice(3, 8), slice(8, 9), slice(0, 9)):
        out = kern(x[sl], s).copy()
        assert rel_err(out, ref[sl]) < 1e-5


def logits_model(model: Model) -> Model:
    return Model(model.input_shape, [l for l in model.layers if not isinstance(l, Softmax)],
                 model.input_scale, model.name)


@pytest.mark.parametrize("n", [1, 2, 17, 301])
def test_deep_mnist_matches_float64(rng, n):
    model = logits_model(deep_mnist(random_deep_mnist_params(rng), name="random"))
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    ref = R.forward(model, x[..., None].astype(np.float64) * model.input_scale)
    out = numpy_backend.prepare(model, "fp32").probabilities(x)
    assert out.shape == (n, 10) and out.dtype == np.float32
    assert rel_err(out, ref) < 1e-5


def test_deep_mnist_probabilities_and_batching(rng, random_model):
    x = rng.integers(0, 256, (70, 28, 28), dtype=np.uint8)
    ref = R.forward(random_model, x[..., None].astype(np.float64) * random_model.input_scale)
    runner = numpy_backend.prepare(random_model, "fp32")
    seen = []
    for probs in (runner.probabilities(x), runner.probabilities(x, batch_size=13, progress=seen.append),
                  runner.probabilities(x, batch_size=13), runner.probabilities(x, batch_size=1000),
                  np.concatenate([runner.probabilities(x[i:i + 1]) for i in range(len(x))]),
                  runner.probabilities(x.astype(np.float64) * random_model.input_scale)):
        assert np.abs(probs - ref).max() < 1e-5
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert seen[-1] == 70
    with pytest.raises(FormatError):
        runner.probabilities(x, batch_size=-1)


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_count_does_not_change_results(rng, threads):
    model = logits_model(deep_mnist(random_deep_mnist_params(rng), name="random"))
    x = rng.integers(0, 256, (150, 28, 28), dtype=np.uint8)
    a = numpy_backend.NumpyRunner(model, "fp32", threads=threads, chunk=40, conv_subchunk=3).probabilities(x)
    b = numpy_backend.prepare(model, "fp32").probabilities(x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_fp16_storage_matches_the_reference_pipeline(rng):
    model = logits_model(deep_mnist(random_deep_mnist_params(rng), name="random"))
    x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    xs = x[..., None].astype(np.float32) * np.float32(model.input_scale)
    ref16 = R.forward(model, xs, dtype=np.float32, fp16_storage=True)
    ref64 = R.forward(model, xs.astype(np.float64))
    out = numpy_backend.prepare(model, "fp16").probabilities(x)
    # same roundings in the same places: only where fp32 sums in another order land on the other
    # side of a float16 rounding boundary do the two differ (by one half-precision step there)
    assert rel_err(out, ref16) < 2e-3
    assert rel_err(out, ref16) < 0.25 * rel_err(ref16, ref64) + 1e-4
    assert (out.argmax(1) == ref16.argmax(1)).mean() >= 0.95


def _generic_models(rng):
    def conv(name, o, k, c, stride=1, padding="same", act="relu"):
        return Conv2D(name, (rng.standard_normal((o, k, k, c)) / np.sqrt(k * k * c)).astype(np.float32),
                      (rng.standard_normal(o) * 0.1).astype(np.float32), stride, padding, act)

    def dense(name, o, i, act="relu"):
        return Dense(name, (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32),
                     (rng.standard_normal(o) * 0.1).astype(np.float32), act)

    return {
        "stride2-valid": Model((15, 13, 3), [conv("c1", 8, 3, 3, 2, "valid"), conv("c2", 6, 3, 8, 1, "valid", "none"),
                                             Dense("d", *[(rng.standard_normal((5, 5 * 4 * 6)) * 0.1).astype(np.float32),
                                                          np.zeros(5, np.float32)], activation="none")]),
        "odd-pools": Model((11, 11, 2), [conv("c1", 4, 5, 2), MaxPool2D("p1", 3, 2, "same"),
                                         conv("c2", 8, 3, 4), MaxPool2D("p2", 2, 2, "valid"),
                                         dense("d1", 7, 3 * 3 * 8), Softmax()]),
        "pool-first": Model((12, 12, 1), [MaxPool2D("p0", 2, 2), conv("c1", 9, 3, 1, 1, "same"),
                                          dense("d1", 4, 6 * 6 * 9, "none")]),
        "dense-only": Model((4, 5, 2), [dense("d1", 16, 40), dense("d2", 3, 16, "none"), Softmax()]),
        "winograd-3x3-chain": Model((16, 16, 3), [conv("c1", 16, 3, 3), MaxPool2D("p1"), conv("c2", 16, 3, 16),
                                                  conv("c3", 8, 5, 16), MaxPool2D("p2"),
                                                  dense("d1", 10, 4 * 4 * 8, "none")]),
    }


@pytest.mark.parametrize("name", ["stride2-valid", "odd-pools", "pool-first", "dense-only", "winograd-3x3-chain"])
@pytest.mark.parametrize("n", [1, 6, 33])
def test_generic_models_match_float64(rng, name, n):
    model = _generic_models(rng)[name]
    x = rng.integers(0, 256, (n, *model.input_shape), dtype=np.uint8)
    ref = R.forward(model, x.astype(np.float64) * model.input_scale)
    runner = numpy_backend.NumpyRunner(model, "fp32", chunk=8, conv_subchunk=3)
    out = runner.probabilities(x)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-5


def test_blas_thread_control_is_local_and_restorable():
    blas = BlasThreads()
    if not blas.available:
        pytest.skip("this BLAS has no per-thread thread count (not OpenBLAS >= 0.3.27)")
    old = blas.set_local(1)
    assert blas.set_local(0 if old is None else old) == 1


@pytest.mark.parametrize("name", ["stride2-valid", "odd-pools", "winograd-3x3-chain"])
def test_generic_models_fp16_storage(rng, name):
    model = _generic_models(rng)[name]
    x = rng.integers(0, 256, (9, *model.input_shape), dtype=np.uint8)
    xs = x.astype(np.float32) * np.float32(model.input_scale)
    ref16 = R.forward(model, xs, dtype=np.float32, fp16_storage=True)
    ref64 = R.forward(model, xs.astype(np.float64))
    out = numpy_backend.NumpyRunner(model, "fp16", chunk=4, conv_subchunk=2).probabilities(x)
    assert out.shape == ref16.shape
    # the same roundings in the same places as the reference's fp16 pipeline: far closer to it
    # than either is to float64
    assert rel_err(out, ref16) < 2e-3
    assert rel_err(out, ref16) < 0.5 * rel_err(ref16, ref64) + 1e-4
