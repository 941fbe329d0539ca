"""The program compute-sanitizer watches (dev/cuda/sanitize.py runs it once per tool): the generic
plan (LeNet-5, ResNet-20; fp16 with the tensor-core convs, fp32 with the SIMT ones; a 32x32
MobileNetV2, a pointwise and a split-K tensor-core conv in fp16, the split-K SIMT conv in fp32) at
batch sizes 1, 7 and 300; on sm_90 the wgmma band conv's cases at 300 and the cluster split-K
(opt-in) where its plans take it; the space-to-depth stems, the depthwise conv with 4 rows a
thread and the 3xTF32 im2col conv (both opt-in) at the same batch sizes; and
the Deep MNIST fused pattern at 1, 7, 300 and 1,100 (before the fp32 runs, the slowest).

    python3 dev/cuda/sanitize_workload.py OUT.json [--batches 1,7,300]

OUT.json lists the names of our own kernels (every generated kernel and every __global__ function
of cuda_kernels/deep_mnist.cu), so that the driver can tell our kernels' reports from the vendor's,
and the runs completed so far (rewritten after each run: a timeout still shows how far it got).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from cnnrt.backends import cuda as C  # noqa: E402
from cnnrt.backends import cuda_codegen as G  # noqa: E402
from cnnrt.backends.cuda_graph import GraphRunner  # noqa: E402
from cnnrt.testing import graphs as TG  # noqa: E402

CU = os.path.join(os.path.dirname(C.__file__), "cuda_kernels", "deep_mnist.cu")


def our_kernels() -> list[str]:
    src = open(CU).read()
    fused = re.findall(r'extern "C" __global__ void (?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(', src)
    return sorted(set(G.GENERATED) | set(fused))


@contextlib.contextmanager
def _env(var: str, value: str):
    """os.environ[var] = value for the block, then as it was."""
    old = os.environ.get(var)
    os.environ[var] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(var)
        else:
            os.environ[var] = old


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--batches", default="1,7,300")
    ap.add_argument("--fused-batches", default="1,7,300,1100")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    runs = []

    def record(what, t0, ok=True):
        runs.append({"run": what, "seconds": round(time.perf_counter() - t0, 2), "finite": ok})
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"kernels": our_kernels(), "runs": runs, "done": False}, f, indent=1)
        os.replace(tmp, a.out)
        print(f"ran {what} in {runs[-1]['seconds']} s", flush=True)

    batches = [int(v) for v in a.batches.split(",") if v]
    mma = TG.mma_conv_cases()
    jobs = [("lenet5", TG.lenet5(1), "u8"), ("resnet20", TG.resnet20(2), "u8"),
            ("mobilenet_v2_32", TG.mobilenet_v2(4, size=32), "u8"),  # 8-channel depthwise kernels
            ("mma_pointwise", mma["mma_pointwise_o200_hswish"], "f32"),
            ("mma_splitk", mma["mma_splitk_7x7_add_relu"], "f32")]  # split-K at batch 1 and 7
    fp16_only = ("mma_pointwise", "mobilenet_v2_32")  # (mma_splitk in fp32: the SIMT conv's split-K)
    ok_all = True

    def fused_runs():
        nonlocal ok_all
        fused = [int(v) for v in a.fused_batches.split(",") if v]
        g = TG.deep_mnist(3)
        r = C.prepare(g, "fp16") if fused else None
        assert r is None or type(r).__name__ == "FusedRunner", type(r)
        for n in fused:
            t0 = time.perf_counter()
            out = r.probabilities(rng.integers(0, 256, (n,) + g.input_shape, dtype=np.uint8))
            ok = bool(np.isfinite(out).all())
            ok_all &= ok
            record(f"deep_mnist fused fp16 n={n}", t0, ok)

    def run_where(what, g, precision, marker, sizes=None):
        """g on a new runner at each batch size whose plan has a kernel labelled `marker` (random
        inputs; u8 images where the graph takes them), recorded as `what`; how many ran."""
        nonlocal ok_all
        r = GraphRunner(g, precision)
        ran = 0
        for n in sizes or batches:
            if not any(marker in k for _, _, k in r.describe(n)):
                continue
            t0 = time.perf_counter()
            x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
            out = r.run({g.input_name: x})
            ok = all(bool(np.isfinite(v).all()) for v in out.values())
            ok_all &= ok
            record(f"{what} {precision} n={n}", t0, ok)
            ran += 1
        r.close()
        return ran

    def band_runs():
        """sm_90 only: the wgmma band conv forced onto its awkward cases (CNNRT_CUDA_WGMMA_BAND=all),
        at 300 images (where its blocks fill the SMs)."""
        if sm != 90:
            return
        with _env("CNNRT_CUDA_WGMMA_BAND", "all"):
            for name, g in TG.band_conv_cases().items():
                assert run_where(f"band {name} (wgmma band conv)", g, "fp16", "wgmma band", [300]) == 1, name

    def s2d_runs():
        """The space-to-depth stem (its prep kernel and the stride-1 halo conv over it), the halo
        conv forced (CNNRT_CUDA_HALO=all) so that it runs at every batch size."""
        with _env("CNNRT_CUDA_HALO", "all"):
            for name, g in TG.s2d_stem_cases().items():
                assert run_where(f"s2d {name} (space-to-depth stem)", g, "fp16", "space-to-depth") == len(batches)

    def opt_in_runs():
        """Kernels behind switches, where their plans take them (all on by default since 2026-11-29;
        the fp32 jobs below also run the 3xTF32 cluster split-K at batches 1 and 7 on sm_90): the
        cluster split-K (sm_90; CNNRT_CUDA_CLUSTER_SPLITK), the depthwise conv with 4 rows a thread
        (CNNRT_CUDA_DW_ROWS; 2 by default) and the 3xTF32 im2col conv for fp32
        (CNNRT_CUDA_TF32_GEMM, the halo conv off so that the cases take it)."""
        if sm == 90:
            with _env("CNNRT_CUDA_CLUSTER_SPLITK", "1"):
                for name, g in (("resnet20", TG.resnet20(2)), ("mma_splitk", mma["mma_splitk_7x7_add_relu"])):
                    run_where(f"cluster {name} (split-K summed in a cluster)", g, "fp16", "summed in a cluster")
        with _env("CNNRT_CUDA_DW_ROWS", "4"):
            assert run_where("dw rows mobilenet_v2_32 (depthwise conv, 4 rows a thread)",
                             TG.mobilenet_v2(4, size=32), "fp16", " rows") == len(batches)
        with _env("CNNRT_CUDA_TF32_GEMM", "1"), _env("CNNRT_CUDA_TF32X3", "0"):
            for name in ("mma_pointwise_o200_hswish", "mma_splitk_7x7_add_relu"):
                run_where(f"tf32 gemm {name} (3xTF32 im2col conv)", mma[name], "fp32", "3xTF32 tc")

    import cupy

    sm = int(cupy.cuda.Device().compute_capability)
    band_runs()
    s2d_runs()
    opt_in_runs()
    for precision in ("fp16", "fp32"):  # fp32 (SIMT) last: the slowest under racecheck
        if precision == "fp32":
            fused_runs()
        for name, g, kind in jobs:
            if name in fp16_only and precision == "fp32":
                continue
            r = GraphRunner(g, precision)
            for n in batches:
                t0 = time.perf_counter()
                if kind == "u8":
                    out = r.probabilities(rng.integers(0, 256, (n,) + g.input_shape, dtype=np.uint8))
                else:
                    out = r.run({"images": rng.standard_normal((n,) + g.input_shape).astype(np.float32)})["y"]
                ok = bool(np.isfinite(out).all())
                ok_all &= ok
                record(f"{name} {precision} n={n} ({'tensor-core' if r.program.mma else 'SIMT'} convs)", t0, ok)
            r.close()
    with open(a.out + ".tmp", "w") as f:
        json.dump({"kernels": our_kernels(), "runs": runs, "done": True}, f, indent=1)
    os.replace(a.out + ".tmp", a.out)
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
