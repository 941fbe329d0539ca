"""CUDA C source for the generic graph kernels, generated from Python (no CuPy needed here).

Every kernel is generated from a template plus the few things fixed at compile time: storage types
(fp32 or fp16, as raw 16-bit patterns converted with inline PTX, so no CUDA header is needed),
tile sizes, and the *epilogue*: the chain of elementwise ops fused after the kernel's main
computation (bias, activation, residual add, per-channel scale...). Shapes, strides, pads and
dilations are run-time arguments, so one kernel serves every layer with the same epilogue.

Each generator returns a `Kernel`: its unique name (a hash of the source, so identical kernels of
different layers are compiled once), its source and its parameter list `params` [(ctype, name)].
The planner (cuda_plan.py) fills arguments by these names; the executor (cuda_graph.py) packs them
with the matching NumPy scalar types; nothing is copied by hand between C and Python.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field

PRELUDE = r"""
typedef unsigned short half_t;
typedef unsigned char u8_t;
struct __align__(16) f4_t { float x, y, z, w; };
struct __align__(8) f2_t { float x, y; };
__device__ __forceinline__ float h2f(half_t h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ half_t f2h(float f) { half_t h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ float ldf(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ldf(const half_t* p, long long i) { return h2f(p[i]); }
__device__ __forceinline__ float ldf(const u8_t* p, long long i) { return (float)p[i]; }
__device__ __forceinline__ void stf(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void stf(half_t* p, long long i, float v) { p[i] = f2h(v); }
#define NEG_INF __int_as_float(0xff800000)
typedef unsigned int u32_t;
struct __align__(16) u4_t { u32_t x, y, z, w; };
__device__ __forceinline__ u32_t smem_u32(const void* p) {
    u32_t r; asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p)); return r;
}
__device__ __forceinline__ void ldsm_x4(u32_t (&r)[4], u32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
// 8 consecutive outputs y[i .. i+8) (n of them valid); one 16-byte store (f16) or two (f32) when vec
__device__ __forceinline__ void st8(half_t* y, long long i, const float (&v)[8], int n, bool vec) {
    if (vec && n >= 8) {
        u32_t p[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) p[e] = (u32_t)f2h(v[2 * e]) | ((u32_t)f2h(v[2 * e + 1]) << 16);
        *reinterpret_cast<u4_t*>(y + i) = u4_t{p[0], p[1], p[2], p[3]};
    } else {
        for (int e = 0; e < 8 && e < n; ++e) y[i + e] = f2h(v[e]);
    }
}
// 8 consecutive operands p[i .. i+8) (n of them valid, the rest 0): one 16-byte load (f16) or two
// (f32) where p + i is 16-byte aligned, else element by element
__device__ __forceinline__ void ld8(const half_t* p, long long i, float (&v)[8], int n) {
    if (n >= 8 && (reinterpret_cast<unsigned long long>(p + i) & 15) == 0) {
        const u4_t q = *reinterpret_cast<const u4_t*>(p + i);
        const u32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) { v[2 * e] = h2f((half_t)(w[e] & 0xffffu)); v[2 * e + 1] = h2f((half_t)(w[e] >> 16)); }
    } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = e < n ? h2f(p[i + e]) : 0.f;
    }
}
__device__ __forceinline__ void ld8(const float* p, long long i, float (&v)[8], int n) {
    if (n >= 8 && (reinterpret_cast<unsigned long long>(p + i) & 15) == 0) {
        const f4_t a = *reinterpret_cast<const f4_t*>(p + i), b = *reinterpret_cast<const f4_t*>(p + i + 4);
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = e < n ? p[i + e] : 0.f;
    }
}
// 8 consecutive values from a 16-byte (f16) or 32-byte (f32) aligned address: the vec8 kernels' taps
__device__ __forceinline__ void ld8a(const half_t* p, float (&v)[8]) {
    const u4_t q = *reinterpret_cast<const u4_t*>(p);
    const u32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) { v[2 * e] = h2f((half_t)(w[e] & 0xffffu)); v[2 * e + 1] = h2f((half_t)(w[e] >> 16)); }
}
__device__ __forceinline__ void ld8a(const float* p, float (&v)[8]) {
    const f4_t a = *reinterpret_cast<const f4_t*>(p), b = *reinterpret_cast<const f4_t*>(p + 4);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void ld8(const u8_t* p, long long i, float (&v)[8], int n) {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = e < n ? (float)p[i + e] : 0.f;
}
__device__ __forceinline__ void st8(float* y, long long i, const float (&v)[8], int n, bool vec) {
    if (vec && n >= 8) {
        *reinterpret_cast<f4_t*>(y + i) = f4_t{v[0], v[1], v[2], v[3]};
        *reinterpret_cast<f4_t*>(y + i + 4) = f4_t{v[4], v[5], v[6], v[7]};
    } else {
        for (int e = 0; e < 8 && e < n; ++e) y[i + e] = v[e];
    }
}
// 16 bytes global -> shared without registers (sm_80 and later); bytes = 0 writes 16 zero bytes
__device__ __forceinline__ void cp_async16(u32_t dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N)); }
// fp32 -> tf32 (round to nearest, ties away), as a 32-bit pattern with the low 13 bits zero
__device__ __forceinline__ u32_t tf32_rna(float f) { u32_t r; asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f)); return r; }
// An activation split as the 3xTF32 convs read it: v = hi + lo, each with the low 13 bits zero.
// trunc: hi = v truncated (an AND), lo = the exact rest truncated (an FADD and an AND); rna: both
// parts rounded by cvt.rna (the ALU pipe was the busiest in the 3xTF32 halo conv, ncu 2026-11-29)
__device__ __forceinline__ void tf32_split_trunc(float v, u32_t& hi, u32_t& lo) {
    hi = __float_as_uint(v) & 0xFFFFE000u;
    lo = __float_as_uint(v - __uint_as_float(hi)) & 0xFFFFE000u;
}
__device__ __forceinline__ void tf32_split_half(float v, u32_t& hi, u32_t& lo) {  // hi rounded half up
    hi = (__float_as_uint(v) + 0x1000u) & 0xFFFFE000u;
    lo = __float_as_uint(v - __uint_as_float(hi)) & 0xFFFFE000u;
}
__device__ __forceinline__ void tf32_split_rna(float v, u32_t& hi, u32_t& lo) {
    hi = tf32_rna(v);
    lo = tf32_rna(v - __uint_as_float(hi));
}
// D = A(16x8, row) * B(8x8, col) + D, tf32 inputs, fp32 accumulators (sm_80 and later)
__device__ __forceinline__ void mma1688(float (&c)[4], const u32_t (&a)[4], u32_t b0, u32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// 3xTF32: D += A * B with A = ah + al and B = bh + bl split into tf32 parts, the small products
// first (al*bh + ah*bl + ah*bh; al*bl is below fp32's precision)
__device__ __forceinline__ void mma1688x3(float (&c)[4], const u32_t (&ah)[4], const u32_t (&al)[4],
                                          const u32_t (&bh)[2], const u32_t (&bl)[2]) {
    mma1688(c, al, bh[0], bh[1]);
    mma1688(c, ah, bl[0], bl[1]);
    mma1688(c, ah, bh[0], bh[1]);
}
// D = A(16x16, row) * B(16x8, col) + D, fp16 inputs, fp32 accumulators (sm_80 and later)
__device__ __forceinline__ void mma16816(float (&c)[4], const u32_t (&a)[4], u32_t b0, u32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
"""

CTYPE = {"f32": "float", "f16": "half_t", "u8": "u8_t"}
ITEMSIZE = {"f32": 4, "f16": 2, "u8": 1}


@dataclass(frozen=True)
class EpiOp:
    """One fused elementwise op. `mode` says how its operand is indexed: 'full' (same shape as the
    output), 'chan' (one value per channel: the last axis), 'nc' (one per image and channel: an
    (N, 1, 1, C) tensor), 'scalar', or 'bcast' (general broadcasting, eltwise kernels only);
    None for a unary op. `swap`: the operand is the left-hand side (for Sub, Div, Pow)."""

    op: str
    attrs: tuple = ()  # sorted (name, value) pairs that change the code
    mode: str | None = None
    dtype: str = "f32"  # the operand's storage type
    swap: bool = False

    @property
    def a(self) -> dict:
        return dict(self.attrs)


@dataclass
class Kernel:
    family: str
    name: str
    source: str
    params: list  # [(ctype, name)]
    threads: int = 256
    static: dict = field(default_factory=dict)


def lit(x: float) -> str:
    """A float literal for C (finite values only)."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"not a finite constant: {x}")
    r = repr(x)
    if "e" not in r and "." not in r:
        r += ".0"
    return r + "f"


UNARY = {
    "Relu": lambda a: "v = fmaxf(v, 0.f);",
    "LeakyRelu": lambda a: f"v = v >= 0.f ? v : v * {lit(a['alpha'])};",
    "Sigmoid": lambda a: "v = 1.f / (1.f + expf(-v));",
    "HardSigmoid": lambda a: f"v = fminf(fmaxf(v * {lit(a['alpha'])} + {lit(a['beta'])}, 0.f), 1.f);",
    "HardSwish": lambda a: "v = v * fminf(fmaxf(v / 6.f + 0.5f, 0.f), 1.f);",
    "Tanh": lambda a: "v = tanhf(v);",
    "Exp": lambda a: "v = expf(v);",
    "Sqrt": lambda a: "v = sqrtf(v);",
    "Neg": lambda a: "v = -v;",
    "Abs": lambda a: "v = fabsf(v);",
    "Erf": lambda a: "v = erff(v);",
    "Elu": lambda a: f"v = v > 0.f ? v : {lit(a['alpha'])} * expm1f(v);",
    "Softplus": lambda a: "v = fmaxf(v, 0.f) + log1pf(expf(-fabsf(v)));",
    "Gelu": lambda a: ("v = 0.5f * v * (1.f + erff(v * 0.70710678118654752f));" if a.get("approximate", "none") == "none"
                       else "v = 0.5f * v * (1.f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));"),
    "Clip": lambda a: " ".join(s for s in (
        f"v = fmaxf(v, {lit(a['min'])});" if math.isfinite(a["min"]) else "",
        f"v = fminf(v, {lit(a['max'])});" if math.isfinite(a["max"]) else "") if s) or "/* clip: no bounds */",
}
UNARY_ATTRS = {"LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta"), "Elu": ("alpha",), "Gelu": ("approximate",),
               "Clip": ("min", "max")}
BINARY = {
    "Add": ("v + u", "u + v"), "Sub": ("v - u", "u - v"), "Mul": ("v * u", "u * v"), "Div": ("v / u", "u / v"),
    "Max": ("fmaxf(v, u)", "fmaxf(u, v)"), "Min": ("fminf(v, u)", "fminf(u, v)"), "Pow": ("powf(v, u)", "powf(u, v)"),
}
MODES = ("full", "chan", "nc", "scalar", "bcast")


def epi_op(op: str, attrs: dict | None = None, mode: str | None = None, dtype: str = "f32", swap: bool = False) -> EpiOp:
    keep = tuple(sorted((k, (attrs or {})[k]) for k in UNARY_ATTRS.get(op, ()) if k in (attrs or {})))
    if op not in UNARY and op not in BINARY:
        raise ValueError(f"{op} cannot be fused into an epilogue")
    if (op in BINARY) != (mode is not None):
        raise ValueError(f"{op}: operand mode {mode!r} does not fit")
    return EpiOp(op, keep, mode, dtype, swap)


def index_expr(mode: str, slot: int) -> str:
    return {"full": "idx", "chan": "c", "nc": "(nimg * CH + c)", "scalar": "0", "bcast": f"boff{slot}"}[mode]


def epilogue(epi) -> tuple[list, str, bool]:
    """(params, code, uses nimg) for a chain of EpiOps; operands are params e0, e1, ... in order.
    The code runs on `float v` with `idx` (flat output index), `c` (channel), `nimg`, `CH` in scope."""
    params, lines, nimg = [], [], False
    slot = 0
    for e in epi:
        if e.mode is None:
            lines.append(UNARY[e.op](e.a))
            continue
        params.append((f"const {CTYPE[e.dtype]}*", f"e{slot}"))
        lines.append(f"{{ const float u = ldf(e{slot}, {index_expr(e.mode, slot)}); "
                     f"v = {BINARY[e.op][1 if e.swap else 0]}; }}")
        nimg |= e.mode == "nc"
        slot += 1
    return params, "\n            ".join(lines), nimg


def epilogue8(epi) -> tuple[str, str]:
    """(preload, code) of a chain of EpiOps for the coalesced epilogue, where a thread finishes 8
    consecutive channels cb .. cb+7 of pixel m: operands of the output's own shape ('full', a
    residual) are read once as 8 values (one 16-byte load for f16, where element by element each
    read took 2 bytes of a memory transaction), the rest as epilogue() reads them. The code runs on
    `float v` with `e` (0..7) and epilogue()'s names in scope."""
    pre, lines = [], []
    slot = 0
    for e in epi:
        if e.mode is None:
            lines.append(UNARY[e.op](e.a))
            continue
        if e.mode == "full":
            pre.append(f"float u{slot}[8]; ld8(e{slot}, (long long)m * O + cb, u{slot}, O - cb);")
            read = f"u{slot}[e]"
        else:
            read = f"ldf(e{slot}, {index_expr(e.mode, slot)})"
        lines.append(f"{{ const float u = {read}; v = {BINARY[e.op][1 if e.swap else 0]}; }}")
        slot += 1
    return "\n        ".join(pre), "\n                ".join(lines)


def fill_epilogue(template: str, epi) -> str:
    """A tensor-core conv template with MMA_EPILOGUE and the fused chain `epi` filled in."""
    _, ecode, _ = epilogue(epi)
    pre, code8 = epilogue8(epi)
    return (template.replace("$EPILOGUE", MMA_EPILOGUE).replace("$EPRE", pre).replace("$EPI8", code8)
            .replace("$EPI", ecode))


def _sig(params) -> str:
    return ",\n    ".join(f"{t} {n}" for t, n in params)


GENERATED: dict = {}  # name -> Kernel, every kernel generated in this process (the CPU fake of CuPy reads it)


def tf32_split_mode() -> str:
    """How the 3xTF32 convs split an activation into tf32 parts: "trunc" (the default: an AND for
    the high part, the exact rest truncated for the low one) or "rna" (cvt.rna for both, as before
    2026-11-29); CNNRT_CUDA_TF32_SPLIT=rna is the A/B switch. Both keep about fp32's precision."""
    env = os.environ.get("CNNRT_CUDA_TF32_SPLIT", "")
    return env if env in ("rna", "half") else "trunc"


def tf32_split_a(v):
    """The split of float32 activations the kernels do as they read them (tf32_split_mode), as
    (hi, lo) 32-bit patterns: for the emulators."""
    import numpy as np

    v = np.ascontiguousarray(v, np.float32)
    if tf32_split_mode() == "rna":
        hi = tf32_round(v)
        return hi.view(np.uint32), tf32_round(v - hi).view(np.uint32)
    mask = np.uint32(0xFFFFE000)
    bits = v.view(np.uint32)
    hi = ((bits + np.uint32(0x1000)) if tf32_split_mode() == "half" else bits) & mask
    return hi, (v - hi.view(np.float32)).view(np.uint32) & mask


def _finish(family: str, template: str, params: list, threads: int = 256, static: dict | None = None) -> Kernel:
    template = template.replace("$TF32_SPLIT", f"tf32_split_{tf32_split_mode()}")
    body = template.replace("$SIG", _sig(params))
    h = hashlib.sha1(body.encode()).hexdigest()[:12]
    name = f"{family}_{h}"
    k = Kernel(family, name, body.replace("$NAME", name), params, threads, static or {})
    GENERATED.setdefault(name, k)
    return k


# ----------------------------------------------------------------------------- convolution

@dataclass(frozen=True)
class Tile:
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    def check(self) -> None:
        t = self.threads
        assert self.bm % self.tm == 0 and self.bn % self.tn == 0, self
        assert t % 32 == 0 and t <= 1024, self
        assert t % self.bk == 0 and t % self.bn == 0, self
        assert self.tm in (1, 2, 4, 8) and self.tn in (1, 2, 4, 8), self


TILES = {
    "128x64": Tile(128, 64, 8, 8, 4),
    "128x32": Tile(128, 32, 8, 4, 4),
    "64x64": Tile(64, 64, 8, 4, 4),
    "64x32": Tile(64, 32, 8, 4, 2),
    "128x16": Tile(128, 16, 8, 4, 2),
    "32x32": Tile(32, 32, 8, 2, 2),
    "64x16": Tile(64, 16, 8, 4, 1),
    "32x16": Tile(32, 16, 8, 2, 2),
}


def _vec_loads(dst: str, src: str, count: int) -> str:
    """Read `count` consecutive floats of shared memory at `src` into registers dst[0..count)."""
    if count % 4 == 0:
        return " ".join(f"{{ const f4_t t = *reinterpret_cast<const f4_t*>(&{src} + {4 * i}); "
                        f"{dst}[{4 * i}] = t.x; {dst}[{4 * i + 1}] = t.y; {dst}[{4 * i + 2}] = t.z; {dst}[{4 * i + 3}] = t.w; }}"
                        for i in range(count // 4))
    if count == 2:
        return f"{{ const f2_t t = *reinterpret_cast<const f2_t*>(&{src}); {dst}[0] = t.x; {dst}[1] = t.y; }}"
    return " ".join(f"{dst}[{i}] = (&{src})[{i}];" for i in range(count))


CONV_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__($THREADS) $NAME(
    $SIG)
{
    constexpr int BM = $BM, BN = $BN, BK = $BK, TM = $TM, TN = $TN, THREADS = $THREADS;
    constexpr int AP = 4;
    constexpr int A_ROWS = THREADS / BK;
    constexpr int A_IT = (BM + A_ROWS - 1) / A_ROWS;
    constexpr int B_ROWS = THREADS / BN;
    constexpr int B_IT = (BK + B_ROWS - 1) / B_ROWS;
    __shared__ __align__(16) float As[2][BK][BM + AP];
    __shared__ __align__(16) float Bs[2][BK][BN];
    const int tid = threadIdx.x;
    // blockIdx.z: the group; with split-K (groups == 1) the share of K instead, kts steps of BK each
    const int g = $SPLITK ? 0 : blockIdx.z;
    const int KT_ALL = (K + BK - 1) / BK;
    const int kt0 = $SPLITK ? blockIdx.z * $KTS : 0;
    const int KT = $SPLITK ? min(KT_ALL, kt0 + $KTS) : KT_ALL;
    const int m0 = blockIdx.x * BM, o0 = blockIdx.y * BN;
    const int HWo = Ho * Wo;
    const int M = N * HWo;
    const int CH = O;
    const int a_k = tid % BK, a_r = tid / BK;
    int a_h[A_IT], a_w[A_IT];
    long long a_base[A_IT];
#pragma unroll
    for (int i = 0; i < A_IT; ++i) {
        const int r = a_r + i * A_ROWS;
        const int m = m0 + r;
        if (r < BM && m < M) {
            const int n = m / HWo, rem = m - n * HWo, ho = rem / Wo, wo = rem - ho * Wo;
            a_h[i] = ho * sh - ph;
            a_w[i] = wo * sw - pw;
            a_base[i] = (long long)n * H * W * C + (long long)g * Cg;
        } else {
            a_h[i] = -(1 << 28); a_w[i] = -(1 << 28); a_base[i] = 0;
        }
    }
    int a_c, a_kw, a_kh;  // where this thread's first k (kt0 * BK + a_k) lies: channel, tap column, tap row
    {
        const int k0 = kt0 * BK + a_k, t0 = k0 / Cg;
        a_c = k0 - t0 * Cg; a_kw = t0 % KW; a_kh = t0 / KW;
    }
    const int b_o = tid % BN, b_r = tid / BN;
    const int ob = o0 + b_o;
    const float* wg = w + (long long)g * K * Og;
    float ra[A_IT], rb[B_IT];

    auto load = [&](int kt) {
        const int k = kt * BK + a_k;
#pragma unroll
        for (int i = 0; i < A_IT; ++i) {
            float v = 0.f;
            const int hi = a_h[i] + a_kh * dh, wi = a_w[i] + a_kw * dw;
            if (k < K && (unsigned)hi < (unsigned)H && (unsigned)wi < (unsigned)W)
                v = ldf(x, a_base[i] + ((long long)hi * W + wi) * C + a_c);
            ra[i] = v;
        }
#pragma unroll
        for (int j = 0; j < B_IT; ++j) {
            const int kr = b_r + j * B_ROWS;
            const int kk = kt * BK + kr;
            rb[j] = (kr < BK && kk < K && ob < Og) ? wg[(long long)kk * Og + ob] : 0.f;
        }
        a_c += BK;
        while (a_c >= Cg) { a_c -= Cg; if (++a_kw == KW) { a_kw = 0; ++a_kh; } }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < A_IT; ++i) { const int r = a_r + i * A_ROWS; if (r < BM) As[buf][a_k][r] = ra[i]; }
#pragma unroll
        for (int j = 0; j < B_IT; ++j) { const int kr = b_r + j * B_ROWS; if (kr < BK) Bs[buf][kr][b_o] = rb[j]; }
    };

    const int tx = tid % (BN / TN), ty = tid / (BN / TN);
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

    if (kt0 < KT) {
        load(kt0);
        store(0);
    }
    __syncthreads();
    for (int kt = kt0; kt < KT; ++kt) {
        const int buf = (kt - kt0) & 1;
        if (kt + 1 < KT) load(kt + 1);
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a[TM], b[TN];
            $LOAD_A
            $LOAD_B
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (kt + 1 < KT) store(buf ^ 1);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + ty * TM + i;
        if (m >= M) continue;
        const long long nimg = m / HWo;
        (void)nimg;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int o = o0 + tx * TN + j;
            if (o >= Og) continue;
            const int c = g * Og + o;
            const long long idx = (long long)m * O + c;
$STORE
        }
    }
}
"""
CONV_STORE = """            float v = acc[i][j] + bias[c];
            $EPI
            stf(y, idx, v);"""
CONV_STORE_SPLITK = """            ws[(long long)blockIdx.z * M * O + idx] = acc[i][j];  // a partial sum: bias and epilogue after the reduction"""


def conv_kernel(tile: Tile, ti: str, to: str, epi=(), splitk: bool = False) -> Kernel:
    """Implicit-GEMM convolution, fp32 SIMT: M = N*Ho*Wo pixels, N = output channels of a group,
    K = KH*KW*Cg; grid (ceil(M/BM), ceil(Og/BN), groups). Weights packed [group][K][Og] float32.
    With splitk (groups == 1): grid.z shares K, each block `kts` steps of BK, and the fp32 partial
    sums go to ws[z][M][O] for splitk_reduce_kernel (bias and epilogue there)."""
    tile.check()
    eparams, ecode, _ = epilogue(() if splitk else epi)
    if splitk:
        params = [(f"const {CTYPE[ti]}* __restrict__", "x"), ("const float* __restrict__", "w"),
                  ("float* __restrict__", "ws")]
    else:
        params = ([(f"const {CTYPE[ti]}* __restrict__", "x"), ("const float* __restrict__", "w"),
                   ("const float* __restrict__", "bias"), (f"{CTYPE[to]}* __restrict__", "y")] + eparams)
    params += [("int", n) for n in ("N", "H", "W", "C", "Ho", "Wo", "O", "KW", "sh", "sw", "ph", "pw", "dh", "dw",
                                    "Cg", "Og", "K")] + ([("int", "kts")] if splitk else [])
    src = (CONV_TEMPLATE.replace("$STORE", CONV_STORE_SPLITK if splitk else CONV_STORE)
           .replace("$SPLITK", "true" if splitk else "false").replace("$KTS", "kts" if splitk else "0")
           .replace("$THREADS", str(tile.threads)).replace("$BM", str(tile.bm))
           .replace("$BN", str(tile.bn)).replace("$BK", str(tile.bk)).replace("$TM", str(tile.tm))
           .replace("$TN", str(tile.tn)).replace("$EPI", ecode)
           .replace("$LOAD_A", _vec_loads("a", "As[buf][kk][ty * TM]", tile.tm))
           .replace("$LOAD_B", _vec_loads("b", "Bs[buf][kk][tx * TN]", tile.tn)))
    return _finish("conv", src, params, tile.threads,
                   {"tile": tile, "ti": ti, "to": to, "epi": () if splitk else tuple(epi), "splitk": splitk})


# ----------------------------------------------------------------------------- tensor-core convolution

@dataclass(frozen=True)
class MmaTile:
    """A block tile of the tensor-core conv: BM pixels x BN output channels, warps_m x warps_n warps,
    each warp (BM/warps_m) x (BN/warps_n) made of m16n8k16 fragments; K steps of bk halves."""

    bm: int
    bn: int
    warps_m: int
    warps_n: int
    bk: int = 32
    stages: int = 0  # cp.async pipeline depth for the 16-byte gathers (0: register-staged double buffer)

    @property
    def threads(self) -> int:
        return 32 * self.warps_m * self.warps_n

    @property
    def smem(self) -> int:
        return self.smem_stages(2)

    @property
    def smem_out(self) -> int:
        """Shared memory of the staged epilogue: the block's fp32 accumulators, rows padded by 4."""
        return self.bm * (self.bn + 4) * 4

    def smem_stages(self, stages: int) -> int:
        """Shared memory of max(2, stages) buffers of A and B (bytes): the kernel's dynamic shared memory."""
        return max(2, stages) * (self.bm + self.bn) * (self.bk + MMA_PAD) * 2

    @property
    def regs(self) -> int:
        """Registers a thread needs, estimated: accumulators, fragments, addressing (ptxas: 47-126)."""
        mi, ni = self.bm // self.warps_m // 16, self.bn // self.warps_n // 8
        return -(-(40 + 4 * mi * ni + 4 * mi + 2 * ni) // 8) * 8

    def smem_kernel(self, stages: int, coalesce: bool) -> int:
        """The kernel's dynamic shared memory: the K-step buffers, or the staged epilogue's tile if larger."""
        return max(self.smem_stages(stages), self.smem_out if coalesce else 0)

    def per_sm(self, stages: int, cap: int = 16, coalesce: bool = True) -> int:
        """Blocks resident on one SM: the least of the thread, register and shared-memory limits."""
        return max(1, min(cap, 2048 // self.threads, 65536 // (self.threads * self.regs),
                          (227 * 1024) // (self.smem_kernel(stages, coalesce) + 1024)))

    def check(self) -> None:
        wtm, wtn = self.bm // self.warps_m, self.bn // self.warps_n
        assert self.bm % self.warps_m == 0 and self.bn % self.warps_n == 0, self
        assert wtm % 16 == 0 and wtn % 16 == 0, self  # whole m16 fragments; n8 fragments in ldmatrix.x4 pairs
        assert self.bk in (32, 64) and MMA_KPAD % self.bk == 0, self
        assert (self.threads % (self.bk // 8)) == 0, self
        assert self.smem <= 200 * 1024, self


MMA_BK = 32  # halves of K per shared-memory stage (two k16 steps) of the default tiles
MMA_KPAD = 64  # packed weights are zero-padded to a multiple of this (every tile's bk divides it)
MMA_PAD = 8  # halves of padding per shared row (80- or 144-byte rows): one ldmatrix's 8 rows hit 8 distinct bank groups
MMA_TILES = {
    "tc128x128k64": MmaTile(128, 128, 2, 4, 64, 3),
    "tc256x64": MmaTile(256, 64, 4, 2, 32, 3),
    "tc128x128": MmaTile(128, 128, 2, 4),
    "tc128x64": MmaTile(128, 64, 4, 2),
    "tc64x64": MmaTile(64, 64, 2, 2),
    "tc128x32": MmaTile(128, 32, 4, 1),
    "tc64x32": MmaTile(64, 32, 4, 1),
    "tc32x32": MmaTile(32, 32, 2, 2),
    "tc256x16": MmaTile(256, 16, 8, 1),
    "tc128x16": MmaTile(128, 16, 4, 1),
    "tc64x16": MmaTile(64, 16, 4, 1),
    "tc32x16": MmaTile(32, 16, 2, 1),
}
MMA_AVARIANTS = ("vec", "pointwise", "scalar")  # how A (the im2col rows) is gathered, see mma_conv_kernel
MMA_STAGES = 0  # pipeline depth without a tile (each tile carries its own: dev/cuda/mma_conv.py measured 3 stages
# a gain only for the warp tiles of 64x32 with 8 warps, and a loss for the others)
STATIC_SMEM = 48 * 1024  # a block gets more shared memory only after cudaFuncSetAttribute (the executor does it)


def mma_coalesce(tile: MmaTile | None = None) -> bool:
    """Whether the tensor-core conv's outputs go through shared memory and out 16 bytes a thread:
    for tiles 32 channels wide and more (measured: 15% faster on MobileNetV2's widest 1x1 conv,
    5% slower at 16 channels, where a warp's direct stores already fill 32-byte sectors).
    CNNRT_CUDA_MMA_STORE=direct or =coalesce sets it for every tile (an A/B switch)."""
    env = os.environ.get("CNNRT_CUDA_MMA_STORE", "")
    if env:
        return env != "direct"
    return tile is None or tile.bn >= 32


def mma_stages(variant: str, tile: MmaTile | None = None) -> int:
    """Pipeline depth of a tensor-core conv: 0 (register-staged double buffer) for the scalar gather,
    else the tile's own depth (cp.async stages; MMA_STAGES without a tile); CNNRT_CUDA_MMA_STAGES
    overrides it for every tile (0, or 2 to 6: an A/B switch)."""
    if variant == "scalar":
        return 0
    env = os.environ.get("CNNRT_CUDA_MMA_STAGES", "")
    v = int(env) if env else (tile.stages if tile is not None else MMA_STAGES)
    return 0 if v < 2 else min(v, 6)


# Pieces the tensor-core conv templates share (MMA_CONV_TEMPLATE, MMA_TF32_TEMPLATE), filled in by
# conv_pieces: the accumulators zeroed, and each A row's image and top-left tap (im2col)
ACC_ZERO = r"""    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;"""
IM2COL_ROWS = r"""    int a_h[A_IT], a_w[A_IT];
    long long a_base[A_IT];
#pragma unroll
    for (int i = 0; i < A_IT; ++i) {
        const int e = tid + i * THREADS;
        const int m = m0 + e / KC;
        if (e < A_CH && m < M) {
            const int n = m / HWo, rem = m - n * HWo, ho = rem / Wo, wo = rem - ho * Wo;
            a_h[i] = ho * sh - ph;
            a_w[i] = wo * sw - pw;
            a_base[i] = (long long)n * H * W * C;
        } else {
            a_h[i] = -(1 << 28); a_w[i] = -(1 << 28); a_base[i] = 0;
        }
    }"""


# the 16-byte A gather of a K step (cp.async into stage st, zero-filled outside the image and past K),
# for `$ELEM` activations, `$CHUNK` of them a chunk
A_GATHER = r"""#pragma unroll
        for (int i = 0; i < A_IT; ++i) {
            const int e = tid + i * THREADS;
            if (e < A_CH) {
                const int hi = a_h[i] + kh * dh, wi = a_w[i] + kw * dw;
                const bool ok = k < K && (unsigned)hi < (unsigned)H && (unsigned)wi < (unsigned)W;
                const $ELEM* src = ok ? x + a_base[i] + ((long long)hi * W + wi) * C + c : x;
                cp_async16(smem_u32(&As[st][e / KC][q * $CHUNK]), src, ok ? 16 : 0);
            }
        }"""
# the block's thread, warp and tile coordinates, and the GEMM's M
BLOCK_IDS = r"""    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WARPS_N, wn = warp - wm * WARPS_N;
    const int m0 = blockIdx.x * BM, o0 = blockIdx.y * BN;
    const int HWo = Ho * Wo;
    const int M = N * HWo;
    const int CH = O;
    (void)CH;"""
# the head of a K step's loop over the weight tile's 16-byte chunks: chunk e, its output channel o
B_ROWS = r"""#pragma unroll
        for (int j = 0; j < B_IT; ++j) {
            const int e = tid + j * THREADS;
            if (e < B_CH) {
                const int o = o0 + e / KC;
                const bool ok = o < O;"""
# the cp.async pipeline: its prologue and the head of the K loop (K steps kt_lo .. KT)
PIPE_HEAD = r"""#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {  // prologue: K steps kt_lo .. kt_lo + STAGES - 2 in flight
        if (kt_lo + s < KT) load_async(kt_lo + s, s);
        cp_async_commit();
    }
    int rd = 0, wr = STAGES - 1;  // the stage computed now, the stage loaded now
    for (int kt = kt_lo; kt < KT; ++kt) {
        cp_async_wait<STAGES - 2>();  // this thread's copies of step kt have landed ...
        __syncthreads();  // ... and everyone's; everyone is also done reading stage wr (step kt - 1)
        if (kt + STAGES - 1 < KT) load_async(kt + STAGES - 1, wr);
        cp_async_commit();
        const int buf = rd;
        rd = rd + 1 == STAGES ? 0 : rd + 1;
        wr = wr + 1 == STAGES ? 0 : wr + 1;"""


def conv_pieces(src: str, elem: str = "half_t") -> str:
    """A tensor-core conv template with the shared pieces filled in, for fp16 (half_t) or fp32
    (float) activations."""
    gather = A_GATHER.replace("$ELEM", elem).replace("$CHUNK", "8" if elem == "half_t" else "4")
    return (src.replace("$BLOCK_IDS", BLOCK_IDS).replace("$ACC_ZERO", ACC_ZERO).replace("$IM2COL_ROWS", IM2COL_ROWS)
            .replace("$A_GATHER", gather).replace("$B_ROWS", B_ROWS).replace("$PIPE_HEAD", PIPE_HEAD))


MMA_CONV_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__($THREADS) $NAME(
    $SIG)
{
    constexpr int BM = $BM, BN = $BN, BK = $BK, WARPS_N = $WARPS_N, THREADS = $THREADS;
    constexpr int WTM = BM / $WARPS_M, WTN = BN / WARPS_N, MI = WTM / 16, NI = WTN / 8;
    constexpr int LDS = BK + $PAD;
    constexpr int KC = BK / 8;  // 16-byte chunks per tile row
    constexpr int A_CH = BM * KC, B_CH = BN * KC;
    constexpr int A_IT = (A_CH + THREADS - 1) / THREADS, B_IT = (B_CH + THREADS - 1) / THREADS;
    constexpr int AVAR = $AVAR;  // 0: C % 8 == 0 (one 16-byte load per chunk), 1: 1x1 stride 1 unpadded, 2: any C
    constexpr int STAGES = $STAGES;  // 0: register-staged double buffer; 2 and up: a cp.async pipeline this deep
    constexpr int NBUF = STAGES > 2 ? STAGES : 2;
    extern __shared__ __align__(16) unsigned char smem_raw[];  // dynamic: NBUF x (A tile, B tile)
    half_t (*As)[BM][LDS] = reinterpret_cast<half_t (*)[BM][LDS]>(smem_raw);
    half_t (*Bs)[BN][LDS] = reinterpret_cast<half_t (*)[BN][LDS]>(smem_raw + NBUF * BM * LDS * 2);
$BLOCK_IDS
    const int q = tid % KC;  // this thread's chunk column, the same for all its chunks (THREADS % KC == 0)
$IM2COL_ROWS
    u4_t ra[A_IT], rb[B_IT];
#if $SPLITK
    // split-K: this block sums K steps [kt_lo, KT) and writes fp32 partial sums to its slice of ws
    const int kt_lo = blockIdx.z * kts, KT = min((K + BK - 1) / BK, kt_lo + kts);
#else
    const int kt_lo = 0, KT = (K + BK - 1) / BK;
#endif

    auto load = [&](int kt) {
        const int k = kt * BK + q * 8;
        if (AVAR == 2) {
            // the chunk's 8 (kh, kw, c) in K order, stepped from one division: shared by all rows
            int dhh[8], dww[8], cc[8];
            bool kv[8];
            {
                const int tap = k / C;
                int c = k - tap * C, kh = tap / KW, kw = tap - kh * KW;
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    dhh[e] = kh * dh; dww[e] = kw * dw; cc[e] = c; kv[e] = k + e < K;
                    if (++c == C) { c = 0; if (++kw == KW) { kw = 0; ++kh; } }
                }
            }
#pragma unroll
            for (int i = 0; i < A_IT; ++i) {
                u32_t wv[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    u32_t pair = 0;
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int e = 2 * j + h;
                        const int hi = a_h[i] + dhh[e], wi = a_w[i] + dww[e];
                        u32_t v = 0;
                        if (kv[e] && (unsigned)hi < (unsigned)H && (unsigned)wi < (unsigned)W)
                            v = x[a_base[i] + ((long long)hi * W + wi) * C + cc[e]];
                        pair |= v << (16 * h);
                    }
                    wv[j] = pair;
                }
                ra[i].x = wv[0]; ra[i].y = wv[1]; ra[i].z = wv[2]; ra[i].w = wv[3];
            }
        } else {
            int c = k, kh = 0, kw = 0;
            if (AVAR == 0) { const int tap = k / C; c = k - tap * C; kh = tap / KW; kw = tap - kh * KW; }
#pragma unroll
            for (int i = 0; i < A_IT; ++i) {
                const int hi = a_h[i] + kh * dh, wi = a_w[i] + kw * dw;
                u4_t v = {0u, 0u, 0u, 0u};
                if (k < K && (unsigned)hi < (unsigned)H && (unsigned)wi < (unsigned)W)
                    v = *reinterpret_cast<const u4_t*>(x + a_base[i] + ((long long)hi * W + wi) * C + c);
                ra[i] = v;
            }
        }
#pragma unroll
        for (int j = 0; j < B_IT; ++j) {
            const int e = tid + j * THREADS;
            const int o = o0 + e / KC;
            u4_t v = {0u, 0u, 0u, 0u};
            if (e < B_CH && o < O) v = *reinterpret_cast<const u4_t*>(w + (long long)o * Kp + kt * BK + q * 8);
            rb[j] = v;
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < A_IT; ++i) {
            const int e = tid + i * THREADS;
            if (e < A_CH) *reinterpret_cast<u4_t*>(&As[buf][e / KC][q * 8]) = ra[i];
        }
#pragma unroll
        for (int j = 0; j < B_IT; ++j) {
            const int e = tid + j * THREADS;
            if (e < B_CH) *reinterpret_cast<u4_t*>(&Bs[buf][e / KC][q * 8]) = rb[j];
        }
    };

$ACC_ZERO

#if $STAGES
    // the 16-byte gathers: cp.async straight into stage st (zero-filled outside the image and past K)
    auto load_async = [&](int kt, int st) {
        const int k = kt * BK + q * 8;
        int c = k, kh = 0, kw = 0;
        if (AVAR == 0) { const int tap = k / C; c = k - tap * C; kh = tap / KW; kw = tap - kh * KW; }
$A_GATHER
$B_ROWS
                const half_t* src = ok ? w + (long long)o * Kp + kt * BK + q * 8 : w;
                cp_async16(smem_u32(&Bs[st][e / KC][q * 8]), src, ok ? 16 : 0);
            }
        }
    };
    (void)ra; (void)rb;
$PIPE_HEAD
#else
    load(kt_lo);
    store(0);
    __syncthreads();
    for (int kt = kt_lo; kt < KT; ++kt) {
        const int buf = (kt - kt_lo) & 1;
        if (kt + 1 < KT) load(kt + 1);
#endif
#pragma unroll
        for (int ks = 0; ks < BK / 16; ++ks) {
            u32_t af[MI][4], bf[NI][2];
#pragma unroll
            for (int i = 0; i < MI; ++i)
                ldsm_x4(af[i], smem_u32(&As[buf][wm * WTM + i * 16 + (lane & 15)][ks * 16 + (lane >> 4) * 8]));
#pragma unroll
            for (int j = 0; j < NI / 2; ++j) {
                u32_t r[4];
                ldsm_x4(r, smem_u32(&Bs[buf][wn * WTN + j * 16 + (lane & 7) + ((lane >> 4) << 3)]
                                       [ks * 16 + ((lane >> 3) & 1) * 8]));
                bf[2 * j][0] = r[0]; bf[2 * j][1] = r[1]; bf[2 * j + 1][0] = r[2]; bf[2 * j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NI; ++j) mma16816(acc[i][j], af[i], bf[j][0], bf[j][1]);
        }
#if !$STAGES
        if (kt + 1 < KT) store(buf ^ 1);
        __syncthreads();
#endif
    }
#if $STAGES
    cp_async_wait<0>();  // no copy outstanding at exit (only empty groups can be left)
#endif
$EPILOGUE}
"""

STAGED_FINISH = r"""
    constexpr int CG = BN / 8;
    for (int t = tid; t < BM * CG; t += THREADS) {
        const int r = t / CG, g = t - r * CG;
        const int m = m0 + r, cb = o0 + g * 8;
        if (m >= M || cb >= O) continue;
        const long long nimg = m / HWo;
        (void)nimg;
        const f4_t lo = *reinterpret_cast<const f4_t*>(&Cs[r * LDC + g * 8]);
        const f4_t hi = *reinterpret_cast<const f4_t*>(&Cs[r * LDC + g * 8 + 4]);
        float vals[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
        $EPRE
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const int c = cb + e;
            if (c < O) {
                const long long idx = (long long)m * O + c;
                (void)idx;
                float v = vals[e] + bias[c];
                $EPI8
                vals[e] = v;
            }
        }
        st8(y, (long long)m * O + cb, vals, O - cb, (O & 7) == 0);
    }
"""[1:]  # the staged store's second half: each thread finishes 8 consecutive
# channels of a pixel from the block's accumulators in Cs (row r, LDC apart) with one 16-byte store

MMA_EPILOGUE = r"""
    const int gq = lane >> 2, tq = lane & 3;
#if $COALESCE
    // the block's accumulators go through shared memory, so that each thread then finishes 8
    // consecutive channels of one pixel: bias, epilogue, one 16-byte store (rows of 2-byte stores
    // scattered over 8 pixels per warp instruction left most of each memory transaction unused)
    constexpr int LDC = BN + 4;
    float* Cs = reinterpret_cast<float*>(smem_raw);
#if $STAGES
    cp_async_wait<0>();
#endif
    __syncthreads();  // every warp is done with the A and B tiles this overwrites
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr)
#pragma unroll
            for (int j = 0; j < NI; ++j)
                *reinterpret_cast<f2_t*>(&Cs[(wm * WTM + i * 16 + gq + 8 * hr) * LDC + wn * WTN + j * 8 + 2 * tq]) =
                    f2_t{acc[i][j][2 * hr], acc[i][j][2 * hr + 1]};
    __syncthreads();
""" + STAGED_FINISH + r"""#else
#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int m = m0 + wm * WTM + i * 16 + gq + 8 * hr;
            if (m >= M) continue;
            const long long nimg = m / HWo;
            (void)nimg;
#pragma unroll
            for (int j = 0; j < NI; ++j) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int c = o0 + wn * WTN + j * 8 + 2 * tq + e;
                    if (c >= O) continue;
                    const long long idx = (long long)m * O + c;
#if $SPLITK
                    ws[(long long)blockIdx.z * M * O + idx] = acc[i][j][2 * hr + e];
#else
                    float v = acc[i][j][2 * hr + e] + bias[c];
                    $EPI
                    stf(y, idx, v);
#endif
                }
            }
        }
    }
