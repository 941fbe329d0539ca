"""Kernels: fc1 (3136 -> 1024, ReLU) and fc2 + softmax + argmax.

fc1 versions:   v0 cupy.matmul + bias + ReLU as separate passes; v1 cuBLAS gemmEx fp16 in/out,
                fp32 accumulate, bias + ReLU deferred into the fc2 kernel's loads (what cnnrt runs).
fc2 versions:   v0 CuPy ops (bias, ReLU, matmul, softmax, argmax: one pass each); v1 fc2_softmax
                (deep_mnist.cu): one warp per image, everything in registers.
"""
from __future__ import annotations

import numpy as np

from common import kernel_report, load_model, row, time_events


def main(n=10000):
    import cupy as cp

    from cnnrt.backends import reference as ref
    from cnnrt.backends.cuda import FusedRunner

    model = load_model()
    r = FusedRunner(model)
    f1, f2 = model.layers[4], model.layers[5]
    rng = np.random.default_rng()
    feat = cp.asarray((rng.random((n, 3136)) * 2).astype(np.float16))
    hid = cp.empty((n, r.hidden), cp.float16)
    stream = r.streams[0]
    results = {}

    def fc1_v0():
        return cp.maximum(feat @ r.fw1.T + r.fb1.astype(cp.float16), 0)

    def fc1_v1():
        r.fc1(r.handles[0], n, feat.data.ptr, hid.data.ptr)

    fc1_v1()
    stream.synchronize()
    sub = cp.asnumpy(feat[:256]).astype(np.float64)
    want = sub @ f1.weight.astype(np.float16).astype(np.float64).T
    got = cp.asnumpy(hid[:256]).astype(np.float64)
    print(f"fc1 v1 check vs float64 (256 rows): rel err {np.linalg.norm(got - want) / np.linalg.norm(want):.1e}")
    with stream:
        results["fc1 v0 cupy matmul+bias+relu"] = time_events(fc1_v0, stream=stream)
    results["fc1 v1 cublas gemmEx"] = time_events(fc1_v1, stream=stream)

    probs = cp.empty(n * r.classes, cp.float32)
    labels = cp.empty(n, cp.int32)

    def fc2_v0():
        x = cp.maximum(hid.astype(cp.float32) + r.fb1, 0)
        lg = x @ r.fw2.astype(cp.float32).T + r.fb2
        e = cp.exp(lg - lg.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True), lg.argmax(1)

    def fc2_v1():
        with stream:
            r.k["fc2_softmax"]((-(-n // 32),), (256,), (hid, r.fb1, r.fw2, r.fb2, np.int32(n), np.int32(r.hidden),
                                                     np.int32(r.classes), probs, labels))
    p, lab = r.fc2_softmax(hid[:512])
    x = np.maximum(cp.asnumpy(hid[:512]).astype(np.float64) + f1.bias, 0)
    want = ref.softmax(x @ f2.weight.astype(np.float16).astype(np.float64).T + f2.bias)
    print(f"fc2 v1 check vs float64 (512 rows): max abs prob diff {np.abs(cp.asnumpy(p) - want).max():.1e}, "
          f"argmax agree {(cp.asnumpy(lab) == want.argmax(1)).mean():.4f}; {kernel_report(r.k['fc2_softmax'])}")
    with stream:
        results["fc2 v0 cupy ops"] = time_events(fc2_v0, stream=stream)
    results["fc2 v1 fused fc2_softmax"] = time_events(fc2_v1, stream=stream)
    for m in (1, 8):
        f = feat[:m]
        want = cp.asnumpy(f).astype(np.float64) @ f1.weight.astype(np.float16).astype(np.float64).T
        got = cp.asnumpy(r.fc1_small(f)).astype(np.float64)
        print(f"fc1_small check, {m} images: rel err {np.linalg.norm(got - want) / np.linalg.norm(want):.1e}")
        h_m = cp.empty((m, r.hidden), cp.float16)

        def small(m=m, f=f, h_m=h_m):
            with stream:
                r.k["fc1_small"]((-(-r.hidden // 8),), (256,), (f, r.fw1, np.int32(m), np.int32(3136), np.int32(r.hidden), h_m))

        def blas(m=m, f=f, h_m=h_m):
            r.fc1(r.handles[0], m, f.data.ptr, h_m.data.ptr)
        results[f"fc1 small-batch kernel, {m}"] = time_events(small, stream=stream)
        results[f"fc1 cublas, {m}"] = time_events(blas, stream=stream)
    print(f"fc timings, {n} images unless noted (events, median of 50):")
    for k, v in results.items():
        row(k, v)
    return {k: v[0] for k, v in results.items()}


if __name__ == "__main__":
    main()
