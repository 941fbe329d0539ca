"""Per-kernel versions of the CPU path side by side, each checked against float64, with timings.

Like llm.c's dev/cuda: every version of a kernel stays here, runs on the same inputs in the same
process, is checked against the float64 reference before it is timed, and is timed as the median
of several runs (the machine is shared: compare versions within one run, not across runs).

    .venv/bin/python bench/cpu_kernels.py                 # all kernels, chunk 64 images
    .venv/bin/python bench/cpu_kernels.py conv2 -n 16 32  # one kernel, several chunk sizes
    .venv/bin/python bench/cpu_kernels.py net --images 10000
    .venv/bin/python bench/cpu_kernels.py points          # Winograd point-set search, F(2x2,5x5)
    .venv/bin/python bench/cpu_kernels.py stages          # per-stage times, single images, CPU per image
    .venv/bin/python bench/cpu_kernels.py profile         # pyinstrument: where the time goes
    .venv/bin/python bench/cpu_kernels.py golden --seeds 20  # conv2 variants against TensorFlow (slow)

Times are per image (microseconds), for one thread unless the row says otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnrt.backends import reference as R  # noqa: E402
from cnnrt.backends.cpu_kernels import Im2colConv, Scratch, WinogradConv  # noqa: E402
from cnnrt.model import MaxPool2D  # noqa: E402
from numpy.lib.stride_tricks import as_strided  # noqa: E402


def timeit(f, repeat=7, min_time=0.05):
    f()  # warm-up (allocates buffers)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_time / 5 or reps < 1:
        f()
        reps += 1
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        ts.append((time.perf_counter() - t0) / reps)
    return float(np.median(ts)), float(np.min(ts))


def rel(a, ref):
    return float(np.linalg.norm(a.astype(np.float64) - ref) / np.linalg.norm(ref))


def row(name, n, t, err, flops=None):
    med, best = t
    rate = f"{flops * n / med / 1e9:7.1f} GFLOP/s" if flops else " " * 15
    print(f"  {name:<34} {med / n * 1e6:9.1f} us/img (best {best / n * 1e6:8.1f})  {rate}  rel.err {err:.1e}")


def conv_case(name, rng, n, h, c, o, k, versions):
    pool = MaxPool2D("p")
    x = rng.random((n, h, h, c)).astype(np.float32)
    w = (rng.standard_normal((o, k, k, c)) / np.sqrt(k * k * c)).astype(np.float32)
    b = (rng.standard_normal(o) * 0.1).astype(np.float32)
    ref = R.maxpool2d(R.relu(R.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))))
    flops = 2 * h * h * o * k * k * c
    print(f"{name}: {h}x{h}x{c} -> {k}x{k}x{o} + bias + ReLU + 2x2 pool, chunk {n} images, {flops / 1e6:.2f} MFLOP/img")
    for vname, make in versions:
        f = make(x, w, b, pool)
        out = f()
        row(vname, n, timeit(f), rel(out, ref), flops)


def conv_versions(h, c):
    def reference_fp32(x, w, b, pool):
        return lambda: R.maxpool2d(R.relu(R.conv2d(x, w, b)))

    def kernel(cls, **kw):
        def make(x, w, b, pool):
            k, s = cls((h, h, c), w, b, pool=pool, **kw), Scratch()
            if not k.pool:
                return lambda: R.maxpool2d(k(x, s))
            return lambda: k(x, s)
        return make

    return [("v0 reference (fp32, 25 shifted GEMMs)", reference_fp32),
            ("v1 im2col GEMM, pool-first fused", kernel(Im2colConv)),
            ("v2 Winograd F(2x2,5x5) pts 0,+-1,+-2", kernel(WinogradConv, m=2, points=(0, 1, -1, 2, -2))),
            ("v3 Winograd F(2x2,5x5) pts 0,+-3/2,+-2/3", kernel(WinogradConv, m=2)),
            ("v4 Winograd F(3x3,5x5), unfused pool", kernel(WinogradConv, m=3)),
            ("v5 Winograd F(4x4,5x5), fused", kernel(WinogradConv, m=4))]


def dense_case(rng, n):
    # inputs as sparse as the trained Deep MNIST's after pool2: 11.5% non-zero per image, a quarter
    # of the features never non-zero (measured on the MNIST test set)
    x = np.maximum(rng.standard_normal((n, 3136)) - 1.2, 0).astype(np.float32)
    x[:, rng.random(3136) < 0.25] = 0
    w = (rng.standard_normal((1024, 3136)) / 56).astype(np.float32)
    b = rng.standard_normal(1024).astype(np.float32)
    ref = R.relu(R.dense(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)))
    wt = np.ascontiguousarray(w.T)
    y = np.empty((n, 1024), np.float32)

    def v1():
        np.matmul(x, wt, out=y)
        np.add(y, b, out=y)
        np.maximum(y, 0, out=y)
        return y

    def v0():
        return R.relu(R.dense(x, w, b))

    def v2():
        nz = x.any(axis=0).nonzero()[0]
        np.matmul(x[:, nz], wt[nz], out=y)
        np.add(y, b, out=y)
        np.maximum(y, 0, out=y)
        return y
    flops = 2 * 3136 * 1024
    print(f"fc1: 3136 -> 1024 + bias + ReLU, chunk {n} images, {flops / 1e6:.2f} MFLOP/img")
    row("v0 reference (x @ w.T)", n, timeit(v0), rel(v0(), ref), flops)
    row("v1 pre-transposed, in place", n, timeit(v1), rel(v1(), ref), flops)
    row("v2 skip all-zero input rows", n, timeit(v2), rel(v2(), ref), flops)


def net_case(images, reps):
    from cnnrt.backends import numpy_backend
    from cnnrt.formats import load_model
    from cnnrt.idx import load_mnist
    root = Path(__file__).resolve().parent.parent
    path = root / "models" / "deep_mnist" / "deep_mnist.safetensors"
    if path.exists():
        model = load_model(path)
    else:
        sys.path.insert(0, str(root / "tests"))
        from conftest import random_deep_mnist_params
        from cnnrt.model import deep_mnist
        model = deep_mnist(random_deep_mnist_params(np.random.default_rng(0)), name="random")
        print("(no trained model yet: random weights)")
    x, _ = load_mnist(root / "data/mnist/t10k-images-idx3-ubyte.gz", root / "data/mnist/t10k-labels-idx1-ubyte.gz")
    x = x[:images]
    print(f"whole net, {len(x)} MNIST test images, {model.flops_per_image() / 1e6:.1f} MFLOP/img")
    from cnnrt.model import Model, Softmax
    logits_model = Model(model.input_shape, [l for l in model.layers if not isinstance(l, Softmax)],
                         model.input_scale, model.name)
    xs = x[..., None].astype(np.float64) * model.input_scale
    ref = R.forward(logits_model, xs)
    ref16 = R.forward(logits_model, xs.astype(np.float32), dtype=np.float32, fp16_storage=True)
    for prec in ("fp32", "fp16"):
        r = numpy_backend.prepare(model, prec)
        t = timeit(lambda: r.probabilities(x), repeat=reps, min_time=0)
        lg = numpy_backend.prepare(logits_model, prec).probabilities(x)
        extra = (f", vs reference fp16 storage {rel(lg, ref16):.1e} (that reference itself vs float64:"
                 f" {rel(ref16, ref):.1e})") if prec == "fp16" else ""
        print(f"  numpy backend {prec}: {t[0]:.3f} s (best {t[1]:.3f}); logits rel. err vs float64 {rel(lg, ref):.1e}"
              f"{extra}; argmax agrees with float64 on {int((lg.argmax(1) == ref.argmax(1)).sum())}/{len(x)}")
        ts = []
        for i in range(max(reps, 200)):  # a different image each call, as a server sees them
            one = x[i % len(x):i % len(x) + 1]
            t0 = time.perf_counter()
            r.probabilities(one, batch_size=1)
            ts.append(time.perf_counter() - t0)
        print(f"  numpy backend {prec}, one image: {np.median(ts) * 1e3:.3f} ms median of {len(ts)} calls")


def _trained_or_random():
    from cnnrt.formats import load_model
    from cnnrt.idx import load_mnist
    root = Path(__file__).resolve().parent.parent
    path = root / "models" / "deep_mnist" / "deep_mnist.safetensors"
    model = load_model(path)
    x, _ = load_mnist(root / "data/mnist/t10k-images-idx3-ubyte.gz", root / "data/mnist/t10k-labels-idx1-ubyte.gz")
    return model, x


def profile_case(images):
    """Where the time goes, by pyinstrument (pip install pyinstrument): the whole net on one thread
    (the per-image work is the same on each of the backend's threads, and pyinstrument samples
    one thread), then single-image calls."""
    from pyinstrument import Profiler

    from cnnrt.backends import numpy_backend
    model, x = _trained_or_random()
    r = numpy_backend.NumpyRunner(model, "fp32", threads=1)
    r.probabilities(x[:500])
    for what, f in ((f"{images} images, one thread", lambda: r.probabilities(x[:images])),
                    (f"{images} single-image calls", lambda: [r.probabilities(x[i:i + 1], batch_size=1)
                                                             for i in range(images)])):
        p = Profiler(interval=0.0002)
        p.start()
        f()
        p.stop()
        print(f"--- {what}")
        print(p.output_text(unicode=False, color=False, show_all=False))


def golden_case(seeds):
    """How close each conv2 variant keeps the whole net to TensorFlow, as tests/test_golden_tensorflow.py
    checks it (max |p - p_tf| < 1e-5 over 2,000 images, random Keras models): the max difference
    per seed and how often it exceeds the bound. Needs TensorFlow."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from cnnrt.backends import numpy_backend
    from cnnrt.importers.keras import from_keras
    from cnnrt.train import build_keras_deep_mnist
    _, x = _trained_or_random()
    x = x[:2000]
    variants = {"reference fp32": None, "F(2x2) 0,+-3/2,+-2/3 (default)": (2, None),
                "F(2x2) 0,+-1,+-2": (2, (0, 1, -1, 2, -2)), "F(4x4) 0,+-1,+-2,+-1/2": (4, None)}
    worst = {k: [] for k in variants}
    orig_m, orig_kernel = numpy_backend.WINOGRAD_M, numpy_backend._conv_kernel
    for seed in seeds:
        km = build_keras_deep_mnist(seed)
        rng = np.random.default_rng(seed)
        km.set_weights([w + rng.standard_normal(w.shape).astype(np.float32) * 0.05 for w in km.get_weights()])
        p_tf = km.predict(x[..., None].astype(np.float32) / 255.0, batch_size=500, verbose=0)
        model = from_keras(km)
        for name, v in variants.items():
            if v is None:
                p = R.forward(model, x[..., None].astype(np.float32) / np.float32(255), dtype=np.float32)
            else:
                m, pts = v

                def kernel(layer, shape, pool, fp16, m=m, pts=pts):
                    k = orig_kernel(layer, shape, pool, fp16)
                    if isinstance(k, WinogradConv):
                        k = WinogradConv(shape, layer.weight, layer.bias, layer.padding, layer.activation, pool,
                                         fp16, m=m, points=pts)
                    return k
                numpy_backend._conv_kernel = kernel
                try:
                    p = numpy_backend.prepare(model, "fp32").probabilities(x)
                finally:
                    numpy_backend._conv_kernel = orig_kernel
            worst[name].append(float(np.abs(p - p_tf).max()))
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1]:.2e}" for k, v in worst.items()), flush=True)
    numpy_backend.WINOGRAD_M = orig_m
    print(f"max |p - p_tf| over 2,000 images, {len(seeds)} random Keras models:")
    for k, v in worst.items():
        v = np.array(v)
        print(f"  {k:<32} median {np.median(v):.2e}  max {v.max():.2e}  above 1e-5: {int((v >= 1e-5).sum())}/{len(v)}")


