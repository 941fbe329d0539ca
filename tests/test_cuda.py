"""The CUDA backend against the float64 NumPy reference (run on the device: `make test-gpu`).

Every kernel on fresh random inputs and on real images, outputs poisoned before each run, odd batch
sizes (1, 7, a batch not divisible by the chunk size, 10,000). Skips, with the reason, where CuPy
or an NVIDIA GPU is missing.
"""
from __future__ import annotations

import numpy as np
import pytest

from cnnrt.backends import cuda as cuda_backend

pytestmark = pytest.mark.gpu

_REASON = cuda_backend.available()
if _REASON is not None:
    pytest.skip(f"GPU tests need CuPy and an NVIDIA GPU: {_REASON}", allow_module_level=True)

import cupy as cp  # noqa: E402

from cnnrt import backends  # noqa: E402
from cnnrt.backends import reference as ref  # noqa: E402
from cnnrt.model import Conv2D, Dense, MaxPool2D, Model, Softmax, deep_mnist  # noqa: E402

from conftest import SHIPPED, random_deep_mnist_params  # noqa: E402


def q16(a):
    return np.asarray(a, np.float64).astype(np.float16).astype(np.float64)


def ref_features(model: Model, x: np.ndarray) -> np.ndarray:
    """conv1 -> relu -> pool -> conv2 -> relu -> pool in float64, fp16 storage, NHWC flattened."""
    c1, _, c2, _ = model.layers[:4]
    h = q16(x)
    h = q16(ref.relu(ref.conv2d(h, q16(c1.weight), q16(c1.bias))))
    h = q16(ref.maxpool2d(h))
    h = q16(ref.relu(ref.conv2d(h, q16(c2.weight), q16(c2.bias))))
    h = q16(ref.maxpool2d(h))
    return h.reshape(len(h), -1)


def scaled(model, x):
    return x.astype(np.float64) * model.input_scale if x.dtype == np.uint8 else x.astype(np.float64)


def check_close(out, want, what, rel_l2=3e-3, max_rel=1.5e-2):
    out = np.asarray(out, np.float64)
    assert out.shape == want.shape, what
    assert np.isfinite(out).all(), f"{what}: {int((~np.isfinite(out)).sum())} elements not written (poison left) or not finite"
    scale = np.abs(want).max()
    assert scale > 0, f"{what}: reference is all zeros, the check would prove nothing"
    err = np.linalg.norm(out - want) / np.linalg.norm(want)
    worst = np.abs(out - want).max() / scale
    assert err < rel_l2 and worst < max_rel, f"{what}: relative L2 error {err:.2e}, max error {worst:.2e} of max |ref|"


def random_images(rng, n):
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


@pytest.fixture
def model16(rng):
    # scale 0.05 keeps the random net's logits of order 1, so softmax is not saturated
    return deep_mnist(random_deep_mnist_params(rng, scale=0.05), name="random")


@pytest.fixture
def runner16(model16):
    r = backends.prepare(model16, "cuda", "fp16")
    assert isinstance(r, cuda_backend.FusedRunner)
    return r


def poison(r):
    r.feat.fill(np.nan)
    r.hid.fill(np.nan)
    r.probs.fill(np.nan)
    r.labels.fill(-7)
    r.h_probs[:] = np.nan
    r.h_labels[:] = -7
    cp.cuda.Device().synchronize()


# ---------------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("n", [1, 7, 13])
def test_features_small_kernel(rng, model16, runner16, n):
    x = random_images(rng, n)
    out = cp.asnumpy(runner16.features(x, small=True))
    check_close(out, ref_features(model16, scaled(model16, x)[..., None]), f"features_small n={n}")


@pytest.mark.parametrize("n", [1, 7, 530, 1061])
def test_features_persistent_kernel(rng, model16, runner16, n):
    # 530 and 1061: partial last group of 4 and more groups than SMs on most GPUs
    x = random_images(rng, n)
    out = cp.asnumpy(runner16.features(x, small=False))
    check_close(out, ref_features(model16, scaled(model16, x)[..., None]), f"features_persistent n={n}")


@pytest.mark.parametrize("small", [True, False])
def test_features_float_input(rng, model16, runner16, small):
    x = rng.random((9, 28, 28, 1)).astype(np.float32)
    out = cp.asnumpy(runner16.features(x, small=small))
    check_close(out, ref_features(model16, x.astype(np.float64)), f"features float input small={small}")


def test_features_real_images(model16, runner16, mnist_test):
    x = mnist_test[0][:300]
    want = ref_features(model16, scaled(model16, x)[..., None])
    for small in (True, False):
        check_close(cp.asnumpy(runner16.features(x, small=small)), want, f"features real images small={small}")


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_fc2_softmax_kernel(rng, model16, runner16, n):
    f1, f2 = model16.layers[4], model16.layers[5]
    h = rng.standard_normal((n, f1.weight.shape[0])).astype(np.float16)
    probs, labels = runner16.fc2_softmax(h)
    probs, labels = cp.asnumpy(probs), cp.asnumpy(labels)
    x = np.maximum(h.astype(np.float64) + f1.bias.astype(np.float64), 0)
    logits = x @ q16(f2.weight).T + f2.bias
    want = ref.softmax(logits)
    assert np.isfinite(probs).all()
    assert np.abs(probs - want).max() < 1e-4
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(labels[clear], logits.argmax(1)[clear])


