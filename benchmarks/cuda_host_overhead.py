"""The generic CUDA runner's host time for one image, without a GPU: the runner on the CPU fake of
CuPy (cnnrt/testing/fake_cupy.py) with its graph launches made no-ops, so what is timed is the
Python a batch-1 call runs (checks, plan and graph lookups, the copy into the pinned buffer, the
outputs) and nothing on a device. With --ab, the same with cuda_plan.prod on np.prod, as it was
before 2026-11-29 (A/B in one process).

    PYTHONPATH=. python3 benchmarks/cuda_host_overhead.py --json docs/cuda_host_overhead.json --ab
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class _Patch:
    """Just enough of pytest's monkeypatch for fake_cupy.install."""

    def setitem(self, d, k, v):
        d[k] = v

    def setattr(self, o, name, v):
        setattr(o, name, v)


def _np_prod(s) -> int:
    return int(np.prod(s, dtype=np.int64)) if len(s) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--models", default="lenet5,resnet20,mobilenet_v2,resnet18")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ab", action="store_true", help="also time cuda_plan.prod on np.prod")
    a = ap.parse_args(argv)

    from cnnrt.testing import fake_cupy
    from cnnrt.testing import graphs as TG

    fake_cupy.install(_Patch())
    from cnnrt.backends import cuda as cuda_backend
    from cnnrt.backends import cuda_graph, cuda_plan

    fast_prod = cuda_plan.prod
    variants = [("math.prod (now)", fast_prod)] + ([("np.prod (before)", _np_prod)] if a.ab else [])
    out = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "what": "us of host time per batch-1 probabilities() call, uint8 input, fp16 plan, graph launch a no-op "
                   "(the CPU fake of CuPy); median of rounds",
           "models": {}}
    for name in a.models.split(","):
        kw = {"size": 96} if name == "mobilenet_v2" else {}
        g = TG.ZOO[name](0, **kw)
        r = cuda_backend.prepare(g, "fp16")
        x = np.random.default_rng(0).integers(0, 256, (1,) + g.input_shape, dtype=np.uint8)
        r.probabilities(x)  # plans, binds, captures (the fake records the launches)
        r.probabilities(x)
        saved = fake_cupy.Graph.launch
        fake_cupy.Graph.launch = lambda self, stream: None
        res = {}
        try:
            times = {label: [] for label, _ in variants}
            for _ in range(a.rounds):
                for label, fn in variants:  # in turns, so drift hits both
                    cuda_plan.prod = fn
                    cuda_graph.prod = fn
                    for _ in range(100):
                        r.probabilities(x)
                    t0 = time.perf_counter()
                    for _ in range(a.calls):
                        r.probabilities(x)
                    times[label].append((time.perf_counter() - t0) / a.calls * 1e6)
            res = {label: statistics.median(t) for label, t in times.items()}
        finally:
            fake_cupy.Graph.launch = saved
            cuda_plan.prod = cuda_graph.prod = fast_prod
        out["models"][name] = res
        print(f"{name:14s} " + "  ".join(f"{k}: {v:.1f} us" for k, v in res.items()), flush=True)
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
