"""Shared bits of the per-kernel harnesses (llm.c dev/cuda style): model, inputs, CPU reference,
event timing. Run from the repository root: PYTHONPATH=. python3 dev/cuda/<kernel>.py"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cnnrt.backends import reference as ref  # noqa: E402
from cnnrt.model import deep_mnist  # noqa: E402

BUNDLE = ROOT / "models" / "deep_mnist" / "deep_mnist.safetensors"


def load_model():
    """The shipped Deep MNIST as the layer chain the fused kernels take (the bundle loads as a Graph)."""
    from cnnrt.formats import load_model
    from cnnrt.ir.chain import match

    if BUNDLE.exists():
        m = load_model(BUNDLE)
        return match(m) if hasattr(m, "nodes") else m
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import random_deep_mnist_params

    return deep_mnist(random_deep_mnist_params(np.random.default_rng(), 0.05), name="random")


def mnist_images():
    from cnnrt.idx import load_mnist

    d = ROOT / "data" / "mnist"
    return load_mnist(d / "t10k-images-idx3-ubyte.gz", d / "t10k-labels-idx1-ubyte.gz")


def q16(a):
    return np.asarray(a, np.float64).astype(np.float16).astype(np.float64)


def cpu_features(model, x_u8):
    """float64 reference of conv1 -> relu -> pool -> conv2 -> relu -> pool, fp16 storage."""
    c1, _, c2, _ = model.layers[:4]
    h = q16(x_u8.reshape(-1, 28, 28, 1).astype(np.float64) * model.input_scale)
    h = q16(ref.maxpool2d(ref.relu(ref.conv2d(h, q16(c1.weight), q16(c1.bias)))))
    h = q16(ref.maxpool2d(ref.relu(ref.conv2d(h, q16(c2.weight), q16(c2.bias)))))
    return h.reshape(len(h), -1)


def rel_err(out, want):
    out = np.asarray(out, np.float64)
    if not np.isfinite(out).all():
        return float("inf")
    return float(np.linalg.norm(out - want) / np.linalg.norm(want))


def time_events(fn, reps=50, warmup=5, stream=None):
    """Median milliseconds of fn() between two events on `stream` (default: current)."""
    import cupy as cp

    s = stream or cp.cuda.get_current_stream()
    for _ in range(warmup):
        fn()
    s.synchronize()
    times = []
    for _ in range(reps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record(s)
        fn()
        b.record(s)
        b.synchronize()
        times.append(cp.cuda.get_elapsed_time(a, b))
    return statistics.median(times), min(times), max(times)


def kernel_report(k):
    a = k.attributes
    return f"regs {a.get('num_regs')}, local {a.get('local_size_bytes')} B, static smem {a.get('shared_size_bytes')} B"


def row(name, ms, note=""):
    print(f"  {name:<34} {ms[0] * 1e3:10.1f} us  (min {ms[1] * 1e3:.1f}, max {ms[2] * 1e3:.1f})  {note}")