# ---------------------------------------------------------------------------------- whole runner


def check_runner(model, r, x, what):
    want = ref.forward(model, scaled(model, x)[..., None] if x.ndim == 3 else scaled(model, x), np.float64)
    poison(r)
    probs = r.probabilities(x)
    assert probs.shape == want.shape and probs.dtype == np.float32
    assert np.isfinite(probs).all(), f"{what}: probabilities not all written"
    diff = np.abs(probs - want).max()
    assert diff < 1e-2, f"{what}: max probability difference {diff:.2e}"
    poison(r)
    labels = r.predict(x)
    assert labels.shape == (len(x),) and (labels >= 0).all(), f"{what}: labels not all written"
    np.testing.assert_array_equal(labels, probs.argmax(1))
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2e-2
    np.testing.assert_array_equal(labels[clear], want.argmax(1)[clear])
    return labels


@pytest.mark.parametrize("n", [1, 7, 16, 17, 64])
def test_runner_random(rng, model16, runner16, n):
    # n <= 16: the latency path (zero-copy input and outputs, fused fc1+fc2); 17, 64: graphs with copies
    check_runner(model16, runner16, random_images(rng, n), f"n={n}")


@pytest.mark.parametrize("n", [1, 3, 200])
def test_runner_same_size_fast_path(rng, model16, runner16, n):
    # a repeated call of the same size skips the lookups: it must still read the new images
    for what in ("probabilities", "predict"):
        for _ in range(3):  # calls 2 and 3 take the fast path
            x = random_images(rng, n)
            want = ref.forward(model16, scaled(model16, x)[..., None], np.float64)
            poison(runner16)
            if what == "probabilities":
                p = runner16.probabilities(x)
                assert np.isfinite(p).all() and np.abs(p - want).max() < 1e-2
            else:
                labels = runner16.predict(x)
                top2 = np.sort(want, axis=1)[:, -2:]
                clear = top2[:, 1] - top2[:, 0] > 2e-2
                assert (labels >= 0).all()
                np.testing.assert_array_equal(labels[clear], want.argmax(1)[clear])


def test_fc12_small_counter_resets(rng, model16, runner16):
    # the last-block counter must be back at zero after every launch, or the next one never finishes fc2
    for _ in range(3):
        check_runner(model16, runner16, random_images(rng, 2), "n=2 repeated")
        assert int(runner16.counter.get()[0]) == 0


@pytest.mark.parametrize("n", [1, 8, 13])
def test_fc1_small_kernel(rng, model16, runner16, n):
    f1 = model16.layers[4]
    feat = (rng.random((n, 3136)) * 2).astype(np.float16)
    got = cp.asnumpy(runner16.fc1_small(feat)).astype(np.float64)
    want = feat.astype(np.float64) @ q16(f1.weight).T
    check_close(got, want, f"fc1_small n={n}")


def test_runner_chunks_on_streams(rng, model16):
    # small chunks so that a modest batch goes through several chunks on 3 streams, with a
    # batch not divisible by the chunk size
    r = cuda_backend.prepare(model16, "fp16", chunk=200, first_chunk=100, streams=3, small_max=32)
    n = 777
    assert len(r.plan(n)) >= 4 and any(cnt % 200 for _, cnt in r.plan(n))
    check_runner(model16, r, random_images(rng, n), "chunked n=777")


@pytest.mark.parametrize("equal", ["", "5"])
def test_runner_pageable_and_pinned_input(rng, model16, monkeypatch, equal):
    # a large input in several chunks on 3 streams, from a pageable array (the driver stages it: our
    # own staging on host threads was slower here, docs/gpu_staging_0252.json) and from pinned memory;
    # CNNRT_CUDA_DM_PAGEABLE_CHUNKS=5 (opt-in): a pageable input in a first chunk and 4 equal ones
    monkeypatch.setenv("CNNRT_CUDA_DM_PAGEABLE_CHUNKS", equal)
    r = cuda_backend.prepare(model16, "fp16", chunk=400, first_chunk=200, streams=3)
    for x in (random_images(rng, 2345), rng.random((1111, 28, 28)).astype(np.float32)):
        assert x.nbytes > r.stage_max_bytes and len(r.plan(len(x))) >= 3 and len(r.plan(len(x), 5)) >= 4
        check_runner(model16, r, x, f"pageable {x.dtype} n={len(x)}")
        xp = cuda_backend.pinned_empty(x.shape, x.dtype)
        xp[...] = x
        check_runner(model16, r, xp, f"pinned {x.dtype} n={len(x)}")


def test_runner_graph_reuse_new_data(rng, model16, runner16):
    # the graphs replay on static buffers: new data of an old size must give new answers
    for n in (1, 7, 1, 300, 7):
        check_runner(model16, runner16, random_images(rng, n), f"replay n={n}")


