"""A zoo model's plan run a few times, for Nsight Compute (the generic runner's kernels):

    ncu -k regex:mma_halo_tf32 -c 2 --section SpeedOfLight --section ComputeWorkloadAnalysis \
        python3 dev/cuda/profile_net.py resnet20 fp32 10000

The first call compiles, plans and captures; the later ones replay the CUDA graphs (ncu profiles
each kernel node of a graph launch). `make profile-ncu` runs the profiles docs/benchmarks.md quotes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3:
        print("usage: profile_net.py MODEL fp16|fp32 BATCH [CALLS]", file=sys.stderr)
        return 2
    name, precision, n = argv[0], argv[1], int(argv[2])
    calls = int(argv[3]) if len(argv) > 3 else 2
    import cupy

    from benchmarks.gpu_zoo import zoo_graph
    from cnnrt.backends import cuda as cuda_backend

    g, _ = zoo_graph(name)
    r = cuda_backend.prepare(g, precision)
    x = np.random.default_rng(0).integers(0, 256, (n,) + tuple(g.input_shape), dtype=np.uint8)
    xp = cuda_backend.pinned_empty(x.shape, x.dtype)
    xp[...] = x
    for _ in range(calls):
        r.probabilities(xp)
    cupy.cuda.Device().synchronize()
    print(f"profile_net: {name} {precision} x {n}, {calls} calls: {r.summary(n) if hasattr(r, 'summary') else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