#endif
"""


def mma_variant(C: int, KH: int, KW: int, strides, pads) -> str:
    """How the tensor-core conv gathers its A rows: 'pointwise' (1x1, stride 1, no padding, C % 8 == 0:
    a row is one pixel's channels), 'vec' (C % 8 == 0: every 16-byte chunk of K lies in one tap), or
    'scalar' (any C: element by element, zero past K and outside the image)."""
    if C % 8:
        return "scalar"
    if KH == KW == 1 and tuple(strides) == (1, 1) and not any(pads):
        return "pointwise"
    return "vec"


CLUSTER_PRELUDE = r"""
#ifndef CNNRT_CLUSTER
#define CNNRT_CLUSTER
// thread block clusters (sm_90): every thread of the cluster's blocks arrives, then waits; the
// release/acquire pair makes each block's shared-memory writes visible to the other blocks
__device__ __forceinline__ void cluster_sync_all() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ u32_t cluster_rank() {
    u32_t r; asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r)); return r;
}
// the same shared-memory location in block `rank` of the cluster, and a 16-byte read of it
__device__ __forceinline__ u32_t cluster_map(u32_t addr, u32_t rank) {
    u32_t r; asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(addr), "r"(rank)); return r;
}
__device__ __forceinline__ f4_t ld_cluster_f4(u32_t addr) {
    f4_t v;
    asm volatile("ld.shared::cluster.v4.f32 {%0,%1,%2,%3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(addr) : "memory");
    return v;
}
#endif
"""

# the staged epilogue (STAGED_FINISH) rewritten for a cluster split-K: the lines replaced, and by what
_CLUSTER_FINISH = (
    ("    constexpr int CG = BN / 8;\n",
     "    constexpr int CG = BN / 8;\n"
     "    // split-K over the cluster: each of its CS blocks (grid.z) summed K steps of its own into Cs;\n"
     "    // block `rank` finishes rows rank, rank + CS, ... of the tile from all CS blocks' Cs (DSMEM)\n"
     "    constexpr int RB = (BM + CS - 1) / CS;\n"
     "    cluster_sync_all();  // every block's Cs is written and visible to the cluster\n"
     "    const int rank = (int)cluster_rank();\n"
     "    const u32_t cs0 = smem_u32(Cs);\n"),
    ("    for (int t = tid; t < BM * CG; t += THREADS) {\n",
     "    for (int t = tid; t < RB * CG; t += THREADS) {\n"),
    ("        const int r = t / CG, g = t - r * CG;\n",
     "        const int r = rank + CS * (t / CG), g = t % CG;\n"
     "        if (r >= BM) continue;\n"),
    ("        const f4_t lo = *reinterpret_cast<const f4_t*>(&Cs[r * LDC + g * 8]);\n"
     "        const f4_t hi = *reinterpret_cast<const f4_t*>(&Cs[r * LDC + g * 8 + 4]);\n"
     "        float vals[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};\n",
     "        float vals[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};\n"
     "        const u32_t a = cs0 + (u32_t)(r * LDC + g * 8) * 4u;\n"
     "#pragma unroll\n"
     "        for (int s = 0; s < CS; ++s) {  // in rank order: the sum does not depend on which block adds\n"
     "            const u32_t rs = cluster_map(a, (u32_t)s);\n"
     "            const f4_t lo = ld_cluster_f4(rs), hi = ld_cluster_f4(rs + 16u);\n"
     "            vals[0] += lo.x; vals[1] += lo.y; vals[2] += lo.z; vals[3] += lo.w;\n"
     "            vals[4] += hi.x; vals[5] += hi.y; vals[6] += hi.z; vals[7] += hi.w;\n"
     "        }\n"),
    ("        st8(y, (long long)m * O + cb, vals, O - cb, (O & 7) == 0);\n    }\n",
     "        st8(y, (long long)m * O + cb, vals, O - cb, (O & 7) == 0);\n    }\n"
     "    cluster_sync_all();  // no block leaves while another still reads its Cs\n"),
)

CLUSTER_MAX = 8  # the portable cluster size


def mma_conv_kernel(tile: MmaTile, variant: str, to: str, epi=(), splitk: bool = False,
                    stages: int | None = None, coalesce: bool | None = None, cluster: int = 0) -> Kernel:
    """Implicit-GEMM convolution on the tensor cores (groups == 1): fp16 activations (NHWC) and weights
    packed [O][Kp] fp16 (K = KH*KW*C in (kh, kw, c) order, zero-padded to Kp, a multiple of tile.bk),
    fp32 accumulation (mma.sync m16n8k16), bias and the fused epilogue in fp32.
    M = N*Ho*Wo pixels; grid (ceil(M/BM), ceil(O/BN)); register-staged double buffer in shared memory,
    fragments by ldmatrix.
    splitk: grid.z blocks share K, `kts` K steps each, and write fp32 partial sums to ws[z][M][O]
    (no bias, no epilogue): splitk_reduce_kernel finishes them. For layers with few output tiles
    (batch 1, 7x7 maps), where one block per tile would leave most SMs idle.
    stages (default mma_stages(variant)): 0 stages the next K step through registers into a double
    buffer (any gather); 2 or more runs a cp.async pipeline of that many shared-memory stages
    (16-byte gathers only). Either way the buffers are dynamic shared memory, tile.smem_stages(stages)
    bytes, which the launch must ask for (Kernel.static['smem']; above 48 KB the executor raises the
    kernel's limit).
    cluster (2 .. CLUSTER_MAX; sm_90 and later): split-K over a thread block cluster of that many
    blocks along grid.z (`kts` K steps each, as splitk), summed in the kernel: each block stages its
    partial sums in shared memory and finishes 1/cluster of the tile's rows from every block's
    (distributed shared memory), with bias and the epilogue; no workspace, no second launch."""
    tile.check()
    if cluster:
        assert 2 <= cluster <= CLUSTER_MAX and not splitk
        return _cluster_conv_kernel(tile, variant, to, epi, stages, cluster)
    stages = mma_stages(variant, tile) if stages is None else stages
    coalesce = not splitk and (mma_coalesce(tile) if coalesce is None else coalesce)
    assert not (stages and variant == "scalar"), "cp.async needs the 16-byte gathers"
    assert stages == 0 or stages >= 2
    eparams = epilogue(() if splitk else epi)[0]
    dims = [("int", n) for n in ("N", "H", "W", "C", "Ho", "Wo", "O", "KW", "sh", "sw", "ph", "pw", "dh", "dw", "K", "Kp")]
    if splitk:
        params = ([("const half_t* __restrict__", "x"), ("const half_t* __restrict__", "w"),
                   ("float* __restrict__", "ws")] + dims + [("int", "kts")])
    else:
        params = ([("const half_t* __restrict__", "x"), ("const half_t* __restrict__", "w"),
                   ("const float* __restrict__", "bias"), (f"{CTYPE[to]}* __restrict__", "y")] + eparams + dims)
    src = (fill_epilogue(conv_pieces(MMA_CONV_TEMPLATE), () if splitk else epi)
           .replace("$THREADS", str(tile.threads)).replace("$BM", str(tile.bm))
           .replace("$BN", str(tile.bn)).replace("$BK", str(tile.bk)).replace("$WARPS_M", str(tile.warps_m))
           .replace("$WARPS_N", str(tile.warps_n)).replace("$PAD", str(MMA_PAD))
           .replace("$AVAR", str(MMA_AVARIANTS.index(variant))).replace("$SPLITK", str(int(splitk)))
           .replace("$STAGES", str(stages)).replace("$COALESCE", str(int(coalesce))))
    return _finish("mma_conv", src, params, tile.threads,
                   {"tile": tile, "variant": variant, "ti": "f16", "to": "f32" if splitk else to,
                    "epi": () if splitk else tuple(epi), "splitk": splitk, "stages": stages,
                    "coalesce": coalesce,
                    "smem": tile.smem_kernel(stages, coalesce)})


def _clustered(src: str, threads: int, cs: int) -> str:
    """A tensor-core conv's source (split-K K range, staged epilogue) as a cluster of cs blocks along
    grid.z whose staged epilogue sums the cluster's partial tiles (_CLUSTER_FINISH)."""
    head = f'extern "C" __global__ void __launch_bounds__({threads}) $NAME('
    assert src.count(head) == 1
    src = CLUSTER_PRELUDE + src.replace(
        head, f'extern "C" __global__ void __cluster_dims__(1, 1, {cs}) __launch_bounds__({threads}) $NAME(')
    src = src.replace("    const int CH = O;\n", f"    const int CH = O;\n    constexpr int CS = {cs};  // the cluster's blocks\n", 1)
    for old, new in _CLUSTER_FINISH:
        assert src.count(old) == 1, old
        src = src.replace(old, new)
    return src


def _cluster_conv_kernel(tile: MmaTile, variant: str, to: str, epi, stages: int | None, cs: int) -> Kernel:
    """mma_conv_kernel(cluster=cs): the K range of split-K, the staged epilogue (STAGED_FINISH)
    rewritten to sum the cluster's partial tiles (_CLUSTER_FINISH)."""
    stages = mma_stages(variant, tile) if stages is None else stages
    dims = [("int", n) for n in ("N", "H", "W", "C", "Ho", "Wo", "O", "KW", "sh", "sw", "ph", "pw", "dh", "dw", "K", "Kp")]
    params = ([("const half_t* __restrict__", "x"), ("const half_t* __restrict__", "w"),
               ("const float* __restrict__", "bias"), (f"{CTYPE[to]}* __restrict__", "y")] + epilogue(epi)[0]
              + dims + [("int", "kts")])
    src = (fill_epilogue(conv_pieces(MMA_CONV_TEMPLATE), epi)
           .replace("$THREADS", str(tile.threads)).replace("$BM", str(tile.bm))
           .replace("$BN", str(tile.bn)).replace("$BK", str(tile.bk)).replace("$WARPS_M", str(tile.warps_m))
           .replace("$WARPS_N", str(tile.warps_n)).replace("$PAD", str(MMA_PAD))
           .replace("$AVAR", str(MMA_AVARIANTS.index(variant))).replace("$SPLITK", "1")
           .replace("$STAGES", str(stages)).replace("$COALESCE", "1"))
    return _finish("mma_conv", _clustered(src, tile.threads, cs), params, tile.threads,
                   {"tile": tile, "variant": variant, "ti": "f16", "to": to, "epi": tuple(epi), "splitk": False,
                    "cluster": cs, "stages": stages, "coalesce": True, "smem": tile.smem_kernel(stages, True)})


MMA_TF32_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__($THREADS) $NAME(
    $SIG)
{
    // mma_conv_kernel for fp32 activations (C % 4 == 0) in 3xTF32: the im2col tile in fp32, a
    // 16-byte chunk 4 channels of one tap; K steps of 8 floats, three m16n8k8 tf32 products each
    // (a_lo*b_hi + a_hi*b_lo + a_hi*b_hi, the small terms first: about fp32's precision); the
    // weights split on the host (wh + wl, [O][Kp] fp32), A split as it is read. A k8 step of fp32
    // rows is 32 bytes, the same bytes as a k16 step of fp16: the fp16 conv's ldmatrix addressing,
    // in floats, gives the tf32 fragments
    constexpr int BM = $BM, BN = $BN, BK = $BKF, WARPS_N = $WARPS_N, THREADS = $THREADS;
    constexpr int WTM = BM / $WARPS_M, WTN = BN / WARPS_N, MI = WTM / 16, NI = WTN / 8;
    constexpr int LDS = BK + 4;  // floats: 16-byte padded rows
    constexpr int KC = BK / 4;  // 16-byte chunks per tile row
    constexpr int A_CH = BM * KC, B_CH = BN * KC;
    constexpr int A_IT = (A_CH + THREADS - 1) / THREADS, B_IT = (B_CH + THREADS - 1) / THREADS;
    constexpr int STAGES = $STAGES;
    static_assert(THREADS % KC == 0 && STAGES >= 2, "tf32 tile");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    float (*As)[BM][LDS] = reinterpret_cast<float (*)[BM][LDS]>(smem_raw);
    float (*Bh)[BN][LDS] = reinterpret_cast<float (*)[BN][LDS]>(smem_raw + STAGES * BM * LDS * 4);
    float (*Bl)[BN][LDS] = reinterpret_cast<float (*)[BN][LDS]>(smem_raw + STAGES * (BM + BN) * LDS * 4);
$BLOCK_IDS
    const int q = tid % KC;
$IM2COL_ROWS
    const int kt_lo = 0, KT = (K + BK - 1) / BK;
    auto load_async = [&](int kt, int st) {
        const int k = kt * BK + q * 4;
        const int tap = k / C, c = k - tap * C, kh = tap / KW, kw = tap - kh * KW;
$A_GATHER
$B_ROWS
                const long long off = (long long)o * Kp + kt * BK + q * 4;
                cp_async16(smem_u32(&Bh[st][e / KC][q * 4]), ok ? wh + off : wh, ok ? 16 : 0);
                cp_async16(smem_u32(&Bl[st][e / KC][q * 4]), ok ? wl + off : wl, ok ? 16 : 0);
            }
        }
    };

$ACC_ZERO
$PIPE_HEAD
#pragma unroll
        for (int ks = 0; ks < BK / 8; ++ks) {
            u32_t ah[MI][4], al[MI][4], bh[NI][2], bl[NI][2];
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                u32_t raw[4];
                ldsm_x4(raw, smem_u32(&As[buf][wm * WTM + i * 16 + (lane & 15)][ks * 8 + (lane >> 4) * 4]));
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const float v = __uint_as_float(raw[r]);
                    $TF32_SPLIT(v, ah[i][r], al[i][r]);
                }
            }
