"""The whole path, host to host: chunk sizes x streams, single-image latency, pinned vs pageable.

Each configuration is timed with the host clock around runner.predict (what a caller waits for),
median of many runs after warm-up; device-side times (input already on the GPU) with events.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from common import load_model, mnist_images


def wall(fn, reps, warmup=5):
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t) * 1e3


def device_ms(r, n, reps=50):
    import cupy as cp

    from cnnrt.backends.cuda import load_module

    spin = load_module().get_function("spin")
    s0 = r.streams[0]
    for _ in range(5):
        r.run_device(n)
    s0.synchronize()
    t = []
    for _ in range(reps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        with s0:  # the GPU busy while the host enqueues, so the events time the device alone
            spin((1,), (1,), (np.int64(400_000),))
        a.record(s0)
        r.run_device(n)
        b.record(s0)
        b.synchronize()
        t.append(cp.cuda.get_elapsed_time(a, b))
    return statistics.median(t)


def main():
    from cnnrt.backends.cuda import FusedRunner, pinned_empty

    model = load_model()
    x, y = mnist_images()
    xp = pinned_empty(x.shape, np.uint8)
    xp[:] = x
    base = FusedRunner(model)
    q = 4 * base.nsm
    configs = [dict(first_chunk=q // 2, growth=7, streams=3), dict(first_chunk=q, growth=7, streams=3),
               dict(first_chunk=10000, streams=1)]
    print("10,000 images, host to host (ms, median of 30):")
    best = None
    for cfg in configs:
        r = FusedRunner(model, **cfg)
        acc = (r.predict(xp) == y).mean()
        tp = wall(lambda: r.predict(xp), 30)
        tq = wall(lambda: r.predict(x), 10)
        r.device_input(x)
        td = device_ms(r, len(x))
        print(f"  {cfg}: plan {[c for _, c in r.plan(len(x))]}: pinned {tp:.3f}, pageable {tq:.3f}, "
              f"device-only {td:.3f} (accuracy {acc:.4f})")
        if best is None or tp < best[0]:
            best = (tp, cfg)
    print(f"  best: {best}")
    print("one image, host to host (us, median of 500):")
    for sm in (16,):
        r = FusedRunner(model, small_max=sm)
        one = x[:1].copy()
        onep = pinned_empty((1, 28, 28), np.uint8)
        onep[:] = x[:1]
        t1 = wall(lambda: r.predict(one), 500, warmup=50) * 1e3
        t1p = wall(lambda: r.predict(onep), 500, warmup=50) * 1e3
        r.device_input(one)
        td = device_ms(r, 1, reps=200) * 1e3
        print(f"  predict(1 image): {t1:.1f} us (pinned input {t1p:.1f} us); device-side graph {td:.1f} us")
    for n in (7, 16, 17, 64, 256, 1000):
        r = base
        xs = x[:n].copy()
        print(f"  {n} images host to host: {wall(lambda: r.predict(xs), 100) * 1e3:.1f} us")
    return best


if __name__ == "__main__":
    main()
