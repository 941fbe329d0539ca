"""The 3xTF32 convs' activation split (CNNRT_CUDA_TF32_SPLIT) against float64, per mode, on the
nets the GPU test uses: the largest probability difference over fresh random inputs, and the
top-1/top-2 probability margin of the reference at that row (a near tie magnifies logit error).

    PYTHONPATH=. python3 dev/cuda/tf32_split_check.py [--modes rna,half,trunc] [--rounds 4]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="rna,half,trunc")
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args(argv)
    from cnnrt.backends import cuda as cuda_backend
    from cnnrt.ir.graph import run_reference
    from cnnrt.testing import graphs as TG

    nets = {"resnet18": TG.ZOO["resnet18"](0), "resnet20": TG.ZOO["resnet20"](0),
            "mobilenet_v2": TG.ZOO["mobilenet_v2"](0, size=96)}
    for name, g in nets.items():
        rng = np.random.default_rng(1)
        xs = [rng.integers(0, 256, (16,) + g.input_shape, dtype=np.uint8) for _ in range(a.rounds)]
        refs = [run_reference(g, {"images": TG.scaled(g, x)})[g.outputs[0]].reshape(16, -1) for x in xs]
        for mode in a.modes.split(","):
            os.environ["CNNRT_CUDA_TF32_SPLIT"] = mode
            r = cuda_backend.prepare(g, "fp32")
            worst, where = 0.0, None
            for x, ref in zip(xs, refs):
                d = np.abs(r.probabilities(x) - ref)
                i = int(d.max(axis=1).argmax())
                if d.max() > worst:
                    top = np.sort(ref[i])[-2:]
                    worst, where = float(d.max()), float(top[1] - top[0])
            print(f"{name:13s} {mode:6s} max |dp| {worst:.3e}  (reference's top-2 margin there {where:.3e})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