def test_runner_float_input(rng, model16, runner16):
    x = rng.random((11, 28, 28, 1)).astype(np.float32)
    check_runner(model16, runner16, x, "float input")


def test_runner_empty(runner16):
    assert runner16.predict(np.zeros((0, 28, 28), np.uint8)).shape == (0,)


def test_fp32_generic_path(rng, model16):
    from cnnrt.backends.cuda_graph import GraphRunner

    r = backends.prepare(model16, "cuda", "fp32")
    assert isinstance(r, GraphRunner) and r.precision == "fp32"
    x = random_images(rng, 9)
    want = ref.forward(model16, scaled(model16, x)[..., None], np.float64)
    got = r.probabilities(x)
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_generic_model(rng, precision):
    # a net the fused kernels do not cover: 3 channels, stride 2, VALID padding, odd pool
    model = Model(input_shape=(12, 10, 3), layers=[
        Conv2D("c1", (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
               (rng.standard_normal(8) * 0.1).astype(np.float32), stride=2, padding="valid"),
        MaxPool2D("p1", size=3, stride=2, padding="same"),
        Conv2D("c2", (rng.standard_normal((6, 2, 2, 8)) * 0.3).astype(np.float32),
               (rng.standard_normal(6) * 0.1).astype(np.float32), activation="none"),
        Dense("d1", (rng.standard_normal((5, 36)) * 0.3).astype(np.float32),
              (rng.standard_normal(5) * 0.1).astype(np.float32), activation="none"),
        Softmax(),
    ])
    from cnnrt.backends.cuda_graph import GraphRunner

    r = backends.prepare(model, "cuda", precision)
    assert isinstance(r, GraphRunner)
    x = rng.integers(0, 256, (7, 12, 10, 3), dtype=np.uint8)
    want = ref.forward(model, scaled(model, x), np.float64)
    tol = 1e-4 if precision == "fp32" else 1e-2
    assert np.abs(r.probabilities(x) - want).max() < tol


def test_auto_picks_gpu():
    name, note = backends.resolve("auto")
    assert name == "cuda" and "cuda" in note


# ---------------------------------------------------------------------------------- shipped model, real images

BUNDLE = SHIPPED / "deep_mnist.safetensors"


@pytest.mark.skipif(not BUNDLE.exists(), reason=f"{BUNDLE} not present")
def test_shipped_model_all_test_images(mnist_test):
    from cnnrt.formats import load_model

    from cnnrt.ir.chain import as_chain
    model = as_chain(load_model(BUNDLE))
    x, y = mnist_test
    assert len(x) == 10000
    r = backends.prepare(model, "cuda")
    assert isinstance(r, cuda_backend.FusedRunner) and r.precision == "fp16"
    poison(r)
    probs = r.probabilities(x)
    poison(r)
    labels = r.predict(x)
    np.testing.assert_array_equal(labels, probs.argmax(1))
    xs = scaled(model, x)[..., None]
    want64 = np.concatenate([ref.forward(model, xs[i:i + 2500], np.float64) for i in range(0, 10000, 2500)])
    agree = (labels == want64.argmax(1)).mean()
    diff = np.abs(probs - want64).max()
    acc_gpu = (labels == y).mean()
    want32 = np.concatenate([ref.forward(model, xs[i:i + 2500].astype(np.float32), np.float32)
                             for i in range(0, 10000, 2500)])
    acc_cpu32 = (want32.argmax(1) == y).mean()
    print(f"agreement {agree:.5f}, max prob diff {diff:.2e}, accuracy GPU {acc_gpu:.4f} CPU fp32 {acc_cpu32:.4f}")
    assert agree >= 0.9995, f"argmax agreement with the float64 reference {agree:.5f}"
    assert diff < 1e-2, f"max probability difference {diff:.2e}"
    assert abs(acc_gpu - acc_cpu32) <= 0.0005, f"accuracy {acc_gpu:.4f} vs CPU fp32 {acc_cpu32:.4f}"
    # one image at a time (the latency path) gives the same labels
    for i in (0, 1, 9999):
        assert r.predict(x[i:i + 1])[0] == labels[i]


@pytest.mark.skipif(not BUNDLE.exists(), reason=f"{BUNDLE} not present")
def test_fused_runner_reports_the_batch_size_it_ran(mnist_test):
    """The fused path runs all images in one pipelined call whatever batch_size says; eval reports
    that, not the batch size it was asked for (issue 11, item 8)."""
    import json
    import os
    import subprocess
    import sys

    from cnnrt.formats import load_model
    from conftest import ROOT

    r = backends.prepare(load_model(BUNDLE), "cuda")
    assert isinstance(r, cuda_backend.FusedRunner)
    x = mnist_test[0][:1234]
    r.predict(x, batch_size=7)
    assert r.batch_size_used == 1234
    root = str(ROOT)
    p = subprocess.run([sys.executable, "-m", "cnnrt", "eval", "--backend", "cuda", "--limit", "1234",
                        "--batch-size", "7", "--json"], capture_output=True, text=True, cwd=root,
                       env={**os.environ, "PYTHONPATH": root})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["batch_size"] == 1234 and out["batch_size_requested"] == 7 and out["accuracy"] > 0.98