#pragma unroll
            for (int j = 0; j < NI / 2; ++j) {
                const int row = wn * WTN + j * 16 + (lane & 7) + ((lane >> 4) << 3), col = ks * 8 + ((lane >> 3) & 1) * 4;
                u32_t r[4];
                ldsm_x4(r, smem_u32(&Bh[buf][row][col]));
                bh[2 * j][0] = r[0]; bh[2 * j][1] = r[1]; bh[2 * j + 1][0] = r[2]; bh[2 * j + 1][1] = r[3];
                ldsm_x4(r, smem_u32(&Bl[buf][row][col]));
                bl[2 * j][0] = r[0]; bl[2 * j][1] = r[1]; bl[2 * j + 1][0] = r[2]; bl[2 * j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NI; ++j) mma1688x3(acc[i][j], ah[i], al[i], bh[j], bl[j]);
        }
    }
$EPILOGUE}
"""

MMA_TF32_STAGES = 3


def mma_tf32_smem(tile: MmaTile, stages: int = MMA_TF32_STAGES) -> int:
    """mma_tf32_conv_kernel's dynamic shared memory: the stages of A, wh and wl (fp32, K steps of
    tile.bk / 2 floats, rows padded by 16 bytes), or the staged epilogue's tile if larger."""
    return max(stages * (tile.bm + 2 * tile.bn) * (tile.bk // 2 + 4) * 4, tile.smem_out)


TF32_K_RANGE = "    const int kt_lo = 0, KT = (K + BK - 1) / BK;\n"


def mma_tf32_conv_kernel(tile: MmaTile, to: str, epi=(), stages: int = MMA_TF32_STAGES, cluster: int = 0) -> Kernel:
    """The tensor-core conv (mma_conv_kernel's tiles and im2col gather) for fp32 activations with
    C % 4 == 0, in 3xTF32 (MMA_TF32_TEMPLATE): fp32 convs that the 3xTF32 halo conv cannot hold
    (its fp32 footprint too large: ResNet-18's 128- to 512-channel convs) off the SIMT kernel.
    Weights as halo_tf32_kernel's: wh and wl, [O][Kp] fp32 (tf32_split). K steps of tile.bk / 2
    floats (the same bytes as the fp16 tile's); a cp.async pipeline of `stages`; the staged
    epilogue. cluster (2 .. CLUSTER_MAX, sm_90): split-K over a thread block cluster along grid.z,
    `kts` K steps a block, summed in the kernel as mma_conv_kernel(cluster=...) does: small batches,
    whose few output tiles left the SMs idle (they ran on the SIMT conv's split-K)."""
    tile.check()
    assert stages >= 2 and tile.bk % 16 == 0 and (cluster == 0 or 2 <= cluster <= CLUSTER_MAX)
    dims = [("int", n) for n in ("N", "H", "W", "C", "Ho", "Wo", "O", "KW", "sh", "sw", "ph", "pw", "dh", "dw", "K", "Kp")]
    params = ([("const float* __restrict__", "x"), ("const float* __restrict__", "wh"),
               ("const float* __restrict__", "wl"), ("const float* __restrict__", "bias"),
               (f"{CTYPE[to]}* __restrict__", "y")] + epilogue(epi)[0] + dims + ([("int", "kts")] if cluster else []))
    src = (fill_epilogue(conv_pieces(MMA_TF32_TEMPLATE, "float"), epi)
           .replace("$THREADS", str(tile.threads)).replace("$BM", str(tile.bm)).replace("$BN", str(tile.bn))
           .replace("$BKF", str(tile.bk // 2)).replace("$WARPS_M", str(tile.warps_m))
           .replace("$WARPS_N", str(tile.warps_n)).replace("$SPLITK", "0")
           .replace("$STAGES", str(stages)).replace("$COALESCE", "1"))
    static = {"tile": tile, "ti": "f32", "to": to, "epi": tuple(epi), "stages": stages,
              "smem": mma_tf32_smem(tile, stages)}
    if cluster:
        assert src.count(TF32_K_RANGE) == 1
        src = _clustered(src.replace(TF32_K_RANGE, "    // split-K: this block sums K steps [kt_lo, KT)\n"
                                     "    const int kt_lo = blockIdx.z * kts, KT = min((K + BK - 1) / BK, kt_lo + kts);\n"),
                         tile.threads, cluster)
        static["cluster"] = cluster
    return _finish("mma_conv_tf32", src, params, tile.threads, static)


# ----------------------------------------------------------------------------- tensor-core conv on Hopper's wgmma

@dataclass(frozen=True)
class WgmmaTile:
    """A block of the wgmma conv: wg warpgroups of 128 threads, each 64 output pixels by bn output
    channels (one m64n{bn}k16 instruction a K step of 16), K tiles of 64, `stages` cp.async stages.
    pipe 1 keeps one wgmma group in flight across K tiles (the loads then run a tile less ahead);
    swz 1 lays each row's 64 halves of K out in the 128-byte swizzle (16-byte chunk j of row r at
    j ^ r % 8), else the no-swizzle core-matrix layout."""

    wg: int
    bn: int
    stages: int
    pipe: int = 0
    swz: int = 0
    coal: int = 1  # the staged store: accumulators through shared memory, 16-byte stores (0: direct)
    bk: int = 64

    @property
    def bm(self) -> int:
        return 64 * self.wg

    @property
    def threads(self) -> int:
        return 128 * self.wg

    @property
    def smem(self) -> int:
        """Dynamic shared memory: the stages, and 1 KB of slack to align them to the swizzle atom."""
        return self.stages * (self.bm + self.bn) * self.bk * 2 + 1024

    def check(self) -> None:
        assert self.wg in (1, 2) and self.bn in (64, 128, 256) and self.bk == 64, self
        assert self.stages - 1 - self.pipe >= 1 and self.smem <= 227 * 1024, self
        assert self.bm * (self.bn + 4) * 4 <= self.smem - 1024, self  # the staged store fits the stages


WGMMA_TILES = {  # dev/cuda/wgmma_gemm.py times them side by side
    "wg1n64": WgmmaTile(1, 64, 4), "wg2n64": WgmmaTile(2, 64, 4), "wg2n128": WgmmaTile(2, 128, 4),
    "wg1n128": WgmmaTile(1, 128, 4), "wg2n256": WgmmaTile(2, 256, 3), "wg2n128p": WgmmaTile(2, 128, 4, 1),
    "wg2n128s": WgmmaTile(2, 128, 4, 0, 1), "wg2n128sp": WgmmaTile(2, 128, 4, 1, 1),
    "wg2n256sp": WgmmaTile(2, 256, 4, 1, 1), "wg2n64sp": WgmmaTile(2, 64, 5, 1, 1),
    "wg2n128spd": WgmmaTile(2, 128, 4, 1, 1, 0),  # the direct store, for the A/B
}

WGMMA_PRELUDE = r"""
#ifndef CNNRT_WGMMA_DESC
#define CNNRT_WGMMA_DESC
// a K-major shared-memory matrix descriptor: start, leading and stride byte offsets (/16);
// swz 0 no swizzle ("interleave"), 1 the 128-byte swizzle (bits 62-63)
__device__ __forceinline__ unsigned long long wgmma_desc(u32_t addr, u32_t lbo, u32_t sbo, unsigned long long swz) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)((lbo & 0x3FFFF) >> 4) << 16)
           | ((unsigned long long)((sbo & 0x3FFFF) >> 4) << 32) | (swz << 62);
}
#endif
"""

WGMMA_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__($THREADS) $NAME(
    $SIG)
{
    // implicit GEMM: row m = output pixel (n, ho, wo), column k = (kh, kw, c) of K = KH*KW*C; the
    // weights packed [O][Kp] as for mma_conv_kernel. Needs C % 8 == 0 (16-byte chunks of one tap).
    constexpr int WG = $WG, BM = 64 * WG, BN = $BN, BK = 64, STAGES = $STAGES, THREADS = 128 * WG;
    constexpr int PIPE = $PIPE, SWZ = $SWZ, D = STAGES - 1 - PIPE;  // D: K tiles loaded ahead
    constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2, STAGE_BYTES = A_BYTES + B_BYTES;
    static_assert(THREADS % BM == 0 && D >= 1, "each thread loads one row of A");
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const int tid = threadIdx.x, wg = tid >> 7, lane = tid & 31, warp = (tid >> 5) & 3;
    const int HWo = Ho * Wo, M = N * HWo;
    const int m0 = blockIdx.x * BM, o0 = blockIdx.y * BN;
    const int KT = (K + BK - 1) / BK;
    const int CH = O;
    (void)CH;
    const u32_t s0 = (smem_u32(smem_raw) + 1023u) & ~1023u;  // swizzle atoms (8 rows of 128 bytes) 1 KB-aligned
    // where 16-byte chunk kc of row r of a [rows x BK] tile lives, from the tile's base
    auto at = [&](int r, int kc, int rows) -> u32_t {
        return SWZ ? (u32_t)(r * 128 + ((kc ^ (r & 7)) << 4)) : (u32_t)((kc * rows + r) * 16);
    };

    // this thread's row of A (its output pixel), found once
    const int ar = tid % BM, am = m0 + ar;
    const bool arow = am < M;
    const int an = arow ? am / HWo : 0, arem = am - an * HWo;
    const int aho = arem / Wo, awo = arem - aho * Wo;
    const int hb = aho * sh - ph, wb = awo * sw - pw;
    const half_t* xrow = x + (long long)an * H * W * C;

    auto load = [&](int kt, int stage) {
        const u32_t base = s0 + stage * STAGE_BYTES;
        const int k0 = kt * BK;
        for (int kc = tid / BM; kc < BK / 8; kc += THREADS / BM) {
            const int k = k0 + kc * 8, tap = k / C, c = k - tap * C, kh = tap / KW, kw = tap - kh * KW;
            const int hi = hb + kh * dh, wi = wb + kw * dw;
            const bool ok = arow && k < K && (unsigned)hi < (unsigned)H && (unsigned)wi < (unsigned)W;
            cp_async16(base + at(ar, kc, BM), ok ? xrow + ((long long)hi * W + wi) * C + c : x, ok ? 16 : 0);
        }
        for (int e = tid; e < BN * (BK / 8); e += THREADS) {
            const int r = e % BN, kc = e / BN;
            const int g = o0 + r, k = k0 + kc * 8;
            const bool ok = g < O && k < K;
            cp_async16(base + A_BYTES + at(r, kc, BN), ok ? w + (long long)g * Kp + k : w, ok ? 16 : 0);
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
            // k16 step s: no swizzle, its two core-matrix columns of K start 2s planes in (leading
            // byte offset: a plane, rows * 16 bytes; stride byte offset: 8 rows, 128 bytes); swizzled,
            // 32 bytes into each 128-byte row (stride byte offset: an atom of 8 rows, 1 KB)
            const unsigned long long da = SWZ ? wgmma_desc(sa + wg * 64 * 128 + 32 * s, 16, 1024, 1)
                                              : wgmma_desc(sa + wg * 64 * 16 + 2 * s * BM * 16, BM * 16, 128, 0);
            const unsigned long long db = SWZ ? wgmma_desc(sb + 32 * s, 16, 1024, 1)
                                              : wgmma_desc(sb + 2 * s * BN * 16, BN * 16, 128, 0);
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
#if $COAL
    // staged: the block's accumulators through shared memory (the stages are free: every wgmma has
    // completed and every copy landed), then each thread finishes 8 consecutive channels of a pixel
    // with one 16-byte store (fp16)
    constexpr int LDC = BN + 4;
    float* Cs = reinterpret_cast<float*>(smem_raw + (s0 - smem_u32(smem_raw)));
    __syncthreads();
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr)
            *reinterpret_cast<f2_t*>(&Cs[(wg * 64 + warp * 16 + gq + 8 * hr) * LDC + j * 8 + 2 * tq]) =
                f2_t{acc[4 * j + 2 * hr], acc[4 * j + 2 * hr + 1]};
    __syncthreads();
""" + STAGED_FINISH + r"""#else
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const int m = m0 + wg * 64 + warp * 16 + gq + 8 * hr;
        if (m >= M) continue;
        const long long nimg = m / HWo;
        (void)nimg;
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int c = o0 + j * 8 + 2 * tq + e;
                if (c >= O) continue;
                const long long idx = (long long)m * O + c;
                float v = acc[4 * j + 2 * hr + e] + bias[c];
                $EPI
                stf(y, idx, v);
            }
        }
    }
#endif
}
"""


def wgmma_asm(bn: int, acc: str = "acc") -> str:
    """The inline PTX of one m64n{bn}k16 wgmma into {acc}[bn/2], D += A.B, both from shared memory
    (descriptors da, db)."""
    n = bn // 2
    regs = ", ".join(f"%{i}" for i in range(n))
    outs = ", ".join(f'"+f"({acc}[{i}])' for i in range(n))
    return ('asm volatile("{ .reg .pred p; setp.ne.b32 p, %' + str(n + 2) + ', 0; '
            f'wgmma.mma_async.sync.aligned.m64n{bn}k16.f32.f16.f16 {{{regs}}}, %{n}, %{n + 1}, p, 1, 1, 0, 0; }}"\n'
            f'                : {outs}\n'
            '                : "l"(da), "l"(db), "r"(1) : "memory");')


def wgmma_conv_kernel(tile: WgmmaTile, to: str, epi=()) -> Kernel:
    """Implicit-GEMM convolution on Hopper's warpgroup MMA (`wgmma`, sm_90a only: the kernel is
    compiled apart, static 'arch'): fp16 NHWC input with C % 8 == 0, weights packed [O][Kp] fp16 as
    for mma_conv_kernel, fp32 accumulation, bias and the fused epilogue in fp32, stored through
    shared memory 8 channels at a time (tile.coal) or directly.
    Grid (ceil(M/bm), ceil(O/bn)), tile.threads threads, tile.smem bytes of dynamic shared memory.
    Opt-in (cuda_plan.wgmma_enabled) until it has run on a GPU."""
    tile.check()
    eparams, ecode, _ = epilogue(epi)
    dims = [("int", n) for n in ("N", "H", "W", "C", "Ho", "Wo", "O", "KW", "sh", "sw", "ph", "pw", "dh", "dw", "K", "Kp")]
    params = ([("const half_t* __restrict__", "x"), ("const half_t* __restrict__", "w"),
               ("const float* __restrict__", "bias"), (f"{CTYPE[to]}* __restrict__", "y")] + eparams + dims)
    pre, code8 = epilogue8(epi)
    src = WGMMA_PRELUDE + (WGMMA_TEMPLATE.replace("$WGMMA", wgmma_asm(tile.bn)).replace("$EPRE", pre)
                           .replace("$EPI8", code8).replace("$EPI", ecode).replace("$COAL", str(tile.coal))
                           .replace("$THREADS", str(tile.threads)).replace("$WG", str(tile.wg))
                           .replace("$BN", str(tile.bn)).replace("$STAGES", str(tile.stages))
                           .replace("$PIPE", str(tile.pipe)).replace("$SWZ", str(tile.swz)))
    return _finish("wgmma_conv", src, params, tile.threads,
                   {"tile": tile, "ti": "f16", "to": to, "epi": tuple(epi), "arch": "sm_90a", "smem": tile.smem})


# ----------------------------------------------------------------------------- tensor-core conv, input in shared memory

@dataclass(frozen=True)
class HaloGeom:
    """A conv layer's geometry, fixed when its halo kernel is compiled (only the batch N and the
    packed weights' row length Kp are run-time arguments)."""

    C: int
    H: int
    W: int
    Ho: int
    Wo: int
    KH: int
    KW: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int


@dataclass(frozen=True)
class HaloTile:
    """A block of the halo conv: `imgs` whole images, or (imgs == 1) a band of `rows` output rows of
    one image, at full width; bn output channels; warps of 32 pixels x (bn / warps_n) channels.
    tf32: the fp32 kernel (fp32 footprint, K steps of 8, split weights), else fp16 (K steps of 16)."""

    rows: int
    imgs: int
    bn: int
    warps_n: int
    tf32: bool = False
    bstages: int = 0  # 0: the block's weights resident in shared memory; 2+: streamed in chunks, this many stages
    kch: int = 4  # K steps a streamed chunk of weights
    wg: bool = False  # Hopper's wgmma (halo_wgmma_kernel): whole warpgroups of 4 warps, warps_n 1, streamed
    presplit: bool = False  # tf32: the footprint split into tf32 hi and lo parts once, both kept in shared memory

    @property
    def esize(self) -> int:
        return 4 if self.tf32 else 2

    @property
    def kstep(self) -> int:
        return 8 if self.tf32 else 16

    def pixels(self, g: HaloGeom) -> int:
        return self.imgs * self.rows * g.Wo

    def warps_m(self, g: HaloGeom) -> int:
        w = -(-self.pixels(g) // 32)
        return -(-w // 4) * 4 if self.wg else w  # wgmma: whole warpgroups (the extra warps' rows are empty)

    def threads(self, g: HaloGeom) -> int:
        return 32 * self.warps_m(g) * self.warps_n

    def bands(self, g: HaloGeom) -> int:
        return -(-g.Ho // self.rows)

    def th_in(self, g: HaloGeom) -> int:
        return (self.rows - 1) * g.sh + (g.KH - 1) * g.dh + 1

    def tw_in(self, g: HaloGeom) -> int:
        return (g.Wo - 1) * g.sw + (g.KW - 1) * g.dw + 1

    def positions(self, g: HaloGeom) -> int:
        """Input pixels held in shared memory (the footprint); one more, all zero, follows them."""
        return self.imgs * self.th_in(g) * self.tw_in(g)

    def ks(self, g: HaloGeom) -> int:
        return -(-(g.KH * g.KW * g.C) // self.kstep)

    def smem_x(self, g: HaloGeom) -> int:
        return (self.positions(g) + 1) * g.C * self.esize * (2 if self.presplit else 1)

    def smem_b(self, g: HaloGeom) -> int:
        """The block's weights, rows padded by 16 bytes (two copies for tf32: the high and low parts)."""
        steps = self.kch if self.bstages else self.ks(g)
        if self.wg:  # the wgmma core-matrix layout: no row padding
            return self.bstages * self.bn * steps * 32
        return (2 if self.tf32 else 1) * max(1, self.bstages) * self.bn * (steps * self.kstep * self.esize + 16)

    def smem(self, g: HaloGeom, coalesce: bool) -> int:
        out = self.warps_m(g) * 32 * (self.bn + 4) * 4 if coalesce else 0
        return max(self.smem_x(g) + self.smem_b(g), out)

    def blocks(self, g: HaloGeom, n: int) -> int:
        """grid.x: bands of each image, or groups of `imgs` images."""
        return n * self.bands(g) if self.imgs == 1 else -(-n // self.imgs)


HALO_PIXELS = 256  # output pixels a block aims for (8 warps of 32)
HALO_SMEM = 100 * 1024  # at most this much shared memory a block (two blocks an SM)


def halo_swizzle(C: int, esize: int = 2) -> tuple[int, int]:
    """(shift, mask): 16-byte chunk j of footprint position P is stored at chunk j ^ ((P >> shift) & mask),
    so the 8 rows of one ldmatrix (8 consecutive positions, C * esize bytes apart) fall in 8 distinct
    16-byte bank groups. Only for chunks a position a power of two (else no swizzle: mask 0)."""
    cpp = C * esize // 16
    if cpp & (cpp - 1):
        return 0, 0
    if cpp >= 8:
        return 0, 7
    return {1: (3, 0), 2: (2, 1), 4: (1, 3)}[cpp]


def halo_tile(g: HaloGeom, O: int, n: int, pixels: int = HALO_PIXELS, tf32: bool = False,
              bstages: int = 0, presplit: bool = False) -> HaloTile | None:
    """The halo tile for a layer (about `pixels` output pixels a block), or None where it does not
    apply (16-byte chunks: C % 8 for fp16, C % 4 for tf32; the footprint too big). bstages: the
    weights streamed through that many shared-memory stages, for layers whose weights do not fit
    beside the footprint. presplit (tf32): the footprint kept as tf32 hi and lo parts (twice the
    bytes)."""
    if g.C % (4 if tf32 else 8):
        return None
    bn = 16 if O <= 16 else 32 if O <= 32 else 64
    warps_n = bn // 32 if bn >= 64 else 1
    hw = g.Ho * g.Wo
    # half the pixels where the footprint does not fit; fp32 (twice the bytes) a quarter if need be
    for px in (pixels, pixels // 2) + ((pixels // 4,) if tf32 else ()):
        split = presplit and tf32
        if hw <= px:
            t = HaloTile(g.Ho, max(1, min(n, px // hw)), bn, warps_n, tf32, bstages, presplit=split)
        else:
            t = HaloTile(max(1, min(g.Ho, px // g.Wo)), 1, bn, warps_n, tf32, bstages, presplit=split)
        if t.threads(g) <= 512 and t.smem(g, mma_coalesce_halo(t)) <= HALO_SMEM:
            return t
    return None


def mma_coalesce_halo(t: HaloTile) -> bool:
    """The halo conv's store: as mma_coalesce (shared memory for tiles 32 or more channels wide)."""
    env = os.environ.get("CNNRT_CUDA_MMA_STORE", "")
    if env:
        return env != "direct"
    return t.bn >= 32


# pieces the halo templates share (each template says where with $HALO_* lines)
HALO_PIECES = {
    "$HALO_GEOM\n": r"""    constexpr int C = $C, H = $H, W = $W, Ho = $HO, Wo = $WO, KH = $KH, KW = $KW;
    constexpr int SH = $SH, SW = $SW, PH = $PH, PW = $PW, DH = $DH, DW = $DW;
    constexpr int R = $ROWS, IMG = $IMGS, BANDS = (Ho + R - 1) / R;
    constexpr int THI = (R - 1) * SH + (KH - 1) * DH + 1, TWI = (Wo - 1) * SW + (KW - 1) * DW + 1;
""",
    "$HALO_BLOCK\n": r"""    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WARPS_N, wn = warp - wm * WARPS_N;
    const int n0 = (blockIdx.x / BANDS) * IMG, ho0 = (blockIdx.x % BANDS) * R;
    const int o0 = blockIdx.y * BN;
    const int nimgs = min(IMG, N - n0), rows = min(R, Ho - ho0);
    const int HWo = Ho * Wo;
    const int m0 = (n0 * Ho + ho0) * Wo;
    const int M = m0 + (nimgs - 1) * HWo + rows * Wo;  // this block's pixels are m0 .. M - 1
    const int CH = O;
    (void)CH;
""",
    "$HALO_FOOTPRINT\n": r"""    for (int e = tid; e < NPOS * CPP; e += THREADS) {
        const int j = e % CPP, P = e / CPP;
        const int img = P / (THI * TWI), rem = P - img * (THI * TWI);
        const int ri = rem / TWI, wi = rem - ri * TWI;
        const int hi = ho0 * SH - PH + ri, wg = wi - PW;
        const bool ok = img < nimgs && (unsigned)hi < (unsigned)H && (unsigned)wg < (unsigned)W;
        const $XT* src = ok ? x + (((long long)(n0 + img) * H + hi) * W + wg) * C + j * $CE : x;
        cp_async16(smem_u32(&Xs[P * CPP + (j ^ ((P >> SWS) & SWM))]), src, ok ? 16 : 0);
    }
""",
    "$HALO_POS\n": r"""    int pos[MI];
#pragma unroll
    for (int i = 0; i < MI; ++i) {
        const int p = wm * WTM + i * 16 + (lane & 15);
        const int img = p / (R * Wo), rem = p - img * (R * Wo), r = rem / Wo, wo = rem - r * Wo;
        pos[i] = m0 + p < M ? (img * THI + r * SH) * TWI + wo * SW : -1;
    }
""",
    "$HALO_ACC\n": r"""    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
""",
}

# one K step of the halo convs (resident weights: B fragments at K step ks; streamed: at step kk of
# the chunk in its stage, one loop deeper)
HALO_KSTEP = r"""
        const int k = (2 * ks + (lane >> 4)) * 8;  // this lane's 8 halves of K: one tap, channels c .. c + 7
        const int tap = k / C, c = k - tap * C, kh = tap / KW, kw = tap - kh * KW;
        const int toff = kh * DH * TWI + kw * DW, j = c / 8;
        u32_t af[MI][4], bf[NI][2];
#pragma unroll
        for (int i = 0; i < MI; ++i) {
            const int P = pos[i] + toff;
            ldsm_x4(af[i], pos[i] >= 0 && k < K ? xs0 + (P * CPP + (j ^ ((P >> SWS) & SWM))) * 16 : zero);
        }
#pragma unroll
        for (int j2 = 0; j2 < NI / 2; ++j2) {
            u32_t r[4];
            ldsm_x4(r, $BFRAG);
            bf[2 * j2][0] = r[0]; bf[2 * j2][1] = r[1]; bf[2 * j2 + 1][0] = r[2]; bf[2 * j2 + 1][1] = r[3];
        }
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int j3 = 0; j3 < NI; ++j3) mma16816(acc[i][j3], af[i], bf[j3][0], bf[j3][1]);
"""[1:]


def _deeper(text: str) -> str:
    """A CUDA snippet one loop level deeper (preprocessor lines stay in column 0)."""
    return "".join(x if x.startswith("#") or not x.strip() else "    " + x for x in text.splitlines(True))


HALO_PIECES["$HALO_KSTEP\n"] = HALO_KSTEP.replace("$BFRAG", "bs0 + (j2 * 16 * LDB + ks * 16) * 2")
HALO_PIECES["$HALO_KSTEP_STREAM\n"] = _deeper(HALO_KSTEP).replace("$BFRAG", "bst + (j2 * 16 * LDB + kk * 16) * 2")



# the streamed weights' loader (fp16, chunks of KCH K steps of 16), where $BDST is the 16-byte
# chunk's shared-memory address for row o, chunk q of the chunk's 2 KCH, stage st
LOAD_B16 = r"""    auto load_b = [&](int ch, int st) {
        for (int e = tid; e < BN * KCH * 2; e += THREADS) {
            const int o = e / (KCH * 2), q = e - o * (KCH * 2);
            const int kq = ch * KCH * 2 + q;
            const bool ok = o0 + o < O && kq * 8 < Kp;
            const half_t* src = ok ? w + (long long)(o0 + o) * Kp + kq * 8 : w;
            cp_async16($BDST, src, ok ? 16 : 0);
        }
    };
"""
CORE_BDST = "bsm + st * STAGE + (q * BN + o) * 16"  # wgmma's core-matrix layout: plane q, row o
HALO_PIECES["$LOAD_B_PADDED\n"] = LOAD_B16.replace("$BDST", "smem_u32(&Bs[(st * BN + o) * LDB + q * 8])")
HALO_PIECES["$LOAD_B_CORE\n"] = LOAD_B16.replace("$BDST", CORE_BDST)
# the streamed fp16 halo kernels' constants, and their prologue after the footprint's copies: chunks
# 0 .. ahead - 1 of the weights requested (BST - 1 ahead for mma.sync, D for wgmma), the zero position
HALO_PIECES["$HALO16_HEAD\n"] = r"""    constexpr int CPP = C / 8;  // 16-byte chunks a position
    constexpr int SWS = $SWS, SWM = $SWM;  // chunk j of position P is stored at j ^ ((P >> SWS) & SWM)
    constexpr int NPOS = IMG * THI * TWI;  // position NPOS is all zero: padded pixels and K past the end
    constexpr int K = KH * KW * C, KS = (K + 15) / 16;
"""
STREAM_PROLOGUE = r"""    load_b(0, 0);
    cp_async_commit();  // group 0: the footprint and chunk 0
#pragma unroll
    for (int st = 1; st < $AHEAD; ++st) {
        if (st < NCH) load_b(st, st);
        cp_async_commit();
    }
    if (tid < CPP) Xs[NPOS * CPP + tid] = u4_t{0u, 0u, 0u, 0u};
"""
HALO_PIECES["$STREAM_PROLOGUE_BST\n"] = STREAM_PROLOGUE.replace("$AHEAD", "BST - 1")
HALO_PIECES["$STREAM_PROLOGUE_D\n"] = STREAM_PROLOGUE.replace("$AHEAD", "D")
# the head of a wgmma conv's loop over weight chunks: chunk ch landed and visible to the tensor
# cores, the chunk D ahead requested, bst its stage
HALO_PIECES["$WG_CHUNK_HEAD\n"] = r"""        cp_async_wait<D - 1>();  // this thread's copies of chunk ch (and the footprint) have landed ...
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // ... visible to the tensor cores
        // ... and everyone's; every warpgroup's wgmmas on the stage refilled next are done (PIPE 1:
        // each waited for all but its last chunk's, and that stage held the chunk before)
        __syncthreads();
        if (ch + D < NCH) load_b(ch + D, (ch + D) % BST);
        cp_async_commit();
        const u32_t bst = bsm + (ch % BST) * STAGE;
"""

HALO_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__($THREADS) $NAME(
    $SIG)
{
    // the block's input footprint (every tap of every output pixel it computes) is copied into shared
    // memory once; the im2col rows are then ldmatrix addresses into it, so A is gathered from shared
    // memory with no K-step loop of global loads and barriers
$HALO_GEOM
    constexpr int CPP = C / 8;  // 16-byte chunks a position
    constexpr int SWS = $SWS, SWM = $SWM;  // chunk j of position P is stored at j ^ ((P >> SWS) & SWM)
    constexpr int NPOS = IMG * THI * TWI;  // position NPOS is all zero: padded pixels and K past the end
    constexpr int K = KH * KW * C, KS = (K + 15) / 16, LDB = KS * 16 + 8;
    constexpr int BM = $BM, BN = $BN, WARPS_N = $WARPS_N, THREADS = $THREADS;
    constexpr int WTM = 32, WTN = BN / WARPS_N, MI = 2, NI = WTN / 8;
    static_assert(C % 8 == 0 && BM == 32 * $WARPS_M && WTN % 16 == 0, "halo tile");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    u4_t* Xs = reinterpret_cast<u4_t*>(smem_raw);
    half_t* Bs = reinterpret_cast<half_t*>(smem_raw + (NPOS + 1) * C * 2);
$HALO_BLOCK

$HALO_FOOTPRINT
    if (tid < CPP) Xs[NPOS * CPP + tid] = u4_t{0u, 0u, 0u, 0u};
    for (int e = tid; e < BN * KS * 2; e += THREADS) {
        const int o = e / (KS * 2), q = e - o * (KS * 2);
        const bool ok = o0 + o < O;
        const half_t* src = ok ? w + (long long)(o0 + o) * Kp + q * 8 : w;
        cp_async16(smem_u32(&Bs[o * LDB + q * 8]), src, ok ? 16 : 0);
    }
    cp_async_commit();

    // each lane's fragment rows: footprint position of its pixel's tap (0, 0), or -1 past the block's pixels
$HALO_POS
    const u32_t xs0 = smem_u32(Xs), zero = xs0 + NPOS * CPP * 16;
    const u32_t bs0 = smem_u32(Bs) + ((wn * WTN + (lane & 7) + ((lane >> 4) << 3)) * LDB + ((lane >> 3) & 1) * 8) * 2;
$HALO_ACC
    cp_async_wait<0>();
    __syncthreads();

#pragma unroll 3
    for (int ks = 0; ks < KS; ++ks) {
$HALO_KSTEP
    }
$EPILOGUE}
"""


def _halo_source(template: str, g: HaloGeom, t: HaloTile, epi, coalesce: bool, stages: int) -> str:
    """A halo template with the shared epilogue and the layer's geometry and tile filled in."""
    sws, swm = halo_swizzle(g.C, t.esize)
    wm = t.warps_m(g)
    subs = {"$C": g.C, "$H": g.H, "$W": g.W, "$HO": g.Ho, "$WO": g.Wo, "$KH": g.KH, "$KW": g.KW, "$SH": g.sh,
            "$SW": g.sw, "$PH": g.ph, "$PW": g.pw, "$DH": g.dh, "$DW": g.dw, "$ROWS": t.rows, "$IMGS": t.imgs,
            "$SWS": sws, "$SWM": swm, "$BM": 32 * wm, "$BN": t.bn, "$WARPS_N": t.warps_n, "$WARPS_M": wm,
            "$THREADS": t.threads(g), "$KCH": t.kch, "$BSTAGES": t.bstages, "$PRESPLIT": int(t.presplit)}
    for key, piece in HALO_PIECES.items():
        template = template.replace(key, piece)
    template = template.replace("$XT", "float" if t.tf32 else "half_t").replace("$CE", "4" if t.tf32 else "8")
    src = (fill_epilogue(template, epi).replace("$SPLITK", "0").replace("$STAGES", str(stages))
           .replace("$COALESCE", str(int(coalesce))))
    for key in sorted(subs, key=len, reverse=True):  # longest first: $WARPS_N before $W
        src = src.replace(key, str(subs[key]))
    return src


def _halo_kernel(family: str, template: str, g: HaloGeom, t: HaloTile, ti: str, weights: tuple, to: str, epi,
                 coalesce: bool | None, stages: int) -> Kernel:
    """A halo kernel of `template`: x and the `weights` arrays in ti, bias, y in `to`, the epilogue's
    operands, then N, O and Kp (the geometry is compiled in)."""
    coalesce = mma_coalesce_halo(t) if coalesce is None else coalesce
    ctype = CTYPE[ti]
    params = ([(f"const {ctype}* __restrict__", "x")] + [(f"const {ctype}* __restrict__", w) for w in weights]
              + [("const float* __restrict__", "bias"), (f"{CTYPE[to]}* __restrict__", "y")] + epilogue(epi)[0]
              + [("int", "N"), ("int", "O"), ("int", "Kp")])
    src = _halo_source(template, g, t, epi, coalesce, stages)
    return _finish(family, src, params, t.threads(g),
                   {"geom": g, "tile": t, "ti": ti, "to": to, "epi": tuple(epi), "coalesce": coalesce,
                    "smem": t.smem(g, coalesce)})


def halo_conv_kernel(g: HaloGeom, t: HaloTile, to: str, epi=(), coalesce: bool | None = None) -> Kernel:
    """Tensor-core conv (groups == 1, C % 8 == 0) whose block first copies its whole input footprint
    into shared memory (zero outside the image, swizzled against bank conflicts) with the weights of its
    bn channels, then runs every K step from shared memory: each lane's ldmatrix row address is its
    pixel's tap in the footprint. For layers with few channels, where the K-step gather of
    mma_conv_kernel (global loads, shared stores and two barriers per 32 halves of K) is the cost.
    The geometry is compiled in (HaloGeom); N and Kp are arguments. grid (t.blocks(g, N), ceil(O/bn))."""
    assert g.C % 8 == 0 and not t.bstages and not t.tf32
    return _halo_kernel("mma_halo", HALO_TEMPLATE, g, t, "f16", ("w",), to, epi, coalesce, 0)


HALO_STREAM_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__($THREADS) $NAME(
    $SIG)
{
    // halo_conv_kernel with the weights streamed: the footprint stays in shared memory for the whole
    // K loop, the weights come in chunks of KCH K steps through a BST-stage cp.async pipeline (for
    // layers whose weights do not fit beside the footprint)
$HALO_GEOM
$HALO16_HEAD
    constexpr int KCH = $KCH, BST = $BSTAGES, NCH = (KS + KCH - 1) / KCH, LDB = KCH * 16 + 8;
    constexpr int BM = $BM, BN = $BN, WARPS_N = $WARPS_N, THREADS = $THREADS;
    constexpr int WTM = 32, WTN = BN / WARPS_N, MI = 2, NI = WTN / 8;
    static_assert(C % 8 == 0 && BM == 32 * $WARPS_M && WTN % 16 == 0 && BST >= 2, "halo tile");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    u4_t* Xs = reinterpret_cast<u4_t*>(smem_raw);
    half_t* Bs = reinterpret_cast<half_t*>(smem_raw + (NPOS + 1) * C * 2);  // [BST][BN][LDB]
$HALO_BLOCK

    // chunk ch of the weights (K halves ch * KCH * 16 ..) into stage st; zero past Kp and O
$LOAD_B_PADDED
$HALO_FOOTPRINT
$STREAM_PROLOGUE_BST

$HALO_POS
    const u32_t xs0 = smem_u32(Xs), zero = xs0 + NPOS * CPP * 16;
    const u32_t bs0 = smem_u32(Bs) + ((wn * WTN + (lane & 7) + ((lane >> 4) << 3)) * LDB + ((lane >> 3) & 1) * 8) * 2;
$HALO_ACC

    for (int ch = 0; ch < NCH; ++ch) {
        cp_async_wait<BST - 2>();  // this thread's copies of chunk ch (and the footprint) have landed ...
        __syncthreads();  // ... and everyone's; everyone is also done with the stage refilled next
        if (ch + BST - 1 < NCH) load_b(ch + BST - 1, (ch + BST - 1) % BST);
        cp_async_commit();
        const u32_t bst = bs0 + (ch % BST) * BN * LDB * 2;
#pragma unroll
        for (int kk = 0; kk < KCH; ++kk) {
            const int ks = ch * KCH + kk;
            if (ks >= KS) break;
$HALO_KSTEP_STREAM
        }
    }
    cp_async_wait<0>();
$EPILOGUE}
"""


def halo_stream_kernel(g: HaloGeom, t: HaloTile, to: str, epi=(), coalesce: bool | None = None) -> Kernel:
    """halo_conv_kernel for layers whose weights do not fit in shared memory beside the footprint: the
    weights of the block's bn channels stream through t.bstages stages of t.kch K steps (cp.async),
    while the footprint stays. The same arguments and grid as halo_conv_kernel."""
    assert g.C % 8 == 0 and t.bstages >= 2 and not t.tf32
    return _halo_kernel("mma_halo", HALO_STREAM_TEMPLATE, g, t, "f16", ("w",), to, epi, coalesce, 1)

HALO_WGMMA_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__($THREADS) $NAME(
    $SIG)
{
    // halo_stream_kernel on Hopper's warpgroup MMA: the footprint stays in shared memory and each
    // warp gathers its A fragments from it by ldmatrix into registers, as there (its 2 x 16 pixels);
    // the weights stream in chunks of KCH K steps, laid out as wgmma's core matrices (no swizzle:
    // plane q holds halves 8q .. 8q + 7 of K for the BN rows, 16 bytes each), and the tensor cores read
    // them straight from shared memory: per K step of 16, one m64n{BN}k16 wgmma a warpgroup and pixel
    // group (rows 16w .. 16w + 15 of the 64 are warp w's 16 pixels), so no B fragments in registers
$HALO_GEOM
$HALO16_HEAD
    constexpr int KCH = $KCH, BST = $BSTAGES, NCH = (KS + KCH - 1) / KCH, PIPE = $PIPE, D = BST - 1 - PIPE;
    constexpr int BM = $BM, BN = $BN, WARPS_N = $WARPS_N, THREADS = $THREADS;
    constexpr int WTM = 32, WTN = BN, MI = 2, NI = BN / 8;
    constexpr int STAGE = BN * KCH * 32;  // bytes a stage of weights
    static_assert(C % 8 == 0 && BM == 32 * $WARPS_M && WARPS_N == 1 && THREADS % 128 == 0 && D >= 1, "halo wgmma tile");
    extern __shared__ __align__(128) unsigned char smem_raw[];
    u4_t* Xs = reinterpret_cast<u4_t*>(smem_raw);
    const u32_t bsm = smem_u32(smem_raw) + (NPOS + 1) * C * 2;  // [BST][2 KCH][BN] 16-byte chunks
$HALO_BLOCK

    // chunk ch of the weights (K halves ch * KCH * 16 ..) into stage st; zero past Kp and O
$LOAD_B_CORE
$HALO_FOOTPRINT
$STREAM_PROLOGUE_D

$HALO_POS
    const u32_t xs0 = smem_u32(Xs), zero = xs0 + NPOS * CPP * 16;
$HALO_ACC

    for (int ch = 0; ch < NCH; ++ch) {
$WG_CHUNK_HEAD
        u32_t af[KCH][MI][4];
#pragma unroll
        for (int kk = 0; kk < KCH; ++kk) {
            // K steps past KS read the zero position and zero weights (a chunk's tail)
            const int k = (2 * (ch * KCH + kk) + (lane >> 4)) * 8;  // this lane's 8 halves of K: one tap
            const int tap = k / C, c = k - tap * C, kh = tap / KW, kw = tap - kh * KW;
            const int toff = kh * DH * TWI + kw * DW, j = c / 8;
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                const int P = pos[i] + toff;
                ldsm_x4(af[kk][i], pos[i] >= 0 && k < K ? xs0 + (P * CPP + (j ^ ((P >> SWS) & SWM))) * 16 : zero);
            }
        }
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < KCH; ++kk) {
            const unsigned long long db = wgmma_desc(bst + 2 * kk * BN * 16, BN * 16, 128, 0);
            $WGMMA0
            $WGMMA1
        }
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(PIPE) : "memory");
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    cp_async_wait<0>();
$EPILOGUE}
"""


def wgmma_rs_asm(bn: int, i: int) -> str:
    """The inline PTX of one m64n{bn}k16 wgmma into acc[i][0..bn/8)[4] (the halo's accumulators), A
    from registers af[kk][i] (each warp's 16 rows, as mma.sync m16n8k16's A fragment), B by the
    descriptor db."""
    n = bn // 2
    regs = ", ".join(f"%{r}" for r in range(n))
    outs = ", ".join(f'"+f"(acc[{i}][{r // 4}][{r % 4}])' for r in range(n))
    ins = ", ".join(f'"r"(af[kk][{i}][{e}])' for e in range(4))
    return ('asm volatile("{ .reg .pred p; setp.ne.b32 p, %' + str(n + 5) + ', 0; '
            f'wgmma.mma_async.sync.aligned.m64n{bn}k16.f32.f16.f16 {{{regs}}}, '
            f'{{%{n}, %{n + 1}, %{n + 2}, %{n + 3}}}, %{n + 4}, p, 1, 1, 0; }}"\n'
            f'                : {outs}\n'
            f'                : {ins}, "l"(db), "r"(1) : "memory");')


HALO_WGMMA_PIPE = 0  # wgmma groups left in flight across weight chunks (the A/B in dev/cuda/NOTES.md)


def halo_wgmma_kernel(g: HaloGeom, t: HaloTile, to: str, epi=(), coalesce: bool | None = None,
                      pipe: int | None = None) -> Kernel:
    """halo_stream_kernel on Hopper's wgmma (sm_90a only, compiled apart: static 'arch'): the same
    arguments, grid and footprint; t.wg tiles (whole warpgroups, warps_n 1, streamed weights in the
    core-matrix layout, t.smem). pipe: wgmma groups kept in flight across chunks (needs
    t.bstages >= 2 + pipe)."""
    pipe = HALO_WGMMA_PIPE if pipe is None else pipe
    assert g.C % 8 == 0 and t.wg and t.warps_n == 1 and t.bstages >= 2 + pipe and not t.tf32
    assert t.bn % 16 == 0 and t.bn <= 256, t
    template = (WGMMA_PRELUDE + HALO_WGMMA_TEMPLATE.replace("$WGMMA0", wgmma_rs_asm(t.bn, 0))
                .replace("$WGMMA1", wgmma_rs_asm(t.bn, 1)).replace("$PIPE", str(pipe)))
    k = _halo_kernel("wgmma_halo", template, g, t, "f16", ("w",), to, epi, coalesce, 1)
    k.static.update(arch="sm_90a", pipe=pipe)
    return k


# ----------------------------------------------------------------------------- wgmma conv, A and B from shared memory

@dataclass(frozen=True)
class BandTile:
    """A block of the wgmma band conv (stride 1): a band of `rows` output rows of one image at full
    width. Its footprint is stored as C/8 planes of 16-byte positions, so the rows of the implicit
    GEMM, taken over the footprint's width TWI (the TWI - Wo columns past the image's width are
    computed and dropped), are positions one apart: every tap is the same matrix moved by
    kh*dh*TWI + kw*dw positions, and one descriptor describes it. mt tiles of 64 rows (wgs warpgroups
    of tpw tiles each) cover rows * TWI; bn output channels; the weights stream in chunks of kch K
    steps of 16 through bstages stages; pipe wgmma groups stay in flight across chunks."""

    rows: int
    bn: int
    wgs: int
    tpw: int
    kch: int = 4
    bstages: int = 3
    pipe: int = 1
    cm: bool = False  # K channel-major (16 channels at a time, every tap): the footprint streams in with the weights

    @property
    def mt(self) -> int:
        return self.wgs * self.tpw

    @property
    def threads(self) -> int:
        return 128 * self.wgs

    def bands(self, g: HaloGeom) -> int:
        return -(-g.Ho // self.rows)

    def blocks(self, g: HaloGeom, n: int) -> int:
        return n * self.bands(g)

    def twi(self, g: HaloGeom) -> int:
        return g.Wo + (g.KW - 1) * g.dw

    def npos(self, g: HaloGeom) -> int:
        return (self.rows + (g.KH - 1) * g.dh) * self.twi(g)

    def npx(self, g: HaloGeom) -> int:
        """Positions a plane: the footprint, then zeros up to the last position a tile's last row
        reads (rows past the band's); odd, so that 8 planes' same position fall in 8 bank groups."""
        need = max(self.npos(g), 64 * self.mt + (g.KH - 1) * g.dh * self.twi(g) + (g.KW - 1) * g.dw)
        return need | 1

    def smem(self, g: HaloGeom) -> int:
        main = self.npx(g) * g.C * 2 + self.bstages * self.bn * self.kch * 32
        return max(main, 64 * self.mt * (self.bn + 4) * 4)  # the staged store reuses it

    def useful(self, g: HaloGeom) -> float:
        """Output pixels per GEMM row computed (over all bands: the last may be short)."""
        return g.Ho * g.Wo / (self.bands(g) * 64 * self.mt)


BAND_SMEM = 227 * 1024  # a block's most dynamic shared memory on sm_90


def band_tile(g: HaloGeom, O: int, n: int, bn: int = 128, kch: int = 4, bstages: int = 3, pipe: int = 1,
              smem: int = BAND_SMEM, cm: bool = False) -> BandTile | None:
    """The band tile for a stride-1 conv with C % 16 == 0 (a K step of 16 within one tap), or None:
    of the bands whose GEMM rows fit 1, 2 or 4 tiles of 64 and whose footprint and stages fit `smem`,
    the one with the most output pixels per row computed, discounted by the footprint's halo rows
    read again by the next band (taller bands first on ties)."""
    if g.C % 16 or g.sh != 1 or g.sw != 1:
        return None
    bn = max(16, min(bn, -(-O // 16) * 16))
    best, score = None, -1.0
    for rows in range(g.Ho, 0, -1):
        twi = g.Wo + (g.KW - 1) * g.dw
        mt = -(-rows * twi // 64)
        if mt == 3:
            mt = 4
        if mt > 4:
            continue
        wgs, tpw = (1, 1) if mt == 1 else (2, mt // 2)
        if tpw * bn // 2 > 128:  # accumulators a thread
            continue
        t = BandTile(rows, bn, wgs, tpw, kch, bstages, pipe, cm)
        if t.npx(g) > 16383 or t.smem(g) > smem:
            continue
        sc = t.useful(g) * rows / (rows + (g.KH - 1) * g.dh)  # (the footprint's halo rows read again)
        if sc > score + 1e-9:
            best, score = t, sc
    return best


BAND_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__($THREADS) $NAME(
    $SIG)
{
    // implicit GEMM on Hopper's wgmma with A and B both read by the tensor cores from shared memory:
    // the band's input footprint is copied once into C/8 planes of 16-byte positions (plane j holds
    // channels 8j .. 8j + 7), so GEMM row m (footprint row m / TWI, column m % TWI) at tap (kh, kw)
    // is position m + kh*DH*TWI + kw*DW, and 8 rows are 128 contiguous bytes: a core matrix. A tap's
    // 16 channels are one descriptor (leading byte offset: a plane; stride byte offset: 128 bytes).
    // The weights stream through BST stages in the same core-matrix layout. Rows whose column is
    // past Wo, or past the band, are computed and dropped by the store.
    constexpr int C = $C, H = $H, W = $W, Ho = $HO, Wo = $WO, KH = $KH, KW = $KW;
    constexpr int PH = $PH, PW = $PW, DH = $DH, DW = $DW;
    constexpr int R = $ROWS, BANDS = (Ho + R - 1) / R;
    constexpr int THI = R + (KH - 1) * DH, TWI = Wo + (KW - 1) * DW;
    constexpr int NPOS = THI * TWI, NPX = $NPX;  // footprint positions; positions a plane (zeros past NPOS)
    constexpr int CPP = C / 8, CS = C / 16;  // planes; K steps a tap
    constexpr int K = KH * KW * C, KS = K / 16;
    constexpr int WGS = $WGS, TPW = $TPW, BM = 64 * WGS * TPW;
    constexpr int BN = $BN, KCH = $KCH, BST = $BSTAGES, NCH = (KS + KCH - 1) / KCH, PIPE = $PIPE, D = BST - 1 - PIPE;
    constexpr int THREADS = 128 * WGS, STAGE = BN * KCH * 32, XBYTES = NPX * CPP * 16;
    static_assert(C % 16 == 0 && BM >= R * TWI && D >= 1, "band tile");
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const int tid = threadIdx.x, lane = tid & 31, warp = (tid >> 5) & 3, wg = tid >> 7;
    const int n0 = blockIdx.x / BANDS, ho0 = (blockIdx.x % BANDS) * R;
    const int o0 = blockIdx.y * BN;
    const int rows = min(R, Ho - ho0);
    const int HWo = Ho * Wo;
    const int m0 = (n0 * Ho + ho0) * Wo;  // the band's first output pixel
    const int CH = O;
    (void)CH;
    const u32_t xs = smem_u32(smem_raw), bsm = xs + XBYTES;

    // chunk ch of the weights (K halves ch * KCH * 16 ..) into stage st as core matrices; zero past Kp and O
$LOAD_B_CORE
$BAND_FOOTPRINT
    load_b(0, 0);
    cp_async_commit();  // group 0: the footprint and chunk 0
#pragma unroll
    for (int st = 1; st < D; ++st) {
        if (st < NCH) load_b(st, st);
        cp_async_commit();
    }
    for (int e = tid; e < (NPX - NPOS) * CPP; e += THREADS) {  // past the footprint (read by dropped rows only)
        const int j = e / (NPX - NPOS), P = NPOS + e % (NPX - NPOS);
        *reinterpret_cast<u4_t*>(smem_raw + (j * NPX + P) * 16) = u4_t{0u, 0u, 0u, 0u};
    }
    float acc[TPW][BN / 2];
#pragma unroll
    for (int t = 0; t < TPW; ++t)
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) acc[t][i] = 0.f;

    for (int ch = 0; ch < NCH; ++ch) {
$WG_CHUNK_HEAD
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < KCH; ++kk) {
            // K steps past KS (a last chunk's tail) multiply step KS - 1's A by zero weights
            const int s = min(ch * KCH + kk, KS - 1);
            const int tap = s / CS, j = (s - tap * CS) * 2, kh = tap / KW, kw = tap - kh * KW;
            const u32_t a0 = xs + (j * NPX + kh * DH * TWI + kw * DW + wg * TPW * 64) * 16;
            const unsigned long long db = wgmma_desc(bst + 2 * kk * BN * 16, BN * 16, 128, 0);
$MMAS
        }
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(PIPE) : "memory");
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    cp_async_wait<0>();

    // staged store: GEMM row r of the block is footprint row r / TWI, column r % TWI; warp w of a
    // warpgroup holds rows 16w .. 16w + 15 of each of its tiles (acc[t][4j ..]: rows g, g + 8)
    const int gq = lane >> 2, tq = lane & 3;
    constexpr int LDC = BN + 4;
    float* Cs = reinterpret_cast<float*>(smem_raw);
    __syncthreads();
#pragma unroll
    for (int t = 0; t < TPW; ++t)
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
#pragma unroll
            for (int hr = 0; hr < 2; ++hr)
                *reinterpret_cast<f2_t*>(&Cs[((wg * TPW + t) * 64 + warp * 16 + gq + 8 * hr) * LDC + j * 8 + 2 * tq]) =
                    f2_t{acc[t][4 * j + 2 * hr], acc[t][4 * j + 2 * hr + 1]};
    __syncthreads();
$FINISH}
"""

BAND_FOOTPRINT = """    for (int e = tid; e < NPOS * CPP; e += THREADS) {  // the footprint, zero outside the image
        const int j = e % CPP, P = e / CPP;
        const int ri = P / TWI, wi = P - ri * TWI;
        const int hi = ho0 - PH + ri, wi2 = wi - PW;
        const bool ok = (unsigned)hi < (unsigned)H && (unsigned)wi2 < (unsigned)W;
        const half_t* src = ok ? x + (((long long)n0 * H + hi) * W + wi2) * C + j * 8 : x;
        cp_async16(xs + (j * NPX + P) * 16, src, ok ? 16 : 0);
    }
"""
BAND_KSTEP = """            const int tap = s / CS, j = (s - tap * CS) * 2, kh = tap / KW, kw = tap - kh * KW;
"""
_BAND_ROW = """        const int r = t / CG, g = t - r * CG;
        const int m = m0 + r, cb = o0 + g * 8;
        if (m >= M || cb >= O) continue;
"""


# the channel-major band conv (BandTile.cm): K steps run 16 channels at a time over every tap, so
# chunk ch needs only the footprint's planes of the channel pairs up to its last step's; each chunk's
# cp.async group brings those planes with its weights (load_b below: the weights' loader, renamed
# load_w, then the planes), and the main loop starts once the first pair has landed
BAND_CM_LOADERS = r"""    constexpr int TAPS = KH * KW;
    auto load_x = [&](int cp) {  // the footprint's planes 2cp and 2cp + 1, zero outside the image
        for (int e = tid; e < NPOS * 2; e += THREADS) {
            const int j = 2 * cp + (e & 1), P = e >> 1;
            const int ri = P / TWI, wi = P - ri * TWI;
            const int hi = ho0 - PH + ri, wi2 = wi - PW;
            const bool ok = (unsigned)hi < (unsigned)H && (unsigned)wi2 < (unsigned)W;
            const half_t* src = ok ? x + (((long long)n0 * H + hi) * W + wi2) * C + j * 8 : x;
            cp_async16(xs + (j * NPX + P) * 16, src, ok ? 16 : 0);
        }
    };
    // the last channel pair chunk ch reads (-1 before the first chunk)
    auto last_pair = [&](int ch) { return ch < 0 ? -1 : min(CS - 1, ((ch + 1) * KCH - 1) / TAPS); };
    auto load_b = [&](int ch, int st) {
        load_w(ch, st);
        for (int cp = last_pair(ch - 1) + 1; cp <= last_pair(ch); ++cp) load_x(cp);
    };
"""
BAND_CM_KSTEP = """            const int cp = s / TAPS, tap = s - cp * TAPS, j = 2 * cp, kh = tap / KW, kw = tap - kh * KW;
"""


def band_weights_cm(wq, kh: int, kw: int, c: int):
    """Packed weights [O][Kp] in (kh, kw, c) order as the channel-major band conv reads them:
    (c // 16, kh, kw, c % 16), the K padding kept."""
    import numpy as np

    o, kp = wq.shape
    K = kh * kw * c
    out = np.zeros_like(wq)
    out[:, :K] = wq[:, :K].reshape(o, kh, kw, c // 16, 16).transpose(0, 3, 1, 2, 4).reshape(o, K)
    return out


def band_conv_kernel(g: HaloGeom, t: BandTile, to: str, epi=()) -> Kernel:
    """Convolution (stride 1, groups 1, C % 16 == 0) on Hopper's wgmma with both operands read by
    the tensor cores from shared memory (sm_90a, compiled apart): the band's footprint resident in
    planes, a tap one descriptor away from the next (BandTile), the weights streamed; bias and the
    fused epilogue in fp32 through the staged store. Arguments as halo_conv_kernel's (x, w, bias, y,
    the epilogue's, N, O, Kp); grid (t.blocks(g, N), ceil(O / bn)), t.threads, t.smem(g)."""
    assert g.C % 16 == 0 and g.sh == g.sw == 1 and t.bstages - 1 - t.pipe >= 1 and t.bn % 16 == 0
    assert 64 * t.mt >= t.rows * t.twi(g) and t.tpw * t.bn // 2 <= 128
    mmas = []
    for i in range(t.tpw):
        mmas.append(f"            {{ const unsigned long long da = wgmma_desc(a0 + {i * 64 * 16}, NPX * 16, 128, 0);\n"
                    f"              {wgmma_asm(t.bn, f'acc[{i}]')} }}")
    row = ("        const int r = t / CG, g = t - r * CG;\n"
           "        const int rr = r / TWI, wo = r - rr * TWI;  // footprint row and column of GEMM row r\n"
           "        const int m = m0 + rr * Wo + wo, cb = o0 + g * 8;\n"
           "        if (rr >= rows || wo >= Wo || cb >= O) continue;\n")
    assert _BAND_ROW in STAGED_FINISH
    finish = STAGED_FINISH.replace(_BAND_ROW, row)
    _, ecode, _ = epilogue(epi)
    pre, code8 = epilogue8(epi)
    template = BAND_TEMPLATE
    if t.cm:  # the footprint streams in with the weights; K steps channel-major
        template = (template.replace("$LOAD_B_CORE\n", HALO_PIECES["$LOAD_B_CORE\n"].replace("load_b", "load_w")
                                     + BAND_CM_LOADERS)
                    .replace("$BAND_FOOTPRINT\n", "").replace(BAND_KSTEP, BAND_CM_KSTEP))
    src = (template.replace("$BAND_FOOTPRINT\n", BAND_FOOTPRINT).replace("$LOAD_B_CORE\n", HALO_PIECES["$LOAD_B_CORE\n"])
           .replace("$WG_CHUNK_HEAD\n", HALO_PIECES["$WG_CHUNK_HEAD\n"])
           .replace("$MMAS", "\n".join(mmas)).replace("$FINISH", finish))
    src = src.replace("$EPRE", pre).replace("$EPI8", code8).replace("$EPI", ecode)
    subs = {"$C": g.C, "$H": g.H, "$W": g.W, "$HO": g.Ho, "$WO": g.Wo, "$KH": g.KH, "$KW": g.KW, "$PH": g.ph,
            "$PW": g.pw, "$DH": g.dh, "$DW": g.dw, "$ROWS": t.rows, "$NPX": t.npx(g), "$WGS": t.wgs, "$TPW": t.tpw,
            "$BN": t.bn, "$KCH": t.kch, "$BSTAGES": t.bstages, "$PIPE": t.pipe, "$THREADS": t.threads}
    for key in sorted(subs, key=len, reverse=True):
        src = src.replace(key, str(subs[key]))
    params = ([("const half_t* __restrict__", "x"), ("const half_t* __restrict__", "w"),
               ("const float* __restrict__", "bias"), (f"{CTYPE[to]}* __restrict__", "y")] + epilogue(epi)[0]
              + [("int", "N"), ("int", "O"), ("int", "Kp")])
    return _finish("wgmma_band", WGMMA_PRELUDE + src, params, t.threads,
                   {"geom": g, "tile": t, "ti": "f16", "to": to, "epi": tuple(epi), "arch": "sm_90a",
                    "smem": t.smem(g)})


HALO_TF32_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__($THREADS) $NAME(
    $SIG)
{
    // halo_conv_kernel in fp32: the fp32 footprint in shared memory, K steps of 8 on the tensor cores
    // in three tf32 products (3xTF32: a_hi*b_lo + a_lo*b_hi + a_hi*b_hi, the small terms first), so
    // the result keeps about fp32's precision; the weights come split into wh + wl by the planner,
    // all resident (BST = 0) or streamed in chunks of KCH K steps through BST cp.async stages
$HALO_GEOM
    constexpr int CPP = C / 4;  // 16-byte chunks a position
    constexpr int SWS = $SWS, SWM = $SWM;  // chunk j of position P is stored at j ^ ((P >> SWS) & SWM)
    constexpr int NPOS = IMG * THI * TWI;  // position NPOS is all zero: padded pixels and K past the end
    constexpr int K = KH * KW * C, KS = (K + 7) / 8;
    constexpr int BST = $BSTAGES, KCH = BST ? $KCH : KS, NCH = (KS + KCH - 1) / KCH, NST = BST ? BST : 1;
    constexpr int LDB = KCH * 8 + 4;
    constexpr int BM = $BM, BN = $BN, WARPS_N = $WARPS_N, THREADS = $THREADS;
    constexpr int WTM = 32, WTN = BN / WARPS_N, MI = 2, NI = WTN / 8;
    static_assert(C % 4 == 0 && BM == 32 * $WARPS_M && WTN % 16 == 0, "halo tile");
    // PRESPLIT: the footprint is split into tf32 hi (in place) and lo (Xl, right after it) once it
    // has landed, so a K step loads both parts instead of splitting each value it reads
    constexpr int PRESPLIT = $PRESPLIT, XL = (NPOS + 1) * CPP;  // Xl's offset in 16-byte chunks
    extern __shared__ __align__(16) unsigned char smem_raw[];
    u4_t* Xs = reinterpret_cast<u4_t*>(smem_raw);
    float* Bh = reinterpret_cast<float*>(smem_raw + (NPOS + 1) * C * 4 * (PRESPLIT ? 2 : 1));
    float* Bl = Bh + NST * BN * LDB;  // [NST][BN][LDB] each
$HALO_BLOCK

$HALO_FOOTPRINT
    if (tid < CPP) Xs[NPOS * CPP + tid] = u4_t{0u, 0u, 0u, 0u};
    if (PRESPLIT && tid < CPP) Xs[XL + NPOS * CPP + tid] = u4_t{0u, 0u, 0u, 0u};
    // chunk ch of both weight parts (K floats ch * KCH * 8 ..) into stage st; zero past Kp and O
    auto load_b = [&](int ch, int st) {
        for (int e = tid; e < BN * KCH * 2; e += THREADS) {
            const int o = e / (KCH * 2), q = e - o * (KCH * 2);
            const int kq = ch * KCH * 2 + q;
            const bool ok = o0 + o < O && kq * 4 < Kp;
            const long long off = (long long)(o0 + o) * Kp + kq * 4;
            cp_async16(smem_u32(&Bh[(st * BN + o) * LDB + q * 4]), ok ? wh + off : wh, ok ? 16 : 0);
            cp_async16(smem_u32(&Bl[(st * BN + o) * LDB + q * 4]), ok ? wl + off : wl, ok ? 16 : 0);
        }
    };
    load_b(0, 0);
    cp_async_commit();  // group 0: the footprint and chunk 0
#pragma unroll
    for (int st = 1; st < BST - 1; ++st) {
        if (st < NCH) load_b(st, st);
        cp_async_commit();
    }

$HALO_POS
    const u32_t xs0 = smem_u32(Xs), zero = xs0 + NPOS * CPP * 16;
    const int brow = ((wn * WTN + (lane & 7) + ((lane >> 4) << 3)) * LDB + ((lane >> 3) & 1) * 4) * 4;
    const u32_t bh0 = smem_u32(Bh) + brow, bl0 = smem_u32(Bl) + brow;
$HALO_ACC
    for (int ch = 0; ch < NCH; ++ch) {
#if $BSTAGES
        cp_async_wait<BST - 2>();  // chunk ch (and the footprint) landed for this thread ...
#else
        cp_async_wait<0>();
#endif
        __syncthreads();  // ... and for everyone; everyone is done with the stage refilled next
        if (PRESPLIT && ch == 0) {  // the footprint has landed: split it once, for every K step
            for (int e = tid; e < NPOS * CPP; e += THREADS) {
                const u4_t v = Xs[e];
                u4_t h, l;
                $TF32_SPLIT(__uint_as_float(v.x), h.x, l.x);
                $TF32_SPLIT(__uint_as_float(v.y), h.y, l.y);
                $TF32_SPLIT(__uint_as_float(v.z), h.z, l.z);
                $TF32_SPLIT(__uint_as_float(v.w), h.w, l.w);
                Xs[e] = h;
                Xs[XL + e] = l;
            }
            __syncthreads();
        }
        if (BST && ch + BST - 1 < NCH) load_b(ch + BST - 1, (ch + BST - 1) % NST);
        cp_async_commit();
        const int sto = (ch % NST) * BN * LDB * 4;  // the stage's byte offset
#pragma unroll 2
    for (int kk = 0; kk < KCH; ++kk) {
        const int ks = ch * KCH + kk;
        if (ks >= KS) break;
        const int k = (2 * ks + (lane >> 4)) * 4;  // this lane's 4 floats of K: one tap, channels c .. c + 3
        const int tap = k / C, c = k - tap * C, kh = tap / KW, kw = tap - kh * KW;
        const int toff = kh * DH * TWI + kw * DW, j = c / 4;
        u32_t ah[MI][4], al[MI][4], bh[NI][2], bl[NI][2];
#pragma unroll
        for (int i = 0; i < MI; ++i) {
            const int P = pos[i] + toff;
            const u32_t addr = pos[i] >= 0 && k < K ? xs0 + (P * CPP + (j ^ ((P >> SWS) & SWM))) * 16 : zero;
            if (PRESPLIT) {
                ldsm_x4(ah[i], addr);
                ldsm_x4(al[i], addr + XL * 16);
            } else {
                u32_t raw[4];
                ldsm_x4(raw, addr);
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const float v = __uint_as_float(raw[r]);
                    $TF32_SPLIT(v, ah[i][r], al[i][r]);
                }
            }
        }
#pragma unroll
        for (int j2 = 0; j2 < NI / 2; ++j2) {
            u32_t r[4];
            ldsm_x4(r, bh0 + sto + (j2 * 16 * LDB + kk * 8) * 4);
            bh[2 * j2][0] = r[0]; bh[2 * j2][1] = r[1]; bh[2 * j2 + 1][0] = r[2]; bh[2 * j2 + 1][1] = r[3];
            ldsm_x4(r, bl0 + sto + (j2 * 16 * LDB + kk * 8) * 4);
            bl[2 * j2][0] = r[0]; bl[2 * j2][1] = r[1]; bl[2 * j2 + 1][0] = r[2]; bl[2 * j2 + 1][1] = r[3];
        }
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int j3 = 0; j3 < NI; ++j3) mma1688x3(acc[i][j3], ah[i], al[i], bh[j3], bl[j3]);
    }
    }
    cp_async_wait<0>();
$EPILOGUE}
"""


def halo_tf32_kernel(g: HaloGeom, t: HaloTile, epi=(), coalesce: bool | None = None) -> Kernel:
    """halo_conv_kernel for fp32 activations (C % 4 == 0), on the tensor cores with 3xTF32 products:
    the weights as two fp32 arrays wh (tf32-rounded) and wl (the tf32-rounded rest), packed [O][Kp]
    like the fp16 ones (tf32_split); A is split the same way as it is read. About fp32's precision
    (each product's relative error near 2^-21) at three tf32 MMAs a K step of 8. t.bstages: the
    weights streamed through that many stages (layers whose weights do not fit beside the footprint)."""
    assert t.tf32 and g.C % 4 == 0
    return _halo_kernel("mma_halo_tf32", HALO_TF32_TEMPLATE, g, t, "f32", ("wh", "wl"), "f32", epi, coalesce, 1)


def tf32_round(a):
    """cvt.rna.tf32.f32 in NumPy: float32 rounded to 10 mantissa bits, ties away from zero."""
    import numpy as np

    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def tf32_split(a):
    """(hi, lo): hi = tf32(a), lo = tf32(a - hi), both float32; hi + lo is a to about 2^-21."""
    import numpy as np

    a = np.ascontiguousarray(a, np.float32)
    hi = tf32_round(a)
    return hi, tf32_round(a - hi)


SPLITK_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__(256) $NAME(
    $SIG)
{
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(idx % CH);
        const long long nimg = idx / HWC;
        (void)nimg;
        float v = 0.f;
        for (int s = 0; s < S; ++s) v += ws[(long long)s * total + idx];
        v += bias[c];
        $EPI
        stf(y, idx, v);
    }
}
"""


def splitk_reduce_kernel(to: str, epi=()) -> Kernel:
    """The end of a split-K conv: the S fp32 partial sums of each output, plus bias, then the epilogue."""
    eparams, ecode, _ = epilogue(epi)
    params = ([("const float* __restrict__", "ws"), ("const float* __restrict__", "bias"),
               (f"{CTYPE[to]}* __restrict__", "y")] + eparams
              + [("long long", "total"), ("int", "CH"), ("long long", "HWC"), ("int", "S")])
    return _finish("splitk", SPLITK_TEMPLATE.replace("$EPI", ecode), params, 256, {"to": to, "epi": tuple(epi)})


DW_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__(256) $NAME(
    $SIG)
{
    const long long total = (long long)N * Ho * Wo * O;
    const int CH = O;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(idx % O);
        long long p = idx / O;
        const int wo = (int)(p % Wo); p /= Wo;
        const int ho = (int)(p % Ho);
        const long long nimg = p / Ho;
        const int ci = c / mult;
        const long long xb = nimg * H * W * C + ci;
        const int h0 = ho * sh - ph, w0 = wo * sw - pw;
        float acc = 0.f;
        for (int kh = 0; kh < KH; ++kh) {
            const int hi = h0 + kh * dh;
            if ((unsigned)hi >= (unsigned)H) continue;
            for (int kw = 0; kw < KW; ++kw) {
                const int wi = w0 + kw * dw;
                if ((unsigned)wi >= (unsigned)W) continue;
                acc = fmaf(ldf(x, xb + ((long long)hi * W + wi) * C), w[(kh * KW + kw) * O + c], acc);
            }
        }
        float v = acc + bias[c];
        $EPI
        stf(y, idx, v);
    }
}
"""


def dwconv_kernel(ti: str, to: str, epi=()) -> Kernel:
    """Depthwise convolution (one input channel per group, `mult` outputs each), one thread per
    output value, channels fastest (coalesced). Weights packed [KH*KW][O] float32."""
    eparams, ecode, _ = epilogue(epi)
    params = ([(f"const {CTYPE[ti]}* __restrict__", "x"), ("const float* __restrict__", "w"),
               ("const float* __restrict__", "bias"), (f"{CTYPE[to]}* __restrict__", "y")] + eparams
              + [("int", n) for n in ("N", "H", "W", "C", "Ho", "Wo", "O", "KH", "KW", "sh", "sw", "ph", "pw", "dh",
                                       "dw", "mult")])
    return _finish("dwconv", DW_TEMPLATE.replace("$EPI", ecode), params, 256, {"ti": ti, "to": to, "epi": tuple(epi)})


# The 8-channels-a-thread kernels (depthwise conv, pools) share their frame: a grid-stride loop
# over (pixel, group of 8 channels) of an NHWC output with CH channels, the input window's origin,
# and, after $BODY has filled float acc[8], the epilogue per channel and one vector store ($STORE).
VEC8_FRAME = r"""
extern "C" __global__ void __launch_bounds__(256) $NAME(
    $SIG)
{
    const int CH = $CH, C8 = CH >> 3;
    const long long total = (long long)N * Ho * Wo * C8;
$PIXEL8_LOOP
        (void)nimg;
        const long long xb = nimg * H * W * C + c0;
        const int h0 = ho * sh - ph, w0 = wo * sw - pw;
        $BODY
        float res[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const long long idx = i8 * 8 + j;
            const int c = c0 + j;
            (void)c;
            float v = $FINAL;
            $EPI
            res[j] = v;
        }
        $STORE
    }
}
"""

DW8_BODY = r"""float acc[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] = 0.f;
$UNROLL
        for (int kh = 0; kh < $KH; ++kh) {
            const int hi = h0 + kh * dh;
            if ((unsigned)hi >= (unsigned)H) continue;
$UNROLL
            for (int kw = 0; kw < $KW; ++kw) {
                const int wi = w0 + kw * dw;
                if ((unsigned)wi >= (unsigned)W) continue;
                float xv[8], wv[8];
                ld8a(x + xb + ((long long)hi * W + wi) * C, xv);
                ld8a(w + (kh * $KW + kw) * O + c0, wv);
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[j] = fmaf(xv[j], wv[j], acc[j]);
            }
        }"""


# the grid-stride loop over (image, row, column, 8 channels) of the 8-channel kernels, its index
# split in 32-bit arithmetic where it fits: $I the loop index, $RV the row variable, $RN the rows
PIXEL8_LOOP = r"""    const bool small = total <= 0x7fffffffLL;  // 32-bit index arithmetic (64-bit division is emulated)
    for (long long $I = blockIdx.x * (long long)blockDim.x + threadIdx.x; $I < total;
         $I += (long long)gridDim.x * blockDim.x) {
        int c0, wo, $RV;
        long long nimg;
        if (small) {
            unsigned q = (unsigned)$I;
            c0 = (int)(q % (unsigned)C8) * 8; q /= (unsigned)C8;
            wo = (int)(q % (unsigned)Wo); q /= (unsigned)Wo;
            $RV = (int)(q % (unsigned)$RN); nimg = q / (unsigned)$RN;
        } else {
            long long p = $I / C8;
            c0 = (int)($I % C8) * 8;
            wo = (int)(p % Wo); p /= Wo;
            $RV = (int)(p % $RN); nimg = p / $RN;
        }"""


def pixel8_loop(i: str = "i8", rv: str = "ho", rn: str = "Ho") -> str:
    return PIXEL8_LOOP.replace("$I", i).replace("$RV", rv).replace("$RN", rn)


def vec8_source(ch: str, body: str, final: str, ecode: str, to: str) -> str:
    """A VEC8_FRAME kernel: `ch` the output's channel count (a parameter's name), `body` fills acc[8],
    `final` is channel j's value before the epilogue."""
    return (VEC8_FRAME.replace("$PIXEL8_LOOP", pixel8_loop()).replace("$CH", ch).replace("$BODY", body)
            .replace("$FINAL", final).replace("$EPI", ecode).replace("$STORE", STORE8[to]))


STORE8 = {
    "f16": """u4_t o;
        o.x = (u32_t)f2h(res[0]) | ((u32_t)f2h(res[1]) << 16); o.y = (u32_t)f2h(res[2]) | ((u32_t)f2h(res[3]) << 16);
        o.z = (u32_t)f2h(res[4]) | ((u32_t)f2h(res[5]) << 16); o.w = (u32_t)f2h(res[6]) | ((u32_t)f2h(res[7]) << 16);
        *reinterpret_cast<u4_t*>(y + i8 * 8) = o;""",
    "f32": """*reinterpret_cast<f4_t*>(y + i8 * 8) = f4_t{res[0], res[1], res[2], res[3]};
        *reinterpret_cast<f4_t*>(y + i8 * 8 + 4) = f4_t{res[4], res[5], res[6], res[7]};""",
}


def window_code(body: str, window: tuple | None, static: dict) -> str:
    """A body's tap loops ($KH, $KW, $UNROLL) over a window compiled in and unrolled, so a thread's
    loads issue together (window (kh, kw), recorded in static), or over the KH and KW arguments."""
    kh, kw = window if window else ("KH", "KW")
    if window:
        static["window"] = (int(kh), int(kw))
    return body.replace("$KH", str(kh)).replace("$KW", str(kw)).replace("$UNROLL", "#pragma unroll" if window else "")


WINDOW_UNROLL = 16  # taps up to which a pool's or depthwise conv's window is compiled in (window_code)


def window_enabled() -> bool:
    """CNNRT_CUDA_WINDOW=0: pools and depthwise convs loop over their window at run time (A/B runs)."""
    return os.environ.get("CNNRT_CUDA_WINDOW", "") != "0"


DW8_ROWS_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__(256) $NAME(
    $SIG)
{
    // dwconv8 with R output rows a thread: 8 channels of pixels (ho, wo) .. (ho + R - 1, wo); a
    // tap's weights are loaded once for the R pixels (in dwconv8 the fp32 weights were twice the
    // bytes of the fp16 activations a pixel reads), accumulators acc[R][8]
    constexpr int R = $ROWS;
    const int CH = O, C8 = CH >> 3, HG = (Ho + R - 1) / R;
    const long long total = (long long)N * HG * Wo * C8;
$PIXEL8_LOOP
        const long long xb = nimg * H * W * C + c0;
        const int w0 = wo * sw - pw;
        float acc[R][8];
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[r][j] = 0.f;
#pragma unroll
        for (int kh = 0; kh < $KH; ++kh) {
#pragma unroll
            for (int kw = 0; kw < $KW; ++kw) {
                const int wi = w0 + kw * dw;
                if ((unsigned)wi >= (unsigned)W) continue;
                float wv[8];
                ld8a(w + (kh * $KW + kw) * O + c0, wv);
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    const int ho = hg * R + r, hi = ho * sh - ph + kh * dh;
                    if (ho >= Ho || (unsigned)hi >= (unsigned)H) continue;
                    float xv[8];
                    ld8a(x + xb + ((long long)hi * W + wi) * C, xv);
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[r][j] = fmaf(xv[j], wv[j], acc[r][j]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int ho = hg * R + r;
            if (ho >= Ho) break;
            const long long i8 = ((nimg * Ho + ho) * Wo + wo) * C8 + (c0 >> 3);  // the pixel's 8 channels
            float res[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const long long idx = i8 * 8 + j;
                const int c = c0 + j;
                (void)idx;
                float v = acc[r][j] + bias[c];
                $EPI
                res[j] = v;
            }
            $STORE
        }
    }
}
"""

DW_ROWS_MAX = 8
DW_ROWS_DEFAULT = 2


def dw_rows() -> int:
    """The 8-channel depthwise conv computes R output rows a thread (dwconv8_kernel's rows); 2 by
    default (H200, 2026-11-29, MobileNetV2 at 2048 images: depthwise convs 3.11 -> 2.89 ms with 2
    rows, 3.11 with 4, 4.15 with 8; MobileNetV3-small unchanged; docs/gpu_profile_dw_rows_*.json).
    CNNRT_CUDA_DW_ROWS=0 (or 1) gives one row a thread, 2 .. DW_ROWS_MAX that many."""
    env = os.environ.get("CNNRT_CUDA_DW_ROWS", str(DW_ROWS_DEFAULT))
    return int(env) if env.isdigit() and 2 <= int(env) <= DW_ROWS_MAX else 0


def dwconv8_kernel(to: str, epi=(), ti: str = "f16", window: tuple | None = None, rows: int = 0) -> Kernel:
    """Depthwise convolution of fp16 or fp32 activations (ti) with one output per input channel
    (mult 1) and C % 8 == 0: each thread computes 8 neighbouring channels of one output pixel from
    one 16-byte load per tap (two for fp32), and stores them as one 16-byte (fp16) or two (fp32)
    stores. Weights packed [KH*KW][O] float32, as for dwconv_kernel. Row and pixel offsets are
    multiples of 8 elements, so every load and store is aligned. window: see window_code.
    rows (2 .. DW_ROWS_MAX, with a window): R output rows a thread, each tap's weights loaded once
    for the R pixels (DW8_ROWS_TEMPLATE); the launch covers N * ceil(Ho / R) * Wo * O / 8 threads."""
    eparams, ecode, _ = epilogue(epi)
    params = ([(f"const {CTYPE[ti]}* __restrict__", "x"), ("const float* __restrict__", "w"),
               ("const float* __restrict__", "bias"), (f"{CTYPE[to]}* __restrict__", "y")] + eparams
              + [("int", n) for n in ("N", "H", "W", "C", "Ho", "Wo", "O", "KH", "KW", "sh", "sw", "ph", "pw", "dh",
                                       "dw")])
    static = {"ti": ti, "to": to, "epi": tuple(epi)}
    if rows:
        assert window and 2 <= rows <= DW_ROWS_MAX
        static["rows"] = rows
        src = (window_code(DW8_ROWS_TEMPLATE.replace("$PIXEL8_LOOP", pixel8_loop("t8", "hg", "HG")), window, static)
               .replace("$ROWS", str(rows))
               .replace("$EPI", ecode).replace("$STORE", STORE8[to]))
        return _finish("dwconv8", src, params, 256, static)
    src = vec8_source("O", window_code(DW8_BODY, window, static), "acc[j] + bias[c]", ecode, to)
    return _finish("dwconv8", src, params, 256, static)


# ----------------------------------------------------------------------------- pooling

POOL_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__(256) $NAME(
    $SIG)
{
    const long long total = (long long)N * Ho * Wo * C;
    const int CH = C;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(idx % C);
        long long p = idx / C;
        const int wo = (int)(p % Wo); p /= Wo;
        const int ho = (int)(p % Ho);
        const long long nimg = p / Ho;
        const long long xb = nimg * H * W * C + c;
        const int h0 = ho * sh - ph, w0 = wo * sw - pw;
        float acc = $INIT;
        int cnt = 0;
        for (int kh = 0; kh < KH; ++kh) {
            const int hi = h0 + kh * dh;
            for (int kw = 0; kw < KW; ++kw) {
                const int wi = w0 + kw * dw;
                const bool inside = (unsigned)hi < (unsigned)H && (unsigned)wi < (unsigned)W;
                $BODY
            }
        }
        float v = $FINAL;
        $EPI
        stf(y, idx, v);
    }
}
"""


def pool_kernel(kind: str, ti: str, to: str, epi=()) -> Kernel:
    """Max or average pooling, one thread per output value. Average: a tap counts in the divisor
    when it lies in [hlo, hhi) x [wlo, whi) (the input, or the input and its pads)."""
    eparams, ecode, _ = epilogue(epi)
    params = ([(f"const {CTYPE[ti]}* __restrict__", "x"), (f"{CTYPE[to]}* __restrict__", "y")] + eparams
              + [("int", n) for n in ("N", "H", "W", "C", "Ho", "Wo", "KH", "KW", "sh", "sw", "ph", "pw", "dh", "dw",
                                       "hlo", "hhi", "wlo", "whi")])
    if kind == "max":
        init, body, final = "NEG_INF", "if (inside) acc = fmaxf(acc, ldf(x, xb + ((long long)hi * W + wi) * C));", "acc"
    else:
        init = "0.f"
        body = ("if (inside) acc += ldf(x, xb + ((long long)hi * W + wi) * C);\n"
                "                if (hi >= hlo && hi < hhi && wi >= wlo && wi < whi) ++cnt;")
        final = "acc / (float)(cnt > 0 ? cnt : 1)"
    src = (POOL_TEMPLATE.replace("$INIT", init).replace("$BODY", body).replace("$FINAL", final)
           .replace("$EPI", ecode))
    return _finish("pool", src, params, 256, {"kind": kind, "ti": ti, "to": to, "epi": tuple(epi)})


POOL8_BODY = r"""float acc[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] = $INIT;
        int cnt = 0;
$UNROLL
        for (int kh = 0; kh < $KH; ++kh) {
            const int hi = h0 + kh * dh;
$UNROLL
            for (int kw = 0; kw < $KW; ++kw) {
                const int wi = w0 + kw * dw;
                $COUNT
                if ((unsigned)hi >= (unsigned)H || (unsigned)wi >= (unsigned)W) continue;
                float xv[8];
                ld8a(x + xb + ((long long)hi * W + wi) * C, xv);
#pragma unroll
                for (int j = 0; j < 8; ++j) { const float a = xv[j]; $TAP }
            }
        }
        (void)cnt;"""


def pool8_kernel(kind: str, to: str, epi=(), ti: str = "f16", window: tuple | None = None) -> Kernel:
    """Max or average pooling of fp16 or fp32 activations (ti) with C % 8 == 0, 8 neighbouring
    channels a thread (one 16-byte load a tap for fp16, two for fp32; 16-byte stores); the divisor
    rule as pool_kernel. window: see window_code."""
    eparams, ecode, _ = epilogue(epi)
    params = ([(f"const {CTYPE[ti]}* __restrict__", "x"), (f"{CTYPE[to]}* __restrict__", "y")] + eparams
              + [("int", n) for n in ("N", "H", "W", "C", "Ho", "Wo", "KH", "KW", "sh", "sw", "ph", "pw", "dh", "dw",
                                       "hlo", "hhi", "wlo", "whi")])
    if kind == "max":
        init, count, final = "NEG_INF", "", "acc[j]"
        body = "acc[j] = fmaxf(acc[j], a);"
    else:
        init, final = "0.f", "acc[j] / (float)(cnt > 0 ? cnt : 1)"
        count = "if (hi >= hlo && hi < hhi && wi >= wlo && wi < whi) ++cnt;"
        body = "acc[j] += a;"
    static = {"kind": kind, "ti": ti, "to": to, "epi": tuple(epi)}
    pool = window_code(POOL8_BODY.replace("$INIT", init).replace("$COUNT", count).replace("$TAP", body), window, static)
    return _finish("pool8", vec8_source("C", pool, final, ecode, to), params, 256, static)


GPOOL_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__(256) $NAME(
    $SIG)
{
    __shared__ float red[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const long long nimg = blockIdx.y;
    const int CH = C;
    float acc = $INIT;
    if (c < C) {
        const long long xb = nimg * HW * C + c;
        for (int p = threadIdx.y; p < HW; p += 8) {
            const float t = ldf(x, xb + (long long)p * C);
            acc = $COMBINE;
        }
    }
    red[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int i = 1; i < 8; ++i) { const float t = red[i][threadIdx.x]; acc = $COMBINE; }
        float v = $FINAL;
        const long long idx = nimg * C + c;
        $EPI
        stf(y, idx, v);
    }
}
"""


def gpool_kernel(kind: str, ti: str, to: str, epi=()) -> Kernel:
    """Global average or max pooling: block (32, 8) per image and 32 channels, grid (ceil(C/32), N)."""
    eparams, ecode, _ = epilogue(epi)
    params = ([(f"const {CTYPE[ti]}* __restrict__", "x"), (f"{CTYPE[to]}* __restrict__", "y")] + eparams
              + [("int", "HW"), ("int", "C"), ("float", "inv")])
    init, comb, final = (("NEG_INF", "fmaxf(acc, t)", "acc") if kind == "max" else ("0.f", "acc + t", "acc * inv"))
    src = (GPOOL_TEMPLATE.replace("$INIT", init).replace("$COMBINE", comb).replace("$FINAL", final)
           .replace("$EPI", ecode))
    return _finish("gpool", src, params, 256, {"kind": kind, "ti": ti, "to": to, "epi": tuple(epi)})


# ----------------------------------------------------------------------------- dense (small batch)

DENSE_SMALL_NB = 8  # images per pass (registers per lane)
DENSE_SMALL_OPW = 4  # outputs per warp at most (the planner gives each warp fewer when that fills more SMs)
DENSE_SMALL_SMEM = 48 * 1024  # the rows held at once: any device
DENSE_SMALL_SMEM_SM80 = 96 * 1024  # on sm_80 and later (99 KB or more a block when asked): Deep MNIST's
# fc1 (K = 3136 floats) holds 7 rows instead of 3, so batch 7 reads its 12.8 MB of weights once, not three times

DENSE_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__(256) $NAME(
    $SIG)
{
    extern __shared__ float xs[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int obase = (blockIdx.x * 8 + warp) * OPW;
    const int CH = O;
    for (int n0 = 0; n0 < N; n0 += NB) {
        const int nb = min(NB, N - n0);
        __syncthreads();
        for (int e = threadIdx.x; e < nb * K; e += blockDim.x) {
            const int b = e / K, k = e - b * K;
            const long long xb = (long long)(n0 + b) * HW * K + k;
            float s = 0.f;
            for (int p = 0; p < HW; ++p) s += ldf(x, xb + (long long)p * K);
            xs[e] = s * inv;
        }
        __syncthreads();
        for (int t = 0; t < OPW; ++t) {
            const int o = obase + t;
            if (o >= O) break;
            float acc[$NB];
#pragma unroll
            for (int b = 0; b < $NB; ++b) acc[b] = 0.f;
            const long long wb = (long long)o * K;
#if $VEC
            if ((K & 7) == 0) {  // fp16 weights, 8 per lane per step: one 16-byte load
                for (int k = lane * 8; k < K; k += 256) {
                    const u4_t wq = *reinterpret_cast<const u4_t*>(w + wb + k);
                    const u32_t ww[4] = {wq.x, wq.y, wq.z, wq.w};
#pragma unroll
                    for (int q = 0; q < 4; ++q) {
                        const float w0 = h2f((half_t)(ww[q] & 0xffffu)), w1 = h2f((half_t)(ww[q] >> 16));
#pragma unroll
                        for (int b = 0; b < $NB; ++b)
                            if (b < nb) {
                                const f2_t xv = *reinterpret_cast<const f2_t*>(&xs[b * K + k + 2 * q]);
                                acc[b] = fmaf(xv.y, w1, fmaf(xv.x, w0, acc[b]));
                            }
                    }
                }
            } else
#endif
#if $VEC4
            if ((K & 3) == 0) {  // fp32 weights, 4 per lane per step: one 16-byte load, two steps in flight
#pragma unroll 2
                for (int k = lane * 4; k < K; k += 128) {
                    const f4_t wq = *reinterpret_cast<const f4_t*>(w + wb + k);
#pragma unroll
                    for (int b = 0; b < $NB; ++b)
                        if (b < nb) {
                            const f4_t xv = *reinterpret_cast<const f4_t*>(&xs[b * K + k]);
                            acc[b] = fmaf(xv.w, wq.w, fmaf(xv.z, wq.z, fmaf(xv.y, wq.y, fmaf(xv.x, wq.x, acc[b]))));
                        }
                }
            } else
#endif
            for (int k = lane; k < K; k += 32) {
                const float wv = ldf(w, wb + k);
#pragma unroll
                for (int b = 0; b < $NB; ++b) if (b < nb) acc[b] = fmaf(xs[b * K + k], wv, acc[b]);
            }
#pragma unroll
            for (int b = 0; b < $NB; ++b) {
                float s = acc[b];
#pragma unroll
                for (int off = 16; off; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
                if (lane == 0 && b < nb) {
                    const int c = o;
                    const long long nimg = n0 + b;
                    const long long idx = nimg * O + o;
                    float v = s + bias[o];
                    $EPI
                    stf(y, idx, v);
                }
            }
        }
    }
}
"""


def dense_v1() -> bool:
    """CNNRT_CUDA_DENSE=v1: the small-batch dense kernel as it was before 2026-11-29 (fp32 weights
    4 bytes a lane, 48 KB of rows), for an A/B on a GPU."""
    return os.environ.get("CNNRT_CUDA_DENSE", "") == "v1"


def dense_small_kernel(ti: str, tw: str, to: str, epi=()) -> Kernel:
    """Dense layer for a few rows, optionally over a global average pool of its input (HW > 1):
    the (pooled) rows in shared memory, a warp per OPW outputs, fused bias and epilogue; fp16
    weights with K % 8 == 0 and fp32 weights with K % 4 == 0 are read 16 bytes a lane (fp32 two
    loads in flight: a lane's 4-byte loads left Deep MNIST's fc1 at 0.4 TB/s at batch 1).
    grid ceil(O / (8 * OPW)), 256 threads, NB*K*4 bytes of dynamic shared memory."""
    eparams, ecode, _ = epilogue(epi)
    params = ([(f"const {CTYPE[ti]}* __restrict__", "x"), (f"const {CTYPE[tw]}* __restrict__", "w"),
               ("const float* __restrict__", "bias"), (f"{CTYPE[to]}* __restrict__", "y")] + eparams
              + [("int", "N"), ("int", "HW"), ("int", "K"), ("int", "O"), ("float", "inv"), ("int", "NB"),
                 ("int", "OPW")])
    src = (DENSE_TEMPLATE.replace("$NB", str(DENSE_SMALL_NB)).replace("$VEC4", str(int(tw == "f32" and not dense_v1())))
           .replace("$VEC", str(int(tw == "f16")))
           .replace("$EPI", ecode))
    return _finish("dense", src, params, 256, {"ti": ti, "tw": tw, "to": to, "epi": tuple(epi)})


# ----------------------------------------------------------------------------- elementwise

ELT_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__(256) $NAME(
    $SIG)
{
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(idx % CH);
        const long long nimg = idx / HWC;
        (void)nimg;
        $COORDS
        float v = ldf(a0, $A0);
        $EPI
        stf(y, idx, v);
    }
}
"""


def eltwise_kernel(mode0: str, t0: str, to: str, epi=()) -> Kernel:
    """A chain of elementwise ops over the output's elements (grid-stride loop): the first input a0
    indexed by `mode0`, each further operand by its EpiOp mode. 'bcast' operands read their
    strides from `meta`: 6 output dims, then 6 strides per 'bcast' operand (a0 first if bcast)."""
    eparams, ecode, _ = epilogue(epi)
    nb = (mode0 == "bcast") + sum(e.mode == "bcast" for e in epi)
    coords = ""
    if nb:
        lines = ["long long rem = idx, cc[6];",
                 "#pragma unroll\n        for (int d = 5; d >= 0; --d) { cc[d] = rem % meta[d]; rem /= meta[d]; }"]
        slot_b = 0
        names = []
        if mode0 == "bcast":
            names.append("boffa")
        names += [f"boff{i}" for i, e in enumerate([e for e in epi if e.mode is not None]) if e.mode == "bcast"]
        for nm in names:
            lines.append(f"long long {nm} = 0;\n#pragma unroll\n        for (int d = 0; d < 6; ++d) "
                         f"{nm} += cc[d] * meta[{6 + 6 * slot_b} + d];")
            slot_b += 1
        coords = "\n        ".join(lines)
    a0 = "boffa" if mode0 == "bcast" else index_expr(mode0, -1)
    params = ([(f"const {CTYPE[t0]}* __restrict__", "a0")] + eparams
              + [(f"{CTYPE[to]}* __restrict__", "y"), ("long long", "total"), ("int", "CH"), ("long long", "HWC"),
                 ("const long long* __restrict__", "meta")])
    src = ELT_TEMPLATE.replace("$COORDS", coords).replace("$A0", a0).replace("$EPI", ecode)
    return _finish("eltwise", src, params, 256, {"mode0": mode0, "t0": t0, "to": to, "epi": tuple(epi)})


# ----------------------------------------------------------------------------- softmax

SOFTMAX_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__(256) $NAME(
    $SIG)
{
    const long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= (long long)outer * inner) return;
    const long long base = (row / inner) * L * inner + row % inner;
    float m = NEG_INF;
    for (int j = lane; j < L; j += 32) m = fmaxf(m, ldf(x, base + (long long)j * inner)$BIAS);
#pragma unroll
    for (int off = 16; off; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    float s = 0.f;
    for (int j = lane; j < L; j += 32) s += expf(ldf(x, base + (long long)j * inner)$BIAS - m);
#pragma unroll
    for (int off = 16; off; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    $PRE
    for (int j = lane; j < L; j += 32) {
        const float v = ldf(x, base + (long long)j * inner)$BIAS;
        stf(y, base + (long long)j * inner, $OUT);
    }
}
"""


def softmax_kernel(log: bool, ti: str, to: str, bias: bool = False) -> Kernel:
    """Softmax or LogSoftmax along an axis: one warp per (outer, inner) row of L values strided by
    `inner`; `bias` (inner == 1 only) adds a per-position vector first (a dense layer's bias)."""
    params = [(f"const {CTYPE[ti]}* __restrict__", "x"), (f"{CTYPE[to]}* __restrict__", "y"),
              ("const float* __restrict__", "b"), ("int", "outer"), ("int", "L"), ("int", "inner")]
    src = (SOFTMAX_TEMPLATE.replace("$BIAS", " + b[j]" if bias else "")
           .replace("$PRE", "const float ls = logf(s);" if log else "")
           .replace("$OUT", "v - m - ls" if log else "expf(v - m) / s"))
    return _finish("softmax", src, params, 256, {"log": log, "ti": ti, "to": to, "bias": bias})


# ----------------------------------------------------------------------------- data movement

COPY_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__(256) $NAME(
    $SIG)
{
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        long long rem = idx, oo = meta[30], io = meta[31];
        bool ok = true;
#pragma unroll
        for (int d = 5; d >= 0; --d) {
            const long long cd = rem % meta[d];
            rem /= meta[d];
            oo += cd * meta[6 + d];
            io += cd * meta[12 + d];
            ok = ok && cd >= meta[18 + d] && cd < meta[24 + d];
        }
        stf(y, oo, ok ? ldf(x, io) : fill);
    }
}
"""


def copy_kernel(ti: str, to: str) -> Kernel:
    """Strided copy over up to 6 dims: Transpose, Concat (one launch per input), Slice, Split, Pad.
    meta: dims[6], out strides[6], in strides[6], lo[6], hi[6] (outside [lo, hi): `fill`),
    out base, in base."""
    params = [(f"const {CTYPE[ti]}* __restrict__", "x"), (f"{CTYPE[to]}* __restrict__", "y"), ("long long", "total"),
              ("const long long* __restrict__", "meta"), ("float", "fill")]
    return _finish("copy", COPY_TEMPLATE, params, 256, {"ti": ti, "to": to})


REDUCE_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__(256) $NAME(
    $SIG)
{
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        long long rem = idx, base = 0;
#pragma unroll
        for (int d = 5; d >= 0; --d) { const long long cd = rem % meta[d]; rem /= meta[d]; base += cd * meta[6 + d]; }
        float acc = $INIT;
        for (long long r = 0; r < R; ++r) {
            long long rr = r, off = base;
#pragma unroll
            for (int d = 5; d >= 0; --d) { const long long cd = rr % meta[12 + d]; rr /= meta[12 + d]; off += cd * meta[18 + d]; }
            const float t = ldf(x, off);
            acc = $COMBINE;
        }
        stf(y, idx, $FINAL);
    }
}
"""

REDUCE = {"ReduceSum": ("0.f", "acc + t", "acc"), "ReduceMean": ("0.f", "acc + t", "acc * scale"),
          "ReduceMax": ("NEG_INF", "fmaxf(acc, t)", "acc"), "ReduceMin": ("-NEG_INF", "fminf(acc, t)", "acc")}


def reduce_kernel(op: str, ti: str, to: str) -> Kernel:
    """Reduction over any axes: one thread per output value. meta: kept dims[6], their input
    strides[6], reduced dims[6], their input strides[6]."""
    init, comb, final = REDUCE[op]
    params = [(f"const {CTYPE[ti]}* __restrict__", "x"), (f"{CTYPE[to]}* __restrict__", "y"), ("long long", "total"),
              ("long long", "R"), ("const long long* __restrict__", "meta"), ("float", "scale")]
    src = REDUCE_TEMPLATE.replace("$INIT", init).replace("$COMBINE", comb).replace("$FINAL", final)
    return _finish("reduce", src, params, 256, {"op": op, "ti": ti, "to": to})


PREP_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__(256) $NAME(
    $SIG)
{
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(idx % CH);
        stf(y, idx, (ldf(x, idx) * scale - mean[c]) / std[c]);
    }
}
"""


PREP_PAD_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__(256) $NAME(
    $SIG)
{
    // one pixel a thread: its CHI channels in, $PC out (the rest zero): one 16-byte store in fp16 (8)
    const long long npix = total / $PC;
    for (long long pix = blockIdx.x * (long long)blockDim.x + threadIdx.x; pix < npix;
         pix += (long long)gridDim.x * blockDim.x) {
        float v[8];
#pragma unroll
        for (int c = 0; c < 8; ++c) v[c] = c < CHI ? (ldf(x, pix * CHI + c) * scale - mean[c]) / std[c] : 0.f;
        st8(y, pix * $PC, v, $PC, true);
    }
}
"""


PREP_S2D_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__(256) $NAME(
    $SIG)
{
    // the image's 2x2 space-to-depth: output pixel (n, bh, bw) holds input pixels (2bh + dy, 2bw + dx)
    // as channels (dy * 2 + dx) * CHI + c, 16 channels (the rest zero, and zero past the image's
    // edge), two 16-byte stores a pixel
    const long long npix = (long long)N * H2 * W2;
    for (long long pix = blockIdx.x * (long long)blockDim.x + threadIdx.x; pix < npix;
         pix += (long long)gridDim.x * blockDim.x) {
        const int bw = (int)(pix % W2);
        const long long t = pix / W2;
        const int bh = (int)(t % H2);
        const long long n = t / H2;
        float v[2][8];
#pragma unroll
        for (int q = 0; q < 16; ++q) v[q >> 3][q & 7] = 0.f;
#pragma unroll
        for (int d = 0; d < 4; ++d) {
            const int h = 2 * bh + (d >> 1), w = 2 * bw + (d & 1);
            if (h < H && w < W) {
                const long long src = ((n * H + h) * W + w) * CHI;
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    const int q = d * CHI + c;
                    if (c < CHI) v[q >> 3][q & 7] = (ldf(x, src + c) * scale - mean[c]) / std[c];
                }
            }
        }
        st8(y, pix * 16, v[0], 8, true);
        st8(y, pix * 16 + 8, v[1], 8, true);
    }
}
"""


def prep_s2d_kernel(ti: str, to: str) -> Kernel:
    """The input preprocessing of a space-to-depth stem (cuda_plan.Program.s2d): (x * scale -
    mean[c]) / std[c] of an N x H x W x CHI image (CHI <= 4) stored as its 2x2 space-to-depth,
    N x H2 x W2 x 16 (H2, W2: H, W halved, rounded up)."""
    assert to == "f16"
    params = [(f"const {CTYPE[ti]}* __restrict__", "x"), (f"{CTYPE[to]}* __restrict__", "y"), ("int", "N"),
              ("int", "H"), ("int", "W"), ("int", "H2"), ("int", "W2"), ("int", "CHI"), ("float", "scale"),
              ("const float* __restrict__", "mean"), ("const float* __restrict__", "std")]
    return _finish("prep", PREP_S2D_TEMPLATE, params, 256, {"ti": ti, "to": to, "s2d": True})


def prep_kernel(ti: str, to: str, pad: bool = False, pc: int = 8) -> Kernel:
    """The model's input preprocessing: (x * scale - mean[c]) / std[c] into the storage type.
    pad: the image's CHI channels are stored as CH = pc (8, or 4 for fp32; total counts the output),
    the rest zero."""
    assert pc in (4, 8)
    params = [(f"const {CTYPE[ti]}* __restrict__", "x"), (f"{CTYPE[to]}* __restrict__", "y"), ("long long", "total"),
              ("int", "CH"), ("float", "scale"), ("const float* __restrict__", "mean"),
              ("const float* __restrict__", "std")] + ([("int", "CHI")] if pad else [])
    src = PREP_PAD_TEMPLATE.replace("$PC", str(pc)) if pad else PREP_TEMPLATE
    return _finish("prep", src, params, 256, {"ti": ti, "to": to, "pad": pad, **({"pc": pc} if pad else {})})


def module_source(kernels) -> str:
    """One translation unit for a set of kernels (each once)."""
    seen, parts = set(), [PRELUDE]
    for k in kernels:
        if k.name not in seen:
            seen.add(k.name)
            parts.append(k.source)
    return "\n".join(parts)
