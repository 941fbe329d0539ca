"""A lab for Hopper's warpgroup MMA (`wgmma`, sm_90a): a conv as implicit GEMM, C[M,N] = A[M,K] .
B[N,K]^T in fp16 with fp32 accumulation (A: output pixels x (kh, kw, c), gathered from the NHWC input
by cp.async; B: the packed weights, as mma_conv_kernel's), and plain GEMMs as 1x1 convs. Why: on ResNet-18 x 256 torch.compile (cuDNN's Hopper kernels) ran 3.82 ms host to
host against our 7.09 (docs/benchmarks.md, 20:56 UTC); our `mma.sync` convs top out near 200 TFLOP/s
on its layers. This is the first step: the GEMM core on the GPU, checked and timed against cuBLAS,
before it becomes one of the planner's kernels (the fused epilogue, fp16 output).

The kernel: 128 threads a warpgroup, each warpgroup 64 rows of the block's BM (BM = 64 * WG) by BN
columns, `wgmma.mma_async.sync.aligned.m64n{BN}k16.f32.f16.f16` with A and B both from shared memory
through matrix descriptors in the no-swizzle ("interleave") layout: a K-major core matrix is 8 rows
of 16 bytes, 128 contiguous bytes; a stage holds A as [BK/8][BM][8 halves] and B as [BK/8][BN][8],
so the descriptor's leading byte offset (the next 8 columns of K) is BM*16 (BN*16) bytes and its
stride byte offset (the next 8 rows) 128 bytes. The stages fill by 16-byte `cp.async` (zero past M,
N and K), `fence.proxy.async.shared::cta` before the barrier that hands them to the tensor cores.

    PYTHONPATH=. python3 dev/cuda/wgmma_gemm.py --compile-only     # here: NVRTC (compute_90a) + ptxas
    PYTHONPATH=. python3 dev/cuda/wgmma_gemm.py --json out.json    # on an H100/H200: check, time

Status (2026-11-28): written and compiled for sm_90a on a machine without a GPU (NVRTC 12.9, ptxas);
**not yet run on a GPU**. Nothing in the runtime uses it.
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
VERSIONS = {  # name: (warpgroups, BN, BK, stages, pipe, swizzle)
    # pipe 1: one wgmma group left in flight across K tiles (the loads then run one tile less ahead);
    # swizzle 128: each row's 64 halves of K in 128 bytes, 16-byte chunk j at (j ^ row % 8): the
    # layout TMA writes and cuBLAS-class kernels read, without the no-swizzle layout's bank conflicts
    "wg1n64": (1, 64, 64, 4, 0, 0),
    "wg2n64": (2, 64, 64, 4, 0, 0),
    "wg2n128": (2, 128, 64, 4, 0, 0),
    "wg1n128": (1, 128, 64, 4, 0, 0),
    "wg2n256": (2, 256, 64, 3, 0, 0),
    "wg2n128p": (2, 128, 64, 4, 1, 0),
    "wg2n128s": (2, 128, 64, 4, 0, 128),
    "wg2n128sp": (2, 128, 64, 4, 1, 128),
    "wg2n256sp": (2, 256, 64, 4, 1, 128),
    "wg2n64sp": (2, 64, 64, 5, 1, 128),
}

PRELUDE = r"""
typedef unsigned short half_t;
typedef unsigned int u32_t;
typedef unsigned long long u64_t;
__device__ __forceinline__ u32_t smem_u32(const void* p) {
    u32_t r; asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p)); return r;
}
__device__ __forceinline__ void cp_async16(u32_t dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N)); }
// a K-major, no-swizzle shared-memory matrix descriptor: start, leading and stride byte offsets (/16)
// swz: 0 none ("interleave"), 1 the 128-byte swizzle (bits 62-63 of the descriptor)
__device__ __forceinline__ u64_t smem_desc(u32_t addr, u32_t lbo, u32_t sbo, u64_t swz = 0) {
    return (u64_t)((addr & 0x3FFFF) >> 4) | ((u64_t)((lbo & 0x3FFFF) >> 4) << 16) | ((u64_t)((sbo & 0x3FFFF) >> 4) << 32)
           | (swz << 62);
}
"""

KERNEL = r"""
extern "C" __global__ void __launch_bounds__($THREADS) $NAME(
    const half_t* __restrict__ A, const half_t* __restrict__ B, float* __restrict__ C, int M, int N, int K,
    int H, int W, int CI, int Ho, int Wo, int KW, int sh, int sw, int ph, int pw, int dh, int dw)
{
    // A is a conv's input, NHWC with CI channels (CI % 8 == 0), read as the implicit GEMM's rows:
    // row m = output pixel (n, ho, wo), column k = (kh, kw, c). A plain GEMM is the 1x1 conv of
    // 1x1 images: H = W = Ho = Wo = KW = 1, CI = K.
    constexpr int WG = $WG, BM = 64 * WG, BN = $BN, BK = $BK, STAGES = $STAGES, THREADS = 128 * WG;
    constexpr int PIPE = $PIPE, SWZ = $SWZ, D = STAGES - 1 - PIPE;  // D: K tiles loaded ahead
    constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2, STAGE_BYTES = A_BYTES + B_BYTES;
    static_assert(THREADS % BM == 0, "each thread loads one row of A");
    static_assert(D >= 1 && (SWZ == 0 || BK == 64), "the 128-byte swizzle: a row of 64 halves");
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, wg = tid >> 7, lane = tid & 31, warp = (tid >> 5) & 3;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int KT = (K + BK - 1) / BK;
    const u32_t s0 = (smem_u32(smem) + 1023u) & ~1023u;  // swizzle atoms (8 rows of 128 bytes) 1024-aligned
    // where 16-byte chunk kc of row r of a [rows x BK] tile lives, from the tile's base
    auto at = [&](int r, int kc, int rows) -> u32_t {
        return SWZ ? (u32_t)(r * 128 + ((kc ^ (r & 7)) << 4)) : (u32_t)((kc * rows + r) * 16);
    };

    // this thread's row of A (its output pixel), found once
    const int ar = tid % BM, am = m0 + ar;
    const bool arow = am < M;
    const int HWo = Ho * Wo, an = arow ? am / HWo : 0, arem = am - an * HWo;
    const int aho = arem / Wo, awo = arem - aho * Wo;
    const int hb = aho * sh - ph, wb = awo * sw - pw;
    const half_t* xrow = A + (long long)an * H * W * CI;

    // a stage: A as [BK/8][BM][8 halves], B as [BK/8][BN][8]; 16-byte chunks, zero where outside
    auto load = [&](int kt, int stage) {
        const u32_t base = s0 + stage * STAGE_BYTES;
        const int k0 = kt * BK;
        for (int kc = tid / BM; kc < BK / 8; kc += THREADS / BM) {
            const int k = k0 + kc * 8, tap = k / CI, c = k - tap * CI, kh = tap / KW, kw = tap - kh * KW;
            const int hi = hb + kh * dh, wi = wb + kw * dw;
            const bool ok = arow && k < K && (unsigned)hi < (unsigned)H && (unsigned)wi < (unsigned)W;
            const half_t* src = ok ? xrow + ((long long)hi * W + wi) * CI + c : A;
            cp_async16(base + at(ar, kc, BM), src, ok ? 16 : 0);
        }
        for (int e = tid; e < BN * (BK / 8); e += THREADS) {
            const int r = e % BN, kc = e / BN;
            const int g = n0 + r, k = k0 + kc * 8;
            const bool ok = g < N && k < K;
            cp_async16(base + A_BYTES + at(r, kc, BN), ok ? B + (long long)g * K + k : B, ok ? 16 : 0);
        }
    };

    float acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;

#pragma unroll
    for (int s = 0; s < D; ++s) {
        if (s < KT) load(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < KT; ++kt) {
        cp_async_wait<D - 1>();  // tile kt has landed (this thread's copies)
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // ... and is visible to the tensor cores
        // every thread's copies landed; every warpgroup's MMAs on the stage loaded next are done (with
        // PIPE 1 that stage held tile kt - 2, and each warpgroup waited for all but tile kt - 1's)
        __syncthreads();
        if (kt + D < KT) load(kt + D, (kt + D) % STAGES);
        cp_async_commit();
        const u32_t sa = s0 + (kt % STAGES) * STAGE_BYTES, sb = sa + A_BYTES;
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
        for (int s = 0; s < BK / 16; ++s) {
            // k16 step s: no swizzle, its two core-matrix columns of K start 2s planes in; swizzled,
            // 32 bytes into each 128-byte row (the hardware applies the XOR on the address)
            const u64_t da = SWZ ? smem_desc(sa + wg * 64 * 128 + 32 * s, 16, 1024, 1)
                                 : smem_desc(sa + wg * 64 * 16 + 2 * s * BM * 16, BM * 16, 128);
            const u64_t db = SWZ ? smem_desc(sb + 32 * s, 16, 1024, 1) : smem_desc(sb + 2 * s * BN * 16, BN * 16, 128);
            $WGMMA
        }
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(PIPE) : "memory");
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    cp_async_wait<0>();

    // accumulators: warp w of the warpgroup holds rows 16w .. 16w+15 of its 64; for each 8 columns j,
    // acc[4j .. 4j+3] = (row g, cols 2t, 2t+1), (row g+8, cols 2t, 2t+1), g = lane / 4, t = lane % 4
    const int gq = lane >> 2, tq = lane & 3;
    const int row = m0 + wg * 64 + warp * 16 + gq;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
        const int col = n0 + j * 8 + 2 * tq;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = row + 8 * h;
            if (r >= M) continue;
            if (col < N) C[(long long)r * N + col] = acc[4 * j + 2 * h];
            if (col + 1 < N) C[(long long)r * N + col + 1] = acc[4 * j + 2 * h + 1];
        }
    }
}
"""


def wgmma_asm(bn: int) -> str:
    """The inline PTX of one m64n{bn}k16 wgmma on the accumulator array acc[bn/2], D += A.B."""
    n = bn // 2
    regs = ", ".join(f"%{i}" for i in range(n))
    outs = ", ".join(f'"+f"(acc[{i}])' for i in range(n))
    return ('asm volatile("{ .reg .pred p; setp.ne.b32 p, %' + str(n + 2) + ', 0; '
            f'wgmma.mma_async.sync.aligned.m64n{bn}k16.f32.f16.f16 {{{regs}}}, %{n}, %{n + 1}, p, 1, 1, 0, 0; }}"\n'
            f'                : {outs}\n'
            '                : "l"(da), "l"(db), "r"(1) : "memory");')


def source(version: str) -> tuple[str, str, int, int]:
    """(CUDA source, kernel name, threads, dynamic shared-memory bytes) of a version."""
    wg, bn, bk, stages, pipe, swz = VERSIONS[version]
    name = f"wgmma_gemm_{version}"
    src = (KERNEL.replace("$WGMMA", wgmma_asm(bn)).replace("$NAME", name).replace("$THREADS", str(128 * wg))
           .replace("$WG", str(wg)).replace("$BN", str(bn)).replace("$BK", str(bk)).replace("$STAGES", str(stages))
           .replace("$PIPE", str(pipe)).replace("$SWZ", str(int(swz > 0))))
    smem = stages * (64 * wg + bn) * bk * 2 + 1024  # (+ the slack that aligns the stages to 1 KB)
    return PRELUDE + src, name, 128 * wg, smem


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


def load_function(src: str, name: str):
    """PTX from NVRTC (compute_90a: CuPy's own compile picks plain sm_90), loaded by the driver."""
    import cupy as cp

    try:
        from cnnrt.testing.nvrtc import compile_ptx

        ptx, _ = compile_ptx(src, arch="compute_90a")
    except FileNotFoundError:  # no libnvrtc that ctypes finds: CuPy's bindings
        from cupy_backends.cuda.libs import nvrtc

        prog = nvrtc.createProgram(src, "wgmma.cu", [], [])
        nvrtc.compileProgram(prog, ["--gpu-architecture=compute_90a", "--std=c++17"])
        ptx = nvrtc.getPTX(prog)
        ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    mod = cp.cuda.function.Module()
    mod.load(ptx.encode() + b"\0")  # cuModuleLoadData reads PTX as a NUL-terminated string
    return mod, mod.get_function(name)


def run(args) -> int:
    import cupy as cp

    rng = np.random.default_rng(0)
    out = {"device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "shapes": {}}
    funcs = {}
    for v in args.versions.split(","):
        src, name, threads, smem = source(v)
        mod, fn = load_function(src, name)
        fn.max_dynamic_shared_size_bytes = smem
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
        geo = [np.int32(v) for v in (h, w, ci, ho, wo, k, st, st, pd, pd, 1, 1)]
        for v, (_, fn, threads, smem) in funcs.items():
            wg, bn = VERSIONS[v][:2]
            c = cp.full((M, N), np.nan, np.float32)  # poisoned: an unwritten output fails the check
            grid = ((M + 64 * wg - 1) // (64 * wg), (N + bn - 1) // bn)
            launch = lambda: fn(grid, (threads,), (a, b, c, np.int32(M), np.int32(N), np.int32(K), *geo),  # noqa: E731
                                shared_mem=smem)
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
