"""A lab for Hopper's warpgroup MMA (`wgmma`, sm_90a): the runtime's wgmma conv
(cuda_codegen.wgmma_conv_kernel, implicit GEMM: A = output pixels x (kh, kw, c) gathered from the
NHWC input by cp.async, B = the weights packed [O][Kp] as mma_conv_kernel's, fp32 accumulation),
every tile version side by side on ResNet-18's 3x3 convs, awkward convs and plain GEMMs (1x1 convs
of 1x1 images, where cuBLAS is timed too). Why: on ResNet-18 x 256 torch.compile (cuDNN's Hopper
kernels) ran 3.82 ms host to host against our 7.09 (docs/benchmarks.md, 20:56 UTC); our `mma.sync`
convs top out near 200 TFLOP/s on its layers.

The kernel: 128 threads a warpgroup, each warpgroup 64 rows of the block's BM (BM = 64 * WG) by BN
columns, `wgmma.mma_async.sync.aligned.m64n{BN}k16.f32.f16.f16` with A and B both from shared memory
through matrix descriptors. No swizzle ("interleave"): a K-major core matrix is 8 rows of 16 bytes,
128 contiguous bytes; a stage holds A as [BK/8][BM][8 halves], so the descriptor's leading byte
offset (the next 8 columns of K) is BM*16 bytes and its stride byte offset (the next 8 rows) 128.
128-byte swizzle: each row's 64 halves in 128 bytes, chunk j at j ^ row % 8, 1 KB-aligned atoms
(stride byte offset 1 KB), the start advanced 32 bytes a k16 step. The stages fill by 16-byte
`cp.async` (zero past M, N and K), `fence.proxy.async.shared::cta` before the barrier that hands
them to the tensor cores.

    PYTHONPATH=. python3 dev/cuda/wgmma_gemm.py --compile-only          # here: NVRTC (compute_90a) + ptxas
    PYTHONPATH=. python3 dev/cuda/wgmma_gemm.py --isolate --json out.json   # on an H100/H200: check, time

Status: written and compiled for sm_90a on a machine without a GPU (NVRTC 12.9, ptxas); first run
on an H200 on 2026-11-28 22:08 UTC: right (rel. err 1e-6), 54-159 TFLOP/s on ResNet-18's convs,
slower than the mma.sync convs (docs/wgmma_gemm_2208.json). The runtime uses it only with
CNNRT_CUDA_WGMMA=1 on sm_90 devices.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# name: (N, H, W, C, O, k, stride, pad): ResNet-18's 3x3 convs at 256 images (the layers where cuDNN
# wins), a stride-2 one, and awkward sizes; "gemm_*" are plain GEMMs (1x1 convs of 1x1 images: M, N, K)
SHAPES = {
    "r18_l1": (256, 56, 56, 64, 64, 3, 1, 1),
    "r18_l2": (256, 28, 28, 128, 128, 3, 1, 1),
    "r18_l3": (256, 14, 14, 256, 256, 3, 1, 1),
    "r18_l4": (256, 7, 7, 512, 512, 3, 1, 1),
    "r18_l2_down": (256, 56, 56, 64, 128, 3, 2, 1),
    "odd_conv": (3, 9, 11, 24, 40, 3, 1, 1),  # M and N not multiples of the tile; K = 216, not of BK
    "gemm_odd": (1000, 1, 1, 200, 72, 1, 1, 0),
    "gemm_tiny": (7, 1, 1, 64, 64, 1, 1, 0),
}
from cnnrt.backends import cuda_codegen as G  # noqa: E402

VERSIONS = G.WGMMA_TILES  # name: WgmmaTile(warpgroups, BN, stages, pipe, swizzle)


def source(version: str, to: str = "f32") -> tuple[str, str, int, int]:
    """(CUDA source, kernel name, threads, dynamic shared-memory bytes) of a version: the runtime's
    own kernel (cuda_codegen.wgmma_conv_kernel), no epilogue."""
    t = VERSIONS[version]
    k = G.wgmma_conv_kernel(t, to)
    return G.module_source([k]), k.name, t.threads, t.smem


def compile_only() -> int:
    """NVRTC to PTX for compute_90a, then ptxas for sm_90a: registers, spills, shared memory."""
    from cnnrt.testing.nvrtc import compile_ptx, find_library

    if find_library() is None:
        print("no NVRTC library here (pip install nvidia-cuda-nvrtc, or set CNNRT_NVRTC)")
        return 2
    ok = True
    for v in VERSIONS:
        src, name, threads, smem = source(v)
        ptx, _ = compile_ptx(src, arch="compute_90a")
        assert name in ptx and "wgmma.mma_async.sync.aligned" in ptx, v
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "k.ptx"
            p.write_text(ptx)
            r = subprocess.run(["ptxas", "-arch=sm_90a", "-v", str(p), "-o", str(Path(d) / "k.cubin")],
                               capture_output=True, text=True)
        info = " ".join(x.strip() for x in r.stderr.splitlines() if "registers" in x or "spill" in x)
        print(f"{v}: {threads} threads, {smem // 1024} KB shared; ptxas rc {r.returncode}: {info or r.stderr[-300:]}")
        ok &= r.returncode == 0
    return 0 if ok else 1


def load_function(src: str, name: str, smem: int):
    """The runtime's own sm_90a loader (cuda_graph.load_sm90a: NVRTC to an sm_90a cubin, CuPy's
    plain compile picks sm_90), the kernel's dynamic shared-memory limit raised."""
    import cupy as cp

    from cnnrt.backends.cuda_graph import load_sm90a

    fns, mod = load_sm90a(cp, src, [name])
    fn = fns[name]
    try:
        fn.max_dynamic_shared_size_bytes = smem
    except AttributeError:  # a bare driver function: CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        cp.cuda.driver.funcSetAttribute(fn.ptr, 8, smem)
    return mod, fn


