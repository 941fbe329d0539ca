"""How cnnrt's CPU path uses the cores: one image at 1..N threads beside ONNX Runtime, the time of
each step of the compiled programs at N threads, and a batch in calls of several sizes.

    PYTHONPATH=. python3 benchmarks/cpu_threads.py --one deep_mnist resnet18 --calls deep_mnist:10000:10000,1000 \
        [--threads 1,2,4,8,16] [--json F]

Medians. One image: `--reps` calls after a warm-up, each runtime in turn in this process (the
other's threads idle). Steps: the C programs' per-step wall time (from one barrier to the next,
`cnnrt_program_profile` in kernels.c) averaged over the calls, with the step's kernel label.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def median_call(fn, x, reps):
    for _ in range(5):
        fn(x)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def step_profile(r, g, x, reps):
    """(label, microseconds per call) for each step of the compiled programs of one call."""
    lib = r._lib
    if lib is None or not hasattr(lib, "cnnrt_program_profile"):
        return []
    r.run({g.input_name: x})
    segs = r._cached_program((len(x), r.threads), r._scratch()) or []
    labels = [lab for sg in segs if sg[0] == "c" for lab in sg[5]]
    if not labels:
        return []
    buf = (ctypes.c_long * 4096)()
    out = []
    for sg in segs:  # one buffer per program segment: the counters are per step of one program
        if sg[0] != "c":
            out.append((f"(python) {sg[1].label}", None))
            continue
        for _ in range(10):  # warm: the workers awake
            lib.cnnrt_run_program(sg[1], sg[2], sg[3], r.threads)
        for i in range(len(buf)):
            buf[i] = 0
        lib.cnnrt_program_profile(ctypes.addressof(buf), len(sg[5]))
        try:
            for _ in range(reps):
                lib.cnnrt_run_program(sg[1], sg[2], sg[3], r.threads)
        finally:
            lib.cnnrt_program_profile(None, 0)
        out += [(lab, buf[i] / reps / 1e3) for i, lab in enumerate(sg[5])]
    return out


def main(argv=None):
    from benchmarks.cpu_zoo import cores, images, load, machine, ort_runtime
    from cnnrt.backends.numpy_graph import GraphRunner

    p = argparse.ArgumentParser()
    p.add_argument("--one", nargs="*", default=[], help="models: one image at each thread count")
    p.add_argument("--calls", nargs="*", default=[], help="model:images:per-call,per-call,...")
    p.add_argument("--threads", default=None, help="thread counts (default 1,2,4,8,...,all cores)")
    p.add_argument("--reps", type=int, default=300)
    p.add_argument("--variants", action="store_true", help="--calls also with big Dense steps not skipping zero inputs")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    n_cores = cores()
    ts = [int(t) for t in a.threads.split(",")] if a.threads else sorted(
        {1, n_cores, *[t for t in (2, 4, 8, 12) if t < n_cores]})
    out = {"machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "one_image": {}, "steps": {}, "calls": {}}
    print(f"{out['machine']['cpu']}, {n_cores} cores; {out['date']}")
    for name in a.one:
        g = load(name)
        x = images(g, 1)
        rows = out["one_image"][name] = []
        print(f"\n{name}, one image: threads, cnnrt ms, ONNX Runtime ms, ratio")
        for t in ts:
            r = GraphRunner(g, "fp32", threads=t)
            tc = median_call(lambda v: r.run({g.input_name: v}), x, a.reps)
            # (before ONNX Runtime runs: its idle threads spin for a while and take cores)
            steps = step_profile(r, g, x, a.reps) if t == ts[-1] else None
            r.close()
            o = ort_runtime(g, threads=t)
            to = median_call(o, x, a.reps)
            del o
            rows.append({"threads": t, "cnnrt_ms": tc * 1e3, "ort_ms": to * 1e3})
            print(f"  {t:3d} {tc * 1e3:8.3f} {to * 1e3:8.3f} {tc / to:6.2f}x")
            if steps is not None:
                out["steps"][name] = [{"step": s, "us": u} for s, u in steps]
                tot = sum(u for _, u in steps if u)
                print(f"  steps at {t} threads (C programs, {tot:.1f} us of {tc * 1e6:.1f} us per call):")
                for s, u in steps:
                    print(f"    {s:60s} {'' if u is None else f'{u:8.1f} us'}")
    for spec in a.calls:
        name, n, pers = spec.split(":")
        n = int(n)
        g = load(name)
        x = images(g, n)
        r = GraphRunner(g, "fp32")
        o = ort_runtime(g)
        rows = out["calls"][name] = []
        print(f"\n{name}, {n} images at {r.threads} threads, in calls of: cnnrt s, ONNX Runtime s (median of 5)")
        dense = [st for st in r.plan.steps if getattr(st, "sparse", False)]
        plan = [(int(v), "") for v in pers.split(",")]
        if dense and a.variants:  # the same call sizes with every Dense multiplying all its weight rows
            plan += [(per, "no-skip") for per, _ in plan]
        for per, variant in plan:
            for st in dense:
                st.sparse = variant != "no-skip"

            def rc(v, per=per):
                for i in range(0, len(v), per):
                    r.run({g.input_name: v[i:i + per]})

            def ro(v, per=per):
                for i in range(0, len(v), per):
                    o(v[i:i + per])
            tc = median_call(rc, x, 5)
            to = median_call(ro, x, 5)
            rows.append({"per_call": per, "variant": variant, "cnnrt_s": tc, "ort_s": to,
                         "images_per_chunk": r.batch_size_used})
            print(f"  {per:6d} {tc:8.4f} {to:8.4f} {tc / to:6.2f}x  (cnnrt chunks of {r.batch_size_used}) {variant}")
        r.close()
    if a.json:
        from cnnrt.fileio import write_json

        write_json(a.json, out)


if __name__ == "__main__":
    main()
