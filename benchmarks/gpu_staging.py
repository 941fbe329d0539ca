"""A large batch from an ordinary (pageable) NumPy array, host to host, in one process: cnnrt's
staging on host threads (cnnrt/backends/cuda_staging.py) against the driver's own staging
(CNNRT_CUDA_STAGE=0), against the same images in pinned memory, and against the copy alone.

    PYTHONPATH=. python3 benchmarks/gpu_staging.py --json $OUT/gpu_staging.json [--models deep_mnist,resnet18]

Each mode is timed in turns (round-robin, `--rounds` rounds of `--reps` calls each) so that drift
hits every mode alike; medians. Outputs of every mode are compared with the pinned run's.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_zoo import MODELS, zoo_graph  # noqa: E402
from cnnrt.backends import cuda_staging as STG  # noqa: E402 (no CuPy in it)

DEFAULT_PIECE = STG.PIECE_BYTES

def _mode(threads: int, chunks: int, piece: int | None = None):
    label = f"staged, {threads} threads, {chunks} chunks" + (f", {piece >> 20} MB pieces" if piece else "")
    env = {"CNNRT_CUDA_STAGE": "1", "CNNRT_CUDA_STAGE_THREADS": str(threads), "CNNRT_CUDA_STAGE_CHUNKS": str(chunks)}
    return label, env, piece


# (label, environment, piece bytes or None for the default)
MODES = [("driver (CNNRT_CUDA_STAGE=0)", {"CNNRT_CUDA_STAGE": "0"}, None)]
MODES += [_mode(t, c) for t in (2, 4) for c in (4, 8, 16)] + [_mode(4, 8, 4 << 20)]


def use(env: dict, piece) -> None:
    threads = STG.threads()
    for k, v in env.items():
        os.environ[k] = v
    if STG.threads() != threads:
        STG.shutdown()  # the next stage makes a pool of the new size
    STG.PIECE_BYTES = piece or DEFAULT_PIECE


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args(argv)

    import cupy

    from cnnrt.backends import cuda as cuda_backend

    out = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "device": cuda_backend.device_name(), "host_cpus": os.cpu_count(), "precision": a.precision,
           "what": "host to host, uint8 NHWC images -> float32 outputs; medians in ms", "models": {}}
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in a.models.split(","):
        g, source = zoo_graph(name)
        n = MODELS[name]
        x = rng.integers(0, 256, (n,) + tuple(g.input_shape), dtype=np.uint8)
        xp = cuda_backend.pinned_empty(x.shape, x.dtype)
        xp[...] = x
        r = cuda_backend.prepare(g, a.precision)
        want = r.probabilities(xp).copy()
        dev = cupy.empty(x.shape, x.dtype)

        def pageable_copy():
            dev.set(x)
            cupy.cuda.Device().synchronize()

        def pinned_copy():
            dev.set(xp)
            cupy.cuda.Device().synchronize()

        jobs = [("pinned input", None, None, lambda: r.probabilities(xp)),
                ("pageable copy alone (cupy set)", None, None, pageable_copy),
                ("pinned copy alone (cupy set)", None, None, pinned_copy)]
        jobs += [(label, env, piece, lambda: r.probabilities(x)) for label, env, piece in MODES]
        times = {label: [] for label, *_ in jobs}
        diff = {}
        for label, env, piece, fn in jobs:  # warm up each mode, check its answers
            if env is not None:
                use(env, piece)
            got = fn()
            if got is not None:
                diff[label] = float(np.abs(np.asarray(got) - want).max())
        for _ in range(a.rounds):
            for label, env, piece, fn in jobs:
                if env is not None:
                    use(env, piece)
                fn()
                for _ in range(a.reps):
                    t0 = time.perf_counter()
                    fn()
                    times[label].append(time.perf_counter() - t0)
        use({"CNNRT_CUDA_STAGE": "1"}, None)
        for k in ("CNNRT_CUDA_STAGE_THREADS", "CNNRT_CUDA_STAGE_CHUNKS"):
            os.environ.pop(k, None)
        med = {label: statistics.median(t) * 1e3 for label, t in times.items()}
        entry = {"source": source, "batch": n, "input_mb": x.nbytes / 1e6, "runner": type(r).__name__,
                 "runner_stages_pageable_input": getattr(r, "_stager", None) is not None,
                 "median_ms": med, "max_abs_diff_vs_pinned": diff,
                 "vs_pageable_copy": {k: v / med["pageable copy alone (cupy set)"] for k, v in med.items()}}
        out["models"][name] = entry
        print(f"== {name} x {n} ({x.nbytes / 1e6:.1f} MB, {type(r).__name__}"
              + ("" if entry["runner_stages_pageable_input"] else ", stages nothing: every mode is the driver's copy")
              + ")", flush=True)
        for label, v in med.items():
            d = diff.get(label)
            print(f"   {label:40s} {v:8.3f} ms  {entry['vs_pageable_copy'][label]:5.2f}x the pageable copy"
                  + (f"  max diff vs pinned {d:.1e}" if d is not None and label != "pinned input" else ""), flush=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2))
        os.replace(tmp, path)
        del r, dev, xp
        cupy.get_default_memory_pool().free_all_blocks()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