def run(args) -> int:
    import cupy as cp

    rng = np.random.default_rng(0)
    out = {"device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "shapes": {}}
    funcs = {}
    for v in args.versions.split(","):
        src, name, threads, smem = source(v)
        mod, fn = load_function(src, name, smem)
        funcs[v] = (mod, fn, threads, smem)
    start, stop = cp.cuda.Event(), cp.cuda.Event()

    def timed(f):
        for _ in range(3):
            f()
        ts = []
        for _ in range(args.reps):
            start.record()
            f()
            stop.record()
            stop.synchronize()
            ts.append(cp.cuda.get_elapsed_time(start, stop))
        return statistics.median(ts)

    failed = False
    for sname in args.shapes.split(","):
        n, h, w, ci, o, k, st, pd = SHAPES[sname]
        ho, wo = (h + 2 * pd - k) // st + 1, (w + 2 * pd - k) // st + 1
        M, N, K = n * ho * wo, o, k * k * ci
        x = rng.standard_normal((n, h, w, ci)).astype(np.float16)
        wt = rng.standard_normal((o, K)).astype(np.float16)  # packed [O][(kh, kw, c)], as mma_conv_kernel's
        a, b = cp.asarray(x), cp.asarray(wt)
        rows = np.unique(np.r_[0, M - 1, rng.integers(0, M, 256)])
        xp = np.pad(x.astype(np.float64), ((0, 0), (pd, pd), (pd, pd), (0, 0)))
        pn, prem = rows // (ho * wo), rows % (ho * wo)
        patches = np.stack([xp[i, r // wo * st:r // wo * st + k, r % wo * st:r % wo * st + k].reshape(-1)
                            for i, r in zip(pn, prem)])
        want = patches @ wt.astype(np.float64).T
        flop = 2.0 * M * N * K
        res = {"shape": [n, h, w, ci, o, k, st, pd], "M": M, "N": N, "K": K, "versions": {}}
        if k == 1 and st == 1 and pd == 0:  # cuBLAS where the conv is a plain GEMM
            a2 = a.reshape(M, K)
            ms = timed(lambda: cp.matmul(a2, b.T))
            res["versions"]["cublas"] = {"ms": ms, "tflops": flop / ms / 1e9}
            print(f"== {sname}: M={M} N={N} K={K}  cuBLAS (cupy.matmul, fp16 out) {ms * 1e3:8.1f} us {flop / ms / 1e9:6.1f} TFLOP/s")
        else:
            print(f"== {sname}: {n}x{h}x{w}x{ci} -> {o}, {k}x{k} s{st} p{pd}: M={M} N={N} K={K}")
        kp = -(-K // G.MMA_KPAD) * G.MMA_KPAD
        wpk = cp.zeros((o, kp), np.float16)
        wpk[:, :K] = b
        bias = cp.zeros(o, np.float32)
        dims = [np.int32(v) for v in (n, h, w, ci, ho, wo, o, k, st, st, pd, pd, 1, 1, K, kp)]
        for v, (_, fn, threads, smem) in funcs.items():
            t = VERSIONS[v]
            c = cp.full((M, N), np.nan, np.float32)  # poisoned: an unwritten output fails the check
            grid = ((M + t.bm - 1) // t.bm, (N + t.bn - 1) // t.bn)
            launch = lambda: fn(grid, (threads,), (a, wpk, bias, c, *dims), shared_mem=smem)  # noqa: E731
            launch()
            cp.cuda.Device().synchronize()
            got = cp.asnumpy(c)
            err = float(np.abs(got[rows] - want).max() / np.abs(want).max()) if np.isfinite(got).all() else float("inf")
            ms = timed(launch)
            res["versions"][v] = {"ms": ms, "tflops": flop / ms / 1e9, "rel_err": err}
            flag = "" if err < 1e-3 else "  WRONG"
            failed |= err >= 1e-3
            print(f"   {v:8s} {ms * 1e3:8.1f} us {flop / ms / 1e9:6.1f} TFLOP/s  err {err:.1e}{flag}")
        out["shapes"][sname] = res
    if args.json:
        from cnnrt.fileio import write_json

        write_json(args.json, out)
    return 1 if failed else 0


def isolated(args) -> int:
    """Each version in a process of its own (a version that faults or hangs costs only itself: a
    kernel fault poisons the whole CUDA context), the results merged into one JSON."""
    merged, rc = None, 0
    for v in args.versions.split(","):
        with tempfile.TemporaryDirectory() as d:
            js = str(Path(d) / "v.json")
            cmd = [sys.executable, __file__, "--versions", v, "--shapes", args.shapes, "--reps", str(args.reps), "--json", js]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                print(p.stdout, end="", flush=True)
                err = None if Path(js).exists() else (p.stderr.strip().splitlines() or ["no output"])[-1]
            except subprocess.TimeoutExpired:
                err = f"timed out after {args.timeout} s"
            if err is not None:
                print(f"   {v}: FAILED: {err}", flush=True)
                rc = 1
                merged = merged or {"shapes": {}}
                merged.setdefault("errors", {})[v] = err
                continue
            one = json.loads(Path(js).read_text())
            rc |= p.returncode
        if merged is None or "device" not in merged:
            one["errors"] = (merged or {}).get("errors", {})
            merged = one
        else:
            for sname, res in one["shapes"].items():
                merged["shapes"].setdefault(sname, res)["versions"].update(res["versions"])
    if args.json and merged is not None:
        from cnnrt.fileio import write_json

        write_json(args.json, merged)
    return rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compile-only", action="store_true", help="NVRTC + ptxas here; no GPU needed")
    ap.add_argument("--shapes", default="gemm_tiny,gemm_odd,odd_conv,r18_l1,r18_l2,r18_l3,r18_l4,r18_l2_down")
    ap.add_argument("--versions", default=",".join(VERSIONS))
    ap.add_argument("--isolate", action="store_true", help="each version in its own process")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per version with --isolate")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.compile_only:
        return compile_only()
    return isolated(args) if args.isolate else run(args)


if __name__ == "__main__":
    sys.exit(main())