def stages_case(images):
    """Per-stage times of the trained net: one chunk on one thread, single images (a different image
    each call), the Winograd conv2 step by step, CPU per image with 2 threads, a thread hand-off."""
    from concurrent.futures import ThreadPoolExecutor

    from cnnrt.backends import numpy_backend
    from cnnrt.backends.cpu_kernels import BlasThreads
    model, x = _trained_or_random()
    blas = BlasThreads()

    def med(f, k=21):
        f()
        ts = []
        for _ in range(k):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    # one chunk of 256 on this thread, BLAS on this thread
    blas.set_local(1)
    r = numpy_backend.NumpyRunner(model, "fp32", threads=1)
    s, n, sub = r._scratch(), 256, r.sub
    out = np.empty((n, 10), np.float32)
    t_all = med(lambda: r._chunk(x[:n], out), 7)
    (c1, c2), (d1, d2) = r.front, r.back[:2]
    a1, a2, xin = c1.target(s, sub), c2.target(s, sub), d1.target(s, n)
    r.input(x[:sub], a1)
    print(f"one thread, chunk {n} (conv layers per {sub} images), us per image:")
    print(f"  whole chunk {t_all / n * 1e6:.0f}: conv1 {med(lambda: c1(a1, s, a2)) / sub * 1e6:.0f}, "
          f"conv2 {med(lambda: c2(a2, s, xin[:sub])) / sub * 1e6:.0f}, "
          f"fc1 {med(lambda: d1(xin, s, None), 7) / n * 1e6:.0f}")
    # conv2 step by step
    k, xp = c2.k, c2.k.padded_input(s, sub)
    a, m, c, o, t = k.a, k.m, k.c, k.o, sub * k.th * k.tw
    st = xp.strides
    shape = (a, a, sub, k.th, k.tw, c)
    d = s.get((k.key, "d"), (a, a * t * c))
    v1 = s.get((k.key, "v1"), (a, a * t * c))
    mm = s.get((k.key, "m"), (a * a, t, o))
    y1 = s.get((k.key, "y1"), (m, a * t * o))
    y = s.get((k.key, "y"), (m, m, t * o))
    x3, y3 = t * c, t * o
    v2 = np.empty_like(d)  # (the backend reuses d; here d keeps the tiles so every step can repeat)
    steps = {
        "gather tiles": lambda: np.copyto(d.reshape(shape), as_strided(xp, shape, (st[1], st[2], st[0], m * st[1], m * st[2], st[3]))),
        "input transform": lambda: (np.matmul(k.bt, d.reshape(a, a, x3).transpose(1, 0, 2), out=v1.reshape(a, a, x3).transpose(1, 0, 2)),
                                    np.matmul(k.bt, v1.reshape(a, a, x3), out=v2.reshape(a, a, x3))),
        "36 GEMMs": lambda: np.matmul(d.reshape(a * a, t, c), k.u, out=mm),
        "output transform": lambda: (np.matmul(k.at, mm.reshape(a, a, y3).transpose(1, 0, 2), out=y1.reshape(m, a, y3).transpose(1, 0, 2)),
                                     np.matmul(k.at, y1.reshape(m, a, y3), out=y)),
    }
    print(f"  conv2 (Winograd F({m}x{m},5x5)) steps: " + ", ".join(f"{name} {med(f) / sub * 1e6:.0f}" for name, f in steps.items()))
    # single images, a different one each call
    blas.set_local(0)
    r = numpy_backend.NumpyRunner(model, "fp32")
    s = r._scratch()
    (c1, c2), (d1, d2, sm) = r.front, r.back
    names = ["input", "conv1", "conv2", "fc1", "fc2", "softmax", "call"]
    times = {k: [] for k in names}
    o1 = np.empty((1, 10), np.float32)
    for i in range(images):
        one = x[i:i + 1]
        t0 = time.perf_counter()
        a1, a2, a3, h = c1.target(s, 1), c2.target(s, 1), d1.target(s, 1), d2.target(s, 1)
        r.input(one, a1)
        t1 = time.perf_counter()
        c1(a1, s, a2)
        t2 = time.perf_counter()
        c2(a2, s, a3)
        t3 = time.perf_counter()
        d1(a3, s, h)
        t4 = time.perf_counter()
        z = d2(h, s, None)
        t5 = time.perf_counter()
        sm(z, s, o1)
        t6 = time.perf_counter()
        r.probabilities(x[i + 1:i + 2], batch_size=1)
        t7 = time.perf_counter()
        for k_, (u, v) in zip(names, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6), (t6, t7)]):
            times[k_].append(v - u)
    print(f"single images ({images} calls, a different image each), median us: "
          + ", ".join(f"{k_} {np.median(v) * 1e6:.0f}" for k_, v in times.items()))
    xin = np.empty((64, 3136), np.float32)
    for i in range(0, 64, 8):
        r._run_stages(r.front, (lambda a: (r.input(x[i:i + 8], a), a)[1])(c1.target(s, 8)), s, 8,
                      xin[i:i + 8].reshape(8, 7, 7, 64))
    y1 = np.empty((1, 1024), np.float32)
    dense_ts = []
    for i in range(64):
        t0 = time.perf_counter()
        np.matmul(xin[i:i + 1], d1.wt, out=y1)
        dense_ts.append(time.perf_counter() - t0)
    print(f"  fc1 as one dense GEMV (OpenBLAS's own threads): {np.median(dense_ts) * 1e6:.0f} us")
    # two threads: CPU per image
    r = numpy_backend.prepare(model, "fp32")
    r.probabilities(x[:1000])
    for _ in range(3):
        c0, t0 = os.times(), time.perf_counter()
        r.probabilities(x)
        wall, c1_ = time.perf_counter() - t0, os.times()
        cpu = (c1_.user + c1_.system) - (c0.user + c0.system)
        print(f"2 threads, {len(x)} images: {wall:.3f} s wall, {cpu / len(x) * 1e6:.0f} us CPU per image")
    ex = ThreadPoolExecutor(1)
    ex.submit(int).result()
    print(f"a thread hand-off (submit + result of an empty task): {med(lambda: ex.submit(int).result(), 501) * 1e6:.0f} us")


