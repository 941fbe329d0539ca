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

    def band_runs():
        """sm_90 only: the wgmma band conv forced onto its awkward cases (CNNRT_CUDA_WGMMA_BAND=all),
        at 300 images (where its blocks fill the SMs)."""
        nonlocal ok_all
        import cupy

        if int(cupy.cuda.Device().compute_capability) != 90:
            return
        with _env("CNNRT_CUDA_WGMMA_BAND", "all"):
            for name, g in TG.band_conv_cases().items():
                r = GraphRunner(g, "fp16")
                assert any("wgmma band" in k for _, _, k in r.describe(300)), name
                t0 = time.perf_counter()
                out = r.run({"images": rng.standard_normal((300,) + g.input_shape).astype(np.float32)})["y"]
                ok = bool(np.isfinite(out).all())
                ok_all &= ok
                record(f"band {name} fp16 n=300 (wgmma band conv)", t0, ok)
                r.close()

    def s2d_runs():
        """The space-to-depth stem (its prep kernel and the stride-1 halo conv over it), the halo
        conv forced (CNNRT_CUDA_HALO=all) so that it runs at every batch size."""
        nonlocal ok_all
        with _env("CNNRT_CUDA_HALO", "all"):
            for name, g in TG.s2d_stem_cases().items():
                r = GraphRunner(g, "fp16")
                for n in batches:
                    assert "space-to-depth" in r.program.plan(n).launches[0].label, name
                    t0 = time.perf_counter()
                    out = r.run({"images": rng.standard_normal((n,) + g.input_shape).astype(np.float32)})["y"]
                    ok = bool(np.isfinite(out).all())
                    ok_all &= ok
                    record(f"s2d {name} fp16 n={n} (space-to-depth stem)", t0, ok)
                r.close()

    def cluster_runs():
        """sm_90 only: the cluster split-K (CNNRT_CUDA_CLUSTER_SPLITK=1, opt-in) on ResNet-20 and the
        split-K cases, at the batch sizes where their plans take it."""
        nonlocal ok_all
        import cupy

        if int(cupy.cuda.Device().compute_capability) != 90:
            return
        with _env("CNNRT_CUDA_CLUSTER_SPLITK", "1"):
            for name, g in (("resnet20", TG.resnet20(2)), ("mma_splitk", mma["mma_splitk_7x7_add_relu"])):
                r = GraphRunner(g, "fp16")
                for n in batches:
                    if not any("summed in a cluster" in k for _, _, k in r.describe(n)):
                        continue
                    t0 = time.perf_counter()
                    out = r.run({"images": rng.standard_normal((n,) + g.input_shape).astype(np.float32)})
                    ok = all(bool(np.isfinite(v).all()) for v in out.values())
                    ok_all &= ok
                    record(f"cluster {name} fp16 n={n} (split-K summed in a cluster)", t0, ok)
                r.close()

    def dw_rows_runs():
        """The depthwise conv with 4 output rows a thread (CNNRT_CUDA_DW_ROWS=4, opt-in)."""
        nonlocal ok_all
        with _env("CNNRT_CUDA_DW_ROWS", "4"):
            g = TG.mobilenet_v2(4, size=32)
            r = GraphRunner(g, "fp16")
            assert any(" rows" in k for _, _, k in r.describe(1))
            for n in batches:
                t0 = time.perf_counter()
                out = r.probabilities(rng.integers(0, 256, (n,) + g.input_shape, dtype=np.uint8))
                ok = bool(np.isfinite(out).all())
                ok_all &= ok
                record(f"dw rows mobilenet_v2_32 fp16 n={n} (depthwise conv, 4 rows a thread)", t0, ok)
            r.close()

    def tf32_gemm_runs():
        """The 3xTF32 im2col conv for fp32 (CNNRT_CUDA_TF32_GEMM=1, opt-in; the halo conv off so
        that the cases take it), at the batch sizes where their plans do."""
        nonlocal ok_all
        with _env("CNNRT_CUDA_TF32_GEMM", "1"), _env("CNNRT_CUDA_TF32X3", "0"):
            for name in ("mma_pointwise_o200_hswish", "mma_splitk_7x7_add_relu"):
                r = GraphRunner(mma[name], "fp32")
                for n in batches:
                    if not any("3xTF32 tc" in k for _, _, k in r.describe(n)):
                        continue
                    t0 = time.perf_counter()
                    out = r.run({"images": rng.standard_normal((n,) + mma[name].input_shape).astype(np.float32)})["y"]
                    ok = bool(np.isfinite(out).all())
                    ok_all &= ok
                    record(f"tf32 gemm {name} fp32 n={n} (3xTF32 im2col conv)", t0, ok)
                r.close()

    band_runs()
    s2d_runs()
    cluster_runs()
    dw_rows_runs()
    tf32_gemm_runs()
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
