"""Where a cached cold start's time goes: a new process prepares a zoo model whose kernels are
already in the caches (CuPy's and cnnrt's sm_90a cubins), under cProfile; prints the calls that
took longest. The first process only fills the caches.

    python dev/cuda/profile_prepare.py --models resnet18,mobilenet_v3_small [--lines 30]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CODE = """
import cProfile, io, pstats, sys, time
sys.path.insert(0, {root!r})
from benchmarks.gpu_zoo import zoo_graph
from cnnrt.backends import cuda as C
import cupy
g, _ = zoo_graph({name!r})
cupy.cuda.Device().synchronize()
pr = cProfile.Profile()
t = time.perf_counter()
pr.enable()
r = C.prepare(g, "fp16")
cupy.cuda.Device().synchronize()
pr.disable()
print(f"PREPARE {{time.perf_counter() - t:.3f}} s", getattr(r, "prepare_breakdown", ""))
if {show}:
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("cumtime").print_stats({lines})
    print(s.getvalue())
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats({lines})
    print(s.getvalue())
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18")
    ap.add_argument("--lines", type=int, default=30)
    a = ap.parse_args()
    for name in a.models.split(","):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, CUPY_CACHE_DIR=cache, CNNRT_CACHE_DIR=cache)
            for show in (False, True):
                p = subprocess.run([sys.executable, "-c", CODE.format(root=str(ROOT), name=name, show=show,
                                                                      lines=a.lines)],
                                   env=env, capture_output=True, text=True, timeout=300)
                if p.returncode:
                    print(p.stderr[-2000:])
                    return 1
            print(f"== {name} (cached)\n" + p.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
