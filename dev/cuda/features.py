"""Kernel: uint8 images -> pooled conv2 features (conv1+ReLU+pool+conv2+ReLU+pool), fp16.

Versions, side by side:
  v0  CuPy/cuBLAS, one op at a time (what a framework does without fusion): scale, per-tap
      matmuls for each conv, bias, ReLU, pool as separate passes through device memory, fp16 storage.
  v1  features_persistent_u8 (cnnrt/backends/cuda_kernels/deep_mnist.cu): one block per SM,
      conv2 weights resident in shared memory, groups of 4 images in three phases (images to fp16
      scratch; conv1 on the tensor cores as horizontal pixel pairs; conv2 as an implicit GEMM with
      ldmatrix + mma.sync, a static split of the m-tiles over the warps), pooling on the
      accumulators; only the 7x7x64 result is written. Its first version (a shared job counter,
      dense 14x14 layout with per-tap bounds and swizzle math) is in git history and NOTES.md:
      996 us on an H200 and wrong on the device; this one 551-561 us on an H100.
  v2  features_small_u8: the latency version, 13 blocks per image (one conv2 m-tile each), 8 warps
      splitting conv2's K in two with all their weights loaded up front; best for a handful of images.
"""
from __future__ import annotations

import numpy as np

from common import cpu_features, kernel_report, load_model, mnist_images, rel_err, row, time_events


def v0_cupy(cp, model, xd):
    """v0: the reference algorithms on CuPy arrays (per-tap matrix products; SAME pads, 2x2 pools)."""
    c1, _, c2, _ = model.layers[:4]
    w1, b1 = cp.asarray(c1.weight), cp.asarray(c1.bias)
    w2, b2 = cp.asarray(c2.weight), cp.asarray(c2.bias)

    def q(a):
        return a.astype(cp.float16).astype(cp.float32)

    def conv(x, w, b):
        n, h, wd, c = x.shape
        o, kh, kw, _ = w.shape
        xp = cp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
        out = cp.zeros((n * h * wd, o), cp.float32)
        for i in range(kh):
            for j in range(kw):
                out += cp.ascontiguousarray(xp[:, i:i + h, j:j + wd, :]).reshape(-1, c) @ w[:, i, j, :].T
        return (out + b).reshape(n, h, wd, o)

    def pool(x):
        n, h, wd, c = x.shape
        return x.reshape(n, h // 2, 2, wd // 2, 2, c).max(axis=(2, 4))

    def run():
        h = q(xd.astype(cp.float32) * np.float32(model.input_scale))
        h = q(pool(cp.maximum(conv(h, w1, b1), 0)))
        h = q(pool(cp.maximum(conv(h, w2, b2), 0)))
        return h.reshape(len(h), -1)
    return run


def main(n_time=10000):
    import cupy as cp

    from cnnrt.backends.cuda import P_GROUP, P_SMEM_BYTES, P_THREADS, FusedRunner

    model = load_model()
    r = FusedRunner(model)
    print(f"features: compile+load {r.compile_seconds:.2f} s")
    for name in ("features_persistent_u8", "features_small_u8"):
        print(f"  {name}: {kernel_report(r.k[name])}")
    x_all, _ = mnist_images()
    rng = np.random.default_rng()
    xr = rng.integers(0, 256, (67, 28, 28), dtype=np.uint8)
    for what, x in (("random", xr), ("mnist", x_all[:67])):
        want = cpu_features(model, x)
        xd = cp.asarray(x.reshape(len(x), 28, 28, 1))
        errs = {"v0": rel_err(cp.asnumpy(v0_cupy(cp, model, xd)()), want),
                "v1": rel_err(cp.asnumpy(r.features(x, small=False)), want),
                "v2": rel_err(cp.asnumpy(r.features(x, small=True)), want)}
        print(f"  check vs float64 CPU ({what}, 67 images): " + ", ".join(f"{k} rel err {v:.1e}" for k, v in errs.items()))

    x = np.ascontiguousarray(np.resize(x_all, (n_time, 28, 28)))
    xd = cp.asarray(x.reshape(n_time, 784))
    out = cp.empty(n_time * 3136, cp.float16)
    results = {}

    def launch(n, small):
        args = (xd, np.int32(n), r.scale, r.w1f, r.b1, r.w2, r.b2, out)
        if small:
            return lambda: r.k["features_small_u8"]((13, n), (256,), args)
        grid = min(r.nsm, -(-n // P_GROUP))
        return lambda: r.k["features_persistent_u8"]((grid,), (P_THREADS,), args, shared_mem=P_SMEM_BYTES)

    flops = 2 * (28 * 28 * 32 * 25 + 14 * 14 * 64 * 800)
    results["v0 cupy, 10000"] = time_events(v0_cupy(cp, model, cp.asarray(x.reshape(-1, 28, 28, 1))), reps=10)
    for n in (n_time, 3696, 528, 16):
        results[f"v1 persistent, {n}"] = time_events(launch(n, False))
    for n in (64, 16, 1):
        results[f"v2 small, {n}"] = time_events(launch(n, True))
    print(f"features timings (events, median of 50; {flops / 1e6:.1f} MFLOP per image):")
    for k, v in results.items():
        n = int(k.split(",")[1])
        row(k, v, f"{flops * n / (v[0] * 1e-3) / 1e12:.0f} TFLOP/s")
    return {k: v[0] for k, v in results.items()}


if __name__ == "__main__":
    main()