def points_case(m, r, trials):
    """Winograd F(m, r) fp32 error against float64 for sets of interpolation points (small
    rationals), on ReLU-like inputs with 32 channels: the search behind cpu_kernels.POINTS."""
    import itertools
    from fractions import Fraction as Fr

    from cnnrt.backends.cpu_kernels import POINTS, winograd_matrices
    rng = np.random.default_rng(0)
    a, f = m + r - 1, np.float32
    d = rng.random((trials, a, a, 32))
    g = rng.standard_normal((64, r, r, 32)) * 0.05
    d, g = d.astype(f).astype(np.float64), g.astype(f).astype(np.float64)
    ref = np.stack([np.einsum("tabc,oabc->to", d[:, i:i + r, j:j + r], g) for i in range(m) for j in range(m)], 1)

    def err(pts):
        at, gg, bt = (t.astype(f) for t in winograd_matrices(m, r, pts, integer=True))
        u = np.einsum("xa,oabc,yb->xyco", winograd_matrices(m, r, pts, integer=True)[1], g,
                      winograd_matrices(m, r, pts, integer=True)[1]).astype(f)
        v = np.einsum("xa,tabc,yb->txyc", bt, d.astype(f), bt).astype(f)
        mm = np.einsum("txyc,xyco->txyo", v, u).astype(f)
        y = np.einsum("ix,txyo,jy->tijo", at, mm, at).reshape(len(d), m * m, -1)
        return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))

    cands = [Fr(1), Fr(-1), Fr(2), Fr(-2), Fr(1, 2), Fr(-1, 2), Fr(3, 2), Fr(-3, 2), Fr(2, 3), Fr(-2, 3), Fr(3), Fr(-3)]
    res = []
    for combo in itertools.combinations(cands, a - 2):
        try:
            res.append((err((0,) + combo), (0,) + combo))
        except ValueError:
            pass
    res.sort(key=lambda t: t[0])
    print(f"Winograd F({m}x{m},{r}x{r}) fp32 relative error vs float64, {len(res)} point sets, {trials} tiles:")
    for e, p in res[:5]:
        print(f"  {e:.2e}  points {', '.join(str(v) for v in p)}")
    if (m, r) in POINTS:
        print(f"  {err(POINTS[(m, r)]):.2e}  cpu_kernels.POINTS[{(m, r)}]")
    print(f"  {err((0, 1, -1, 2, -2)):.2e}  the usual 0, 1, -1, 2, -2")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default=["conv1", "conv2", "fc1"], help="conv1 conv2 fc1 net stages points profile golden")
    ap.add_argument("-n", type=int, nargs="+", default=[64], help="chunk sizes (images)")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=20, help="golden: how many random Keras models")
    ap.add_argument("--seed0", type=int, default=300, help="golden: the first seed")
    ap.add_argument("--blas-threads", type=int, default=1, help="OpenBLAS threads for the kernels (default 1)")
    a = ap.parse_args()
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    from cnnrt.backends.cpu_kernels import BlasThreads
    blas = BlasThreads()
    if a.blas_threads is not None and blas.available:
        blas.set_local(a.blas_threads)
    print(f"BLAS threads for this thread: {a.blas_threads if blas.available else 'cannot set'}")
    rng = np.random.default_rng()
    for what in a.what:
        if what == "net":
            if blas.available:
                blas.set_local(0)  # the backend as a user runs it: it manages BLAS threads itself
            net_case(a.images, a.reps)
            continue
        if what == "profile":
            profile_case(min(a.images, 2000))
            continue
        if what == "stages":
            stages_case(min(a.images, 1000))
            continue
        if what == "golden":
            golden_case(range(a.seed0, a.seed0 + a.seeds))
            continue
        if what == "points":
            points_case(2, 5, 400)
            continue
        for n in a.n:
            if what == "conv1":
                conv_case("conv1", rng, n, 28, 1, 32, 5, conv_versions(28, 1)[:2] + conv_versions(28, 1)[3:4])
            elif what == "conv2":
                conv_case("conv2", rng, n, 14, 32, 64, 5, conv_versions(14, 32))
            elif what == "fc1":
                dense_case(rng, n)


if __name__ == "__main__":
    main()
