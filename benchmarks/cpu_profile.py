"""Where cnnrt's CPU time goes: each compiled step of a zoo model timed on one thread, next to ONNX
Runtime on one thread and on all cores, and cnnrt on all cores.

    PYTHONPATH=. python3 benchmarks/cpu_profile.py resnet20:16 mobilenet_v2_96:4 resnet18:1 [--steps] [--json F]

Per kernel kind: milliseconds, share of the total, and the rate in GFLOP/s (2 per multiply-add) on
one thread; one core's matrix-product rate is printed first as the yardstick.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def best(fn, x, k=5):
    fn(x)
    ts = []
    for _ in range(k):
        t = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t)
    return min(ts)


def main(argv=None):
    from benchmarks.cpu_zoo import cores, images, load, machine, ort_runtime
    from cnnrt.backends.cpu_kernels import BlasThreads
    from cnnrt.backends.numpy_graph import GraphRunner

    p = argparse.ArgumentParser()
    p.add_argument("cases", nargs="+", help="model:images")
    p.add_argument("--steps", action="store_true", help="every step, not only the totals per kernel")
    p.add_argument("--json", default=None, help="write everything printed here as JSON too")
    a = p.parse_args(argv)
    import datetime

    out = {"machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "cases": {}}
    blas = BlasThreads()
    old = blas.set_local(1)
    m = np.random.rand(1024, 1024).astype(np.float32)
    t = best(lambda v: v @ v, m)
    print(f"one core: {2 * 1024 ** 3 / t / 1e9:.1f} GFLOP/s (1024^3 sgemm); {cores()} cores")
    out["sgemm_gflops_one_core"] = 2 * 1024 ** 3 / t / 1e9
    for case in a.cases:
        name, n = case.split(":")
        n = int(n)
        g = load(name)
        x = images(g, n)
        r1 = GraphRunner(g, "fp32", threads=1)
        prof = r1.profile({g.input_name: x}, repeats=5)
        tot = sum(q["seconds"] for q in prof)
        by = collections.defaultdict(lambda: [0.0, 0.0, 0])
        for q in prof:
            k = q["step"].split("+")[0]
            by[k][0] += q["seconds"]
            by[k][1] += q["work"]
            by[k][2] += 1
        blas.set_local(old if old is not None else 0)
        rn = GraphRunner(g, "fp32")
        tn = best(lambda v: rn.run({g.input_name: v}), x)
        o1 = ort_runtime(g, threads=1)
        on = ort_runtime(g)
        t_o1, t_on = best(o1, x), best(on, x)
        blas.set_local(1)
        print(f"\n{name}, {n} images, {g.flops_per_image() / 1e6:.0f} MFLOP each: cnnrt 1 thread {tot * 1e3:.2f} ms "
              f"(steps), all cores {tn * 1e3:.2f} ms; ONNX Runtime 1 thread {t_o1 * 1e3:.2f} ms, "
              f"all cores {t_on * 1e3:.2f} ms")
        for k, (s, w, c) in sorted(by.items(), key=lambda kv: -kv[1][0]):
            rate = f"{2 * w / s / 1e9:6.1f} GFLOP/s" if w else ""
            print(f"  {k:28s} x{c:<3d} {s * 1e3:8.2f} ms {100 * s / tot:5.1f}%  {rate}")
        out["cases"][case] = {
            "mflop_per_image": g.flops_per_image() / 1e6, "cnnrt_1_thread_ms": tot * 1e3, "cnnrt_all_cores_ms": tn * 1e3,
            "ort_1_thread_ms": t_o1 * 1e3, "ort_all_cores_ms": t_on * 1e3,
            "by_kernel": {k: {"ms": s_ * 1e3, "count": c, "gflops": 2 * w / s_ / 1e9 if w else None}
                          for k, (s_, w, c) in by.items()},
            "steps": [{"step": q["step"], "node": q["nodes"][0], "ms": q["seconds"] * 1e3,
                       "gflops": 2 * q["work"] / q["seconds"] / 1e9 if q["work"] else None} for q in prof]}
        if a.steps:
            for q in prof:
                rate = f"{2 * q['work'] / q['seconds'] / 1e9:6.1f} GFLOP/s" if q["work"] else ""
                print(f"    {q['step']:44s} {q['nodes'][0]:12s} {q['seconds'] * 1e3:8.3f} ms {rate}")
        r1.close()
        rn.close()
    if a.json:
        from cnnrt.fileio import write_json

        write_json(a.json, out)


if __name__ == "__main__":
    main()
