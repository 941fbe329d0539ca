"""The CUDA backend's planner: a graph becomes a list of kernel launches (pure Python, no CuPy).

`Program(graph, precision)` runs once per model: it folds BatchNormalization (ir.passes.optimize),
groups nodes into fused launches, and keeps the constants in the layouts the kernels read.
Fusion is epilogue fusion: a conv, depthwise conv, pool, global pool, dense layer or elementwise
op absorbs the chain of elementwise nodes that follows it (bias, activation, residual Add,
per-channel or per-image scale, an unfolded BatchNormalization), as long as each intermediate
tensor has that one reader. A global average pool read only by a dense layer (through
Flatten/Reshape) becomes one `gpool_dense` group. Reshapes are free (views of the same buffer).

`Program.plan(n, input_kind)` instantiates the groups for a batch of n: shapes, tile sizes, grids,
the kernels' sources (cuda_codegen), buffers (one arena; tensors whose lifetimes do not overlap
share memory), and the small int64 `meta` array that strided kernels read. A Plan is data: the
executor (cuda_graph.py) turns it into CUDA launches and one CUDA graph; the NumPy emulator
(cnnrt/testing/cuda_emulator.py) runs the same Plan on the CPU so that the planning is tested
without a GPU.

Nodes that no kernel covers (a MatMul of two activations, say) become `host` launches: their
NumPy definition runs on the CPU between device segments, and describe() says so.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import BackendUnavailable
from ..ir import ops as O
from ..ir.graph import Graph, Node
from . import cuda_codegen as G

ALIAS_OPS = {"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze"}
COPY_OPS = {"Transpose", "Concat", "Slice", "Split", "Pad"}
REDUCE_OPS = set(G.REDUCE)
EPI_KINDS = {"conv", "dwconv", "pool", "gpool", "dense", "eltwise", "gpool_dense"}
ALIGN = 256
DENSE_SMALL_MAX_ROWS = 32  # dense layers with at most this many rows use our kernel, else cuBLAS
GRID_STRIDE_BLOCKS = 32  # grid-stride kernels: at most this many blocks per SM
PROBE_BATCHES = (2, 3)  # fusion decisions must hold for any batch: checked at two sizes


def prod(s) -> int:
    """The product of a shape's dimensions, as a Python int (math.prod: np.prod took about a fifth
    of a batch-1 call's host time in the runner)."""
    return int(math.prod(int(d) for d in s))


def contiguous_strides(s) -> list[int]:
    out, acc = [], 1
    for d in reversed(s):
        out.append(acc)
        acc *= int(d)
    return out[::-1]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pad6(vals, fill) -> list[int]:
    vals = [int(v) for v in vals]
    if len(vals) > 6:
        raise BackendUnavailable(f"tensors of rank {len(vals)} are not supported by the CUDA kernels (at most 6)")
    return [fill] * (6 - len(vals)) + vals


def bcast_strides(s, out) -> list[int]:
    """Strides (in elements) that read a tensor of shape s broadcast to shape out."""
    s = (1,) * (len(out) - len(s)) + tuple(s)
    st = contiguous_strides(s)
    return [0 if (d == 1 and o != 1) else x for d, o, x in zip(s, out, st)]


# ---------------------------------------------------------------------------- tile choice

TILE_COST = {"128x64": 1.0, "128x32": 1.25, "64x64": 1.25, "64x32": 1.6, "128x16": 1.8, "32x32": 2.2, "64x16": 2.6,
             "32x16": 3.0}
BLOCKS_PER_SM = 2


MMA_TILE_COST = {"tc128x128k64": 0.9, "tc256x64": 0.93, "tc128x128": 1.0, "tc128x64": 1.15, "tc64x64": 1.35, "tc128x32": 1.45, "tc64x32": 1.8,
                 "tc32x32": 2.6, "tc256x16": 2.1, "tc128x16": 2.3, "tc64x16": 2.8, "tc32x16": 3.6}


def vec8_enabled() -> bool:
    """Depthwise convs and pools (fp16 or fp32) with C % 8 == 0 on the 8-channels-a-thread kernels,
    unless CNNRT_CUDA_NO_VEC8=1 (then the one-value-a-thread kernels run them: an A/B switch)."""
    return os.environ.get("CNNRT_CUDA_NO_VEC8", "") not in ("1", "true", "yes")


def wgmma_tile() -> str | None:
    """The tile of the Hopper `wgmma` conv (cuda_codegen.wgmma_conv_kernel) with CNNRT_CUDA_WGMMA=1
    (wg2n128sp; or a tile's name from cuda_codegen.WGMMA_TILES), on sm_90 devices only; off by
    default: right on an H200 but slower than the mma.sync convs (ResNet-18 5.49 -> 10.48 ms,
    docs/gpu_profile_wgmma_im2col_{0,1}_2210.json)."""
    env = os.environ.get("CNNRT_CUDA_WGMMA", "")
    if env in ("", "0", "false", "no"):
        return None
    return env if env in G.WGMMA_TILES else "wg2n128sp"


@dataclass(frozen=True)
class WgmmaHalo:
    """How the halo convs run on Hopper's wgmma (cuda_codegen.halo_wgmma_kernel): bn output channels
    a block (64 or 128; at most the layer's width rounded up to 16), bstages weight stages of kch K
    steps, pipe wgmma groups in flight across chunks."""

    bn: int = 64
    bstages: int = 2
    kch: int = 4
    pipe: int = 0


def wgmma_halo_spec() -> WgmmaHalo | None:
    """The halo convs on wgmma where CNNRT_CUDA_WGMMA_HALO asks (sm_90 devices only): 1 for the
    defaults, or a spec such as "bn128,st3,k2,p1" (an A/B switch for dev runs); off by default until
    it has won its A/B on a GPU."""
    env = os.environ.get("CNNRT_CUDA_WGMMA_HALO", "")
    if env in ("", "0", "false", "no"):
        return None
    return _parse_spec(env, WgmmaHalo())


SPEC_KEYS = (("bn", "bn"), ("st", "bstages"), ("sm", "smem_kb"), ("k", "kch"), ("p", "pipe"))


def _parse_spec(env: str, spec):
    """A tile spec from a switch's value, "bn128,st3,k2,p1": each part a key of SPEC_KEYS and a
    number sets that field of `spec` (a frozen dataclass); other parts are left to the caller."""
    for part in env.split(","):
        for key, name in SPEC_KEYS:
            if part.startswith(key) and part[len(key):].isdigit() and hasattr(spec, name):
                spec = replace(spec, **{name: int(part[len(key):])})
                break
    return spec


@dataclass(frozen=True)
class WgmmaBand:
    """How stride-1 convs run on the wgmma band conv (cuda_codegen.band_conv_kernel): at most bn
    output channels a block, bstages weight stages of kch K steps, pipe wgmma groups in flight."""

    bn: int = 128
    bstages: int = 0  # 0: the tile chosen at 4 stages, then up to BAND_STAGES where they fit
    kch: int = 4
    pipe: int = 1
    all: bool = False  # every conv it fits, not only the wide ones (BAND_RULE)
    smem_kb: int = 227  # a block's most shared memory (113: two blocks an SM)
    cm: bool = False  # K channel-major, the footprint streamed in with the weights (right, slower: opt-in)


def wgmma_band_spec() -> WgmmaBand | None:
    """Stride-1 convs (C % 16 == 0) on the wgmma band conv, on sm_90 devices: on by default where
    BAND_RULE takes them; CNNRT_CUDA_WGMMA_BAND=0 turns it off, "all" puts every conv it fits on it,
    a spec such as "bn64,st3,k2,p0" changes its tile (A/B switches for dev runs)."""
    env = os.environ.get("CNNRT_CUDA_WGMMA_BAND", "")
    if env in ("0", "false", "no"):
        return None
    parts = env.split(",")
    return _parse_spec(env, WgmmaBand(all="all" in parts, cm="cm" in parts))


def choose_band(g: G.HaloGeom, o: int, n: int, nsm: int, spec: WgmmaBand) -> G.BandTile | None:
    """The band tile for a conv the wgmma band kernel can take (stride 1, C % 16 == 0), where its
    blocks fill the SMs at least once (small batches keep the split-K and halo paths)."""
    smem = min(spec.smem_kb * 1024, G.BAND_SMEM)
    t = G.band_tile(g, o, n, spec.bn, spec.kch, max(spec.bstages or 4, 2 + spec.pipe), spec.pipe, smem, spec.cm)
    if t is None or t.blocks(g, n) * cdiv(o, t.bn) < nsm:
        return None
    if not spec.bstages:  # more stages where they fit beside the chosen band
        t = next(x for x in (replace(t, bstages=st) for st in range(BAND_STAGES, t.bstages - 1, -1))
                 if x.bstages == t.bstages or x.smem(g) <= smem)
    if not spec.all and (t.bn < 128 or t.mt < 4 or g.KH * g.KW == 1):
        return None  # BAND_RULE
    return t


# BAND_RULE: the band conv only where its blocks are 256 GEMM rows by at least 128 channels, and
# only for convs with more than one tap (1x1 convs on it are right, checked on the ONNX zoo, but
# not yet timed against mma_conv's pointwise tiles). H200,
# 2026-11-28 (docs/gpu_profile_band_stages_*_2238.json): ResNet-18's 28x28x128 convs 291 -> 233 us
# (6 stages; 246 with 4) and 14x14x256 convs (whole images) 280 -> 238 us; narrower or shorter tiles
# lost (its 56x56x64 convs 277 -> 295 us, 14x14x256 in 8-row bands 280 -> 346, 7x7x512 293 -> 621;
# ResNet-20's 16- to 64-channel convs 2-5x slower than the halo conv, gpu_profile_band_all_2223.json).
# Whole net with the rule: 5.47 -> 5.19 ms of device time (gpu_profile_band_default_*_2241.json).
BAND_STAGES = 6  # 8 lost to 6 (258 against 233 us on the 28x28x128 conv)


def wgmma_halo_tile(t: G.HaloTile, g: G.HaloGeom, o: int, spec: WgmmaHalo) -> G.HaloTile | None:
    """The halo tile `t` (chosen for mma.sync) as a wgmma tile: whole warpgroups, warps_n 1, the
    weights streamed; None where it does not fit (threads, shared memory)."""
    bn = min(spec.bn, max(16, cdiv(o, 16) * 16))
    w = replace(t, wg=True, warps_n=1, bn=bn, bstages=max(spec.bstages, 2 + spec.pipe), kch=spec.kch)
    if w.threads(g) > 512 or w.smem(g, G.mma_coalesce_halo(w)) > G.HALO_SMEM:
        return None
    return w


def mma_enabled() -> bool:
    """Tensor-core convolutions for fp16 plans, unless CNNRT_CUDA_NO_MMA=1 (then the SIMT kernel runs them)."""
    return os.environ.get("CNNRT_CUDA_NO_MMA", "") not in ("1", "true", "yes")


def choose_mma_tile(M: int, O: int, K: int, nsm: int, variant: str = "vec") -> str:
    """The tensor-core tile with the least estimated time (as choose_tile: waves x tile work x cost);
    the A gather `variant` sets each tile's pipeline depth, so the shared memory a block takes."""
    best, best_t = None, None
    only = [x for x in os.environ.get("CNNRT_CUDA_MMA_TILES", "").split(",") if x in G.MMA_TILES]
    for name, t in G.MMA_TILES.items():
        if only and name not in only:  # CNNRT_CUDA_MMA_TILES=tc64x16,tc32x16: a tuning switch for A/B runs
            continue
        if not only and O <= t.bn // 2 and t.bn > 16:
            continue  # more than half the tile's columns would be empty (a forced tile runs anyway)
        if not only and variant == "scalar" and t.stages:
            continue  # the pipelined tiles win only with the 16-byte gathers (dev/cuda/mma_conv.py)
        blocks = cdiv(M, t.bm) * cdiv(O, t.bn)
        per_sm = t.per_sm(G.mma_stages(variant, t), coalesce=G.mma_coalesce(t))
        # rounds of blocks per SM: the blocks resident on an SM share it, so past one full wave a
        # partial wave costs by its blocks per SM, not a whole wave
        rounds = per_sm if blocks <= nsm * per_sm else cdiv(blocks, nsm)
        est = rounds * t.bm * t.bn * cdiv(K, t.bk) * t.bk * MMA_TILE_COST[name]
        if best_t is None or est < best_t:
            best, best_t = name, est
    return best


HALO_MAX_O = 64  # the halo conv by default only for layers this narrow (dev/cuda/mma_conv.py, H200: ResNet-20's
# 16-, 32- and 64-channel 3x3 convs at 10,000 images 885 -> 356, 428 -> 221 and 308 -> 222 us)


def tf32_gemm_enabled() -> bool:
    """fp32 convs the 3xTF32 halo conv does not take run on the 3xTF32 im2col conv
    (mma_tf32_conv_kernel) instead of the SIMT kernel; on by default (H200, 2026-11-29: ResNet-18
    fp32 at 256 images 29.2 -> 23.4 ms of device time, MobileNetV2 16.1 -> 15.7,
    docs/gpu_profile_tf32_gemm_{0,1}.json). CNNRT_CUDA_TF32_GEMM=0 turns it off."""
    return os.environ.get("CNNRT_CUDA_TF32_GEMM", "1") not in ("0", "false", "no")


def tf32_dense_enabled() -> bool:
    """fp32 Dense layers at large batch on the 3xTF32 im2col conv (a 1x1 conv over (rows, 1, 1, K))
    instead of cuBLAS's fp32 GEMM: CNNRT_CUDA_TF32_DENSE=1. Opt-in: written on 2026-11-29 without
    device time left to measure it (Deep MNIST fp32's fc1 took 1.5 of 7.4 ms at 10,000 images on
    cuBLAS, about 42 TFLOP/s); `make gpu-pending` runs its A/B."""
    return os.environ.get("CNNRT_CUDA_TF32_DENSE", "0") in ("1", "true", "yes")


def tf32_presplit_enabled() -> bool:
    """The 3xTF32 halo conv splits its footprint into tf32 hi and lo parts once, in shared memory
    (twice the footprint's bytes), instead of splitting each value at each of the K steps that read
    it (a 3x3 conv reads a value 9 times): CNNRT_CUDA_TF32_PRESPLIT=1. Opt-in: written on 2026-11-29
    after ncu found that kernel bound by its ALU pipe, without device time left to run it."""
    return os.environ.get("CNNRT_CUDA_TF32_PRESPLIT", "0") in ("1", "true", "yes")


def tf32x3_enabled() -> bool:
    """fp32 convs on the tensor cores in 3xTF32 (the halo kernel) where they fit; on by default
    (H200, 2026-11-28: ResNet-20 fp32 at 10,000 images 43.0 -> 25.1 ms of device time, Deep MNIST
    11.2 -> 8.9 ms; docs/gpu_profile_fp32_tf32x3_*.json). CNNRT_CUDA_TF32X3=0 turns it off."""
    return os.environ.get("CNNRT_CUDA_TF32X3", "1") not in ("0", "false", "no")


def choose_halo(g: G.HaloGeom, o: int, n: int, nsm: int, tf32: bool = False) -> G.HaloTile | None:
    """The halo conv's tile for a tensor-core conv layer, or None for mma_conv_kernel (fp16) or the
    SIMT conv (fp32): for narrow layers (o <= HALO_MAX_O output channels, C % 8 == 0; C % 4 for
    tf32) with more than one tap (in fp16 a 1x1 conv reads each input once: nothing to share; in
    fp32 the alternative is the SIMT kernel, so 1x1 convs take it too) and a footprint that fits,
    and at least one block per SM (small batches keep the split-K path). Wider layers, whose
    weights do not fit beside the footprint, stream them (fp16: stride 1 only). CNNRT_CUDA_HALO=0
    never takes it, =all wherever it fits (A/B switches); a tile forced by CNNRT_CUDA_MMA_TILES
    keeps it off."""
    env = os.environ.get("CNNRT_CUDA_HALO", "")
    if env in ("0", "no", "false"):
        return None
    if env != "all" and any(x in G.MMA_TILES for x in os.environ.get("CNNRT_CUDA_MMA_TILES", "").split(",")):
        return None  # K-step tiles forced (an A/B run): they take every layer
    split = tf32 and tf32_presplit_enabled()
    t = G.halo_tile(g, o, n, tf32=tf32, presplit=split)
    taps = tf32 or g.KH * g.KW > 1  # fp32: even a 1x1 conv gains (3xTF32 against the SIMT kernel)
    if t is not None and (env == "all" or o <= HALO_MAX_O and taps and t.blocks(g, n) * cdiv(o, t.bn) >= nsm):
        return t
    if not (tf32 or halo_stream_enabled()) or (not tf32 and g.sh * g.sw > 1 and env != "all"):
        return None  # fp16 with streamed weights: stride 1 only (a stride-2 layer shares a pixel among
        # fewer taps, and ResNet-18's took 211 us streamed against 166 us on mma_conv)
    # the weights streamed: wider layers. fp32's footprint is twice as big: fewer stages may fit, and
    # the most output pixels a block wins (a 1-row band reads its 3-row footprint for fewer outputs)
    fits = [G.halo_tile(g, o, n, tf32=tf32, bstages=st, presplit=split)
            for st in ((HALO_TF32_STAGES, 2) if tf32 else (HALO_STREAM_STAGES,))]
    fits = [t for t in fits if t is not None]
    t = max(fits, key=lambda t: (t.rows * t.imgs, t.bstages)) if fits else None
    if t is None or env == "all":
        return t
    return t if taps and t.blocks(g, n) * cdiv(o, t.bn) >= nsm else None


HALO_STREAM_STAGES = 2  # fp16; H200: 273 us against 280 (3 stages) and 274 (4) on ResNet-18's layer1 conv
HALO_TF32_STAGES = 3  # fp32 (3xTF32), as measured on Deep MNIST's conv2


def halo_stream_enabled() -> bool:
    """The halo conv with streamed weights (cuda_codegen.halo_stream_kernel) for the fp16 layers
    whose weights do not fit beside the footprint (ResNet-18's stride-1 3x3 convs); on by default
    (H200, 2026-11-28: ResNet-18 at 256 images 5.98 -> 5.56 ms of device time,
    docs/gpu_profile_stream_*.json). CNNRT_CUDA_HALO_STREAM=0 turns it off."""
    return os.environ.get("CNNRT_CUDA_HALO_STREAM", "1") not in ("0", "false", "no")


SPLITK_REDUCE_STEPS = 12  # the reduction launch's cost in K steps of a conv block (~0.5 us each on an H200)


def choose_splitk(M: int, O: int, K: int, tile_name: str, nsm: int, variant: str = "vec") -> int:
    """How many blocks share K in a tensor-core conv (1: no split). Estimated time: waves of blocks
    over the SMs (up to 8 resident per SM) times the K steps each block runs, plus the reduction
    launch for a split. A split is taken when it saves a quarter or more: layers with few output
    tiles and a long K (batch 1 of a late ResNet stage), not short-K layers whose extra launch
    costs more than it saves (measured on an H200: ResNet-18 batch 1 0.63 -> 0.46 ms of device time,
    ResNet-20 batch 1 slower with splits of 18-step layers)."""
    if os.environ.get("CNNRT_CUDA_NO_SPLITK", "") in ("1", "true", "yes"):
        return 1
    t = G.MMA_TILES[tile_name]
    blocks = cdiv(M, t.bm) * cdiv(O, t.bn)
    slots = nsm * t.per_sm(G.mma_stages(variant, t), 8, coalesce=False)  # split-K stores directly
    return _splits(blocks, cdiv(K, t.bk), slots, SPLITK_REDUCE_STEPS, 4)


SPLITK_REDUCE_STEPS_SIMT = 40  # the same launch in K steps of the SIMT conv (BK = 8: ~0.15 us each)


def choose_splitk_simt(M: int, Og: int, K: int, tile_name: str, nsm: int) -> int:
    """choose_splitk for the fp32 SIMT conv (groups == 1): at batch 1 a late ResNet-18 layer has
    8 output tiles of 64x64 and 576 K steps, a few SMs busy and the rest idle."""
    if os.environ.get("CNNRT_CUDA_NO_SPLITK", "") in ("1", "true", "yes"):
        return 1
    t = G.TILES[tile_name]
    blocks = cdiv(M, t.bm) * cdiv(Og, t.bn)
    return _splits(blocks, cdiv(K, t.bk), nsm * BLOCKS_PER_SM, SPLITK_REDUCE_STEPS_SIMT, 16)


CLUSTER_REDUCE_STEPS = 2  # the in-cluster sum, in K steps (estimate: each block reads 1/S of S partial tiles)
CLUSTER_MIN_SAVING = 0.15  # of the unsplit estimate (the split with a separate sum wants 0.25: it adds a launch)
CLUSTER_MAX_WAVES = 1.5  # clusters' blocks at most this many per SM. Measured (H200, 2026-11-29,
# docs/gpu_profile_cluster_{0,1}.json): 64-192 blocks won everywhere (ResNet-18 batch 1 0.330 -> 0.266 ms,
# ResNet-20 0.204 -> 0.154), 258-516 lost at batch 7 (ResNet-18's 172 blocks x3: 23 -> 36 us), where the
# estimate counts co-resident blocks as free


def cluster_splitk_enabled() -> bool:
    """Split-K summed inside a thread block cluster on sm_90 (mma_conv_kernel(cluster=S)), in place of
    the split-K conv and its separate sum (11 of ResNet-18's 34 launches at batch 1, about 5 us each),
    and for small layers whose split the separate sum did not pay for (ResNet-20's 8x8x64 convs at
    batch 1); on by default. CNNRT_CUDA_CLUSTER_SPLITK=0 turns it off."""
    return os.environ.get("CNNRT_CUDA_CLUSTER_SPLITK", "1") not in ("0", "false", "no")


def choose_cluster_splitk(M: int, O: int, K: int, tile_name: str, nsm: int, variant: str = "vec") -> int:
    """The cluster split-K's share count (1: none): its sum costs CLUSTER_REDUCE_STEPS, not a launch,
    and a cluster holds at most CLUSTER_MAX blocks, the launch at most CLUSTER_MAX_WAVES blocks an SM;
    taken where it saves CLUSTER_MIN_SAVING of the unsplit estimate and beats choose_splitk's split
    with its separate sum (a long K wants more shares than a cluster holds: ResNet-18's 7x7x512 convs
    at batch 1 keep 29)."""
    t = G.MMA_TILES[tile_name]
    blocks, kt = cdiv(M, t.bm) * cdiv(O, t.bn), cdiv(K, t.bk)
    most = min(G.CLUSTER_MAX, int(CLUSTER_MAX_WAVES * nsm) // blocks)
    if most < 2:
        return 1
    slots = nsm * t.per_sm(G.mma_stages(variant, t), 8, coalesce=True)
    best, cs, base = _split_estimate(blocks, kt, slots, CLUSTER_REDUCE_STEPS, 2, most)
    if cs == 1 or best > (1 - CLUSTER_MIN_SAVING) * base:
        return 1
    split = choose_splitk(M, O, K, tile_name, nsm, variant)
    if split > 1:
        plain = nsm * t.per_sm(G.mma_stages(variant, t), 8, coalesce=False)
        kts = cdiv(kt, split)
        if cdiv(blocks * split, plain) * kts + SPLITK_REDUCE_STEPS <= best:
            return 1
    return cs


def choose_tf32_cluster(M: int, O: int, K: int, tile_name: str, nsm: int) -> int:
    """The share count of an fp32 conv's 3xTF32 cluster split-K (mma_tf32_conv_kernel(cluster=S)),
    for layers with fewer output tiles than SMs; 1: none (the SIMT conv and its own split-K). K steps
    of tile.bk / 2 floats; at most CLUSTER_MAX shares and CLUSTER_MAX_WAVES blocks an SM, each share
    at least 2 steps; the split with the least estimate (waves x steps + the in-cluster sum). The SIMT
    alternative is slower per step by far (ResNet-18 fp32 at batch 1: its 7x7x512 convs at 2.7
    TFLOP/s), so no saving bar."""
    t = G.MMA_TILES[tile_name]
    blocks, kt = cdiv(M, t.bm) * cdiv(O, t.bn), cdiv(K, t.bk // 2)
    most = min(G.CLUSTER_MAX, int(CLUSTER_MAX_WAVES * nsm) // blocks)
    if most < 2:
        return 1
    _, cs, _ = _split_estimate(blocks, kt, nsm, CLUSTER_REDUCE_STEPS, 2, most)
    return cs


def _splits(blocks: int, kt: int, slots: int, reduce_steps: int, min_steps: int, most: int = 32) -> int:
    """The split count with the least estimated time (waves x K steps per block, plus the reduction
    for a split), taken only when it saves a quarter or more; each share at least min_steps, at
    most `most` shares."""
    best, best_s, base = _split_estimate(blocks, kt, slots, reduce_steps, min_steps, most)
    return best_s if best <= 0.75 * base else 1


def _split_estimate(blocks: int, kt: int, slots: int, reduce_steps: int, min_steps: int,
                    most: int) -> tuple[int, int, int]:
    """(the best split's estimate, its split count, the estimate without a split), in K steps."""

    def est(s: int) -> tuple[int, int]:
        kts = cdiv(kt, s)
        s = cdiv(kt, kts)
        return cdiv(blocks * s, slots) * kts + (reduce_steps if s > 1 else 0), s

    base, _ = est(1)
    best, best_s = base, 1
    for s in range(2, min(most, kt // min_steps) + 1):
        e, s_real = est(s)
        if e < best:
            best, best_s = e, s_real
    return best, best_s, base


def choose_tile(M: int, Og: int, K: int, groups: int, nsm: int) -> str:
    """The tile shape with the least estimated time: waves of blocks over the SMs, each block's
    work weighted by how well the tile reuses its loads."""
    best, best_t = None, None
    kpad = cdiv(K, 8) * 8
    for name, t in G.TILES.items():
        if Og <= t.bn // 2 and t.bn > 16:
            continue  # more than half the tile's columns would be empty
        blocks = cdiv(M, t.bm) * cdiv(Og, t.bn) * groups
        waves = cdiv(blocks, nsm * BLOCKS_PER_SM)
        est = waves * t.bm * t.bn * kpad * TILE_COST[name]
        if best_t is None or est < best_t:
            best, best_t = name, est
    return best


# ---------------------------------------------------------------------------- plan records

@dataclass
class Launch:
    """One step of a plan. kind 'kernel': `kernel` launched on grid x block with `args` by
    parameter name; 'gemm': a cuBLAS product (`gemm`); 'host': a node's NumPy definition."""

    kind: str
    label: str
    nodes: list
    reads: list  # base tensors read
    writes: list  # base tensors written
    kernel: G.Kernel | None = None
    grid: tuple = (1, 1, 1)
    block: tuple = (256, 1, 1)
    smem: int = 0
    args: dict = field(default_factory=dict)  # name -> ('t', tensor) | ('c', const) | ('m', offset) | ('null',) | number
    gemm: dict | None = None
    host: Node | None = None


@dataclass
class Buffer:
    name: str
    shape: tuple
    dtype: str

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * G.ITEMSIZE[self.dtype]


@dataclass
class Plan:
    n: int
    in_kind: str
    launches: list
    buffers: dict  # base name -> Buffer
    offsets: dict  # base name -> byte offset in the arena
    arena_bytes: int
    meta: np.ndarray  # int64
    stage: str  # the staging buffer the input is copied into
    outputs: list  # [(graph output, base buffer, shape)]
    consts: list  # const names the launches read
    life: dict = field(default_factory=dict)  # base name -> [first, last] launch index (-1: the copy in)

    @property
    def capturable(self) -> bool:
        return not any(l.kind == "host" for l in self.launches)

    @property
    def kernels(self) -> list:
        return [l.kernel for l in self.launches if l.kernel is not None]

    @property
    def in_bytes(self) -> int:
        return self.buffers[self.stage].nbytes

    @property
    def out_bytes(self) -> int:
        return sum(prod(s) * 4 for _, _, s in self.outputs)


@dataclass
class Group:
    kind: str
    nodes: list
    epi: list = field(default_factory=list)  # [(op, attrs, operand or None, swap)]
    output: str = ""
    pos: int = 0

    @property
    def name(self) -> str:
        return self.nodes[0].name

    @property
    def ops(self) -> list:
        return [n.op for n in self.nodes]


# ---------------------------------------------------------------------------- the program

@dataclass(frozen=True)
class S2D:
    """A stride-2 stem conv (kernel k, top/left pad p on each axis) as a stride-1 conv over the
    image's 2x2 space-to-depth X[b][(dy * 2 + dx) * C + c] = x[2b + (dy, dx)][c]: output i reads
    blocks i + j, j from j0 = floor(-p / 2) to floor((k - 1 - p) / 2), so taps k2 = that many and the
    new pad -j0; tap j, phase d holds the old tap 2j + d + p (zero where that is outside the kernel)."""

    node: str
    c: int
    h: tuple  # (k, p) along the height
    w: tuple  # (k, p) along the width

    @staticmethod
    def _axis(k: int, p: int) -> tuple[int, int]:
        j0, j1 = -((p + 1) // 2), (k - 1 - p) // 2
        return j0, j1 - j0 + 1

    @property
    def kh2(self) -> int:
        return self._axis(*self.h)[1]

    @property
    def kw2(self) -> int:
        return self._axis(*self.w)[1]

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the stride-1 conv (only top and left are read: the output
        size is the stem's own)."""
        ph, pw = -self._axis(*self.h)[0], -self._axis(*self.w)[0]
        return ph, pw, ph, pw

    def weights(self, w: np.ndarray) -> np.ndarray:
        """The stem's weights (O, KH, KW, C) as the stride-1 conv's (O, kh2, kw2, 16)."""
        o, kh, kw, c = w.shape
        (j0h, _), (j0w, _) = self._axis(*self.h), self._axis(*self.w)
        out = np.zeros((o, self.kh2, self.kw2, 16), np.float32)
        for jh in range(self.kh2):
            for jw in range(self.kw2):
                for dy in range(2):
                    for dx in range(2):
                        a, b = 2 * (jh + j0h) + dy + self.h[1], 2 * (jw + j0w) + dx + self.w[1]
                        if 0 <= a < kh and 0 <= b < kw:
                            q = (dy * 2 + dx) * c
                            out[:, jh, jw, q:q + c] = w[:, a, b, :]
        return out


class Program:
    """A graph compiled for the CUDA kernels, independent of the batch size."""

    def __init__(self, graph: Graph, precision: str = "fp32", nsm: int = 132, mma: bool | None = None,
                 sm90a: bool = False, tensor_cores: bool = True):
        from ..ir.passes import optimize

        if precision not in ("fp32", "fp16"):
            raise BackendUnavailable(f"unknown precision {precision!r}")
        if not graph.batched:
            raise BackendUnavailable(f"model {graph.name!r}: the CUDA backend needs a batch axis on the input")
        if len(graph.inputs) != 1:
            raise BackendUnavailable(f"model {graph.name!r}: the CUDA backend runs single-input graphs "
                                     f"(this one has {len(graph.inputs)})")
        if any(v != "float32" for v in graph.input_dtypes.values()):
            raise BackendUnavailable(f"model {graph.name!r}: the CUDA backend takes float inputs only")
        self.original = graph
        self.g = g = optimize(graph)
        self.precision = precision
        self.fp16 = precision == "fp16"
        self.nsm = int(nsm)
        # fp16 convolutions (groups == 1) on the tensor cores; False: every conv on the SIMT kernel
        self.mma = self.fp16 and (mma_enabled() if mma is None else bool(mma))
        # the wgmma conv where asked for (CNNRT_CUDA_WGMMA) on a device that runs sm_90a code
        self.sm90a = sm90a  # the device is sm_90: wgmma and thread block clusters
        self.tensor_cores = tensor_cores  # mma.sync (sm_80 and later): also the fp32 convs' 3xTF32 kernels
        self.wgmma = wgmma_tile() if self.mma and sm90a else None
        self.wgmma_halo = wgmma_halo_spec() if self.mma and sm90a else None  # the halo convs on wgmma
        self.wgmma_band = wgmma_band_spec() if self.mma and sm90a else None  # stride-1 convs on the band conv
        self.input = g.input_name
        self.item_shape = tuple(g.inputs[self.input][1:])
        for t in g.outputs:
            if t in g.params:
                raise BackendUnavailable(f"model {g.name!r}: output {t!r} is a constant")
        self.probe = [g.infer_shapes({self.input: (b,) + self.item_shape}) for b in PROBE_BATCHES]
        self.alias: dict[str, str] = {}
        self.consts: dict[str, np.ndarray] = {}
        self.groups = self._fuse()
        self.out_bases = {self.base(t) for t in g.outputs}
        self.in_pad = self._input_channel_pad()
        self.s2d = self._input_s2d()  # the stem as a stride-1 conv over the image's space-to-depth
        pp = g.preprocess
        c = self.item_shape[-1] if self.item_shape else 1
        self._chan_const("prep:mean", pp.get("mean"), c, 0.0)
        self._chan_const("prep:std", pp.get("std"), c, 1.0)
        self._chan_const("prep:zero", None, c, 0.0)
        self._chan_const("prep:one", None, c, 1.0)
        self._plans: dict = {}

    def _input_channel_pad(self) -> int:
        """Channels the input may be stored with: fp16, 8 where the image has 3 to 7 channels and only
        tensor-core convs read it, so that their A rows are 16-byte loads (and the halo kernel
        applies) instead of element-by-element gathers; fp32, 4 where an RGB image is read only by
        convs, so that the 3xTF32 halo conv (C % 4 == 0) takes the stem off the SIMT kernel
        (ResNet-18 fp32's 7x7 stem: 2.49 of 23.5 ms at 256 images). The weights get zero channels
        to match. Else the image's own channel count. Each plan decides (_Planner._pad_pays)."""
        c = self.item_shape[-1] if len(self.item_shape) == 3 else 0
        if self.base(self.input) in self.out_bases:
            return c
        if self.mma and 3 <= c < 8 and self.dtype(self.input) == "f16":
            pad = 8
        elif (not self.fp16 and c == 3 and self.dtype(self.input) == "f32" and self.tensor_cores
              and tf32x3_enabled() and os.environ.get("CNNRT_CUDA_FP32_PAD", "1") not in ("0", "false", "no")):
            pad = 4
        else:
            return c
        readers = [n for n in self.g.nodes if self.input in n.inputs]
        if readers and all(self._input_conv(n) for n in readers):
            return pad
        return c

    def _input_conv(self, n: Node) -> bool:
        """Whether node n is a conv group's head reading the input as its data, with constant
        weights and one group (what a change to the input's stored layout needs)."""
        return (any(grp.kind == "conv" and grp.nodes[0].name == n.name for grp in self.groups)
                and n.inputs[0] == self.input and bool(n.inputs[1:2]) and n.inputs[1] in self.g.params
                and int(n.attrs.get("group", 1)) == 1)

    def _input_s2d(self) -> S2D | None:
        """A fp16 image of 3 or 4 channels read only by one stride-2 tensor-core conv (the stem:
        ResNet's 7x7) is stored as its 2x2 space-to-depth, 16 channels at half the size, and the
        conv runs as a stride-1 conv over it (7x7 on 8 stored channels, K = 392, becomes 4x4 on 16,
        K = 256) where its planned kernel, the halo conv, takes it (_Planner._s2d_pays). Measured on
        an H200: ResNet-18's stem at 256 images 787 -> 590 us. CNNRT_CUDA_S2D=0 turns it off."""
        if os.environ.get("CNNRT_CUDA_S2D", "1") in ("0", "false", "no"):
            return None
        c = self.item_shape[-1] if len(self.item_shape) == 3 else 0
        if not self.mma or not 3 <= c <= 4 or self.dtype(self.input) != "f16" or self.base(self.input) in self.out_bases:
            return None
        readers = [n for n in self.g.nodes if self.input in n.inputs]
        if len(readers) != 1:
            return None
        nd = readers[0]
        if (not self._input_conv(nd) or tuple(nd.attrs["strides"]) != (2, 2)
                or tuple(nd.attrs["dilations"]) != (1, 1)):
            return None
        _, kh, kw, _ = self.g.params[nd.inputs[1]].shape
        pads = nd.attrs["pads"]
        t = S2D(nd.name, c, (kh, pads[0]), (kw, pads[1]))
        if t.kh2 * t.kw2 * 16 >= kh * kw * 8:
            return None  # no fewer K than the 8-channel stem's
        return t

    # ------------------------------------------------------------ constants
    def _q(self, a: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(a, dtype=np.float32)
        return a.astype(np.float16).astype(np.float32) if self.fp16 else a

    def const(self, name: str, make) -> str:
        if name not in self.consts:
            self.consts[name] = np.ascontiguousarray(make())
        return name

    def _chan_const(self, name, vals, c, default):
        v = np.full(c, default, np.float32) if vals is None else np.broadcast_to(np.asarray(vals, np.float32).reshape(-1), (c,))
        self.consts[name] = np.ascontiguousarray(v, dtype=np.float32)

    # ------------------------------------------------------------ tensors
    def base(self, t: str) -> str:
        while t in self.alias:
            t = self.alias[t]
        return t

    def dtype(self, t: str) -> str:
        if t in self.g.params:
            return "f32"
        b = self.base(t)
        return "f32" if (not self.fp16 or b in self.out_bases) else "f16"

    def is_param(self, t: str) -> bool:
        return t in self.g.params

    # ------------------------------------------------------------ fusion
    def _kind(self, n: Node) -> str:
        g, p = self.g, self.is_param
        shape = self.probe[0]
        if n.op in ALIAS_OPS:
            return "alias" if not p(n.inputs[0]) else "host"
        if p(n.inputs[0]) and n.op not in G.BINARY and n.op not in COPY_OPS:
            return "host"
        rank = len(shape[n.inputs[0]])
        if n.op == "Conv":
            if not all(p(t) for t in n.inputs[1:]) or rank != 4:
                return "host"
            w = g.params[n.inputs[1]]
            grp = int(n.attrs["group"])
            return "dwconv" if (w.shape[3] == 1 and grp == shape[n.inputs[0]][3] and grp > 1) else "conv"
        if n.op == "Dense":
            return "dense" if all(p(t) for t in n.inputs[1:]) else "host"
        if n.op == "MatMul":
            ok = p(n.inputs[1]) and g.params[n.inputs[1]].ndim == 2 and rank >= 2 and not p(n.inputs[0])
            return "dense" if ok else "host"
        if n.op in ("MaxPool", "AveragePool"):
            return "pool" if rank == 4 else "host"
        if n.op in ("GlobalAveragePool", "GlobalMaxPool"):
            return "gpool" if rank == 4 else "host"
        if n.op in ("Softmax", "LogSoftmax"):
            return "softmax"
        if n.op in G.UNARY:
            return "eltwise"
        if n.op in G.BINARY:
            if all(p(t) for t in n.inputs) or max(len(shape[t]) for t in n.inputs) > 6:
                return "host"
            return "eltwise"
        if n.op == "BatchNormalization":
            ok = all(p(t) for t in n.inputs[1:]) and int(n.attrs["axis"]) % rank == rank - 1
            return "eltwise" if ok else "host"
        if n.op in COPY_OPS:
            return "copy" if rank <= 6 else "host"
        if n.op in REDUCE_OPS:
            return "reduce" if rank <= 6 else "host"
        return "host"

    def _bn_consts(self, n: Node) -> tuple[str, str]:
        s, b, m, v = (self.g.params[t].astype(np.float64) for t in n.inputs[1:])
        k = s / np.sqrt(v + float(n.attrs["epsilon"]))
        kn = self.const(f"{n.name}:bn_k", lambda: self._q(k))
        bn = self.const(f"{n.name}:bn_b", lambda: self._q(b - m * k))
        return kn, bn

    def _fixed_mode(self, operand: str, out: str) -> str | None:
        """The operand's index mode against output `out`, if the same at every batch size and one that
        the fused kernels read (full, chan, nc, scalar); else None."""
        modes = {self.mode(operand, s[out], s) for s in self.probe}
        m = modes.pop() if len(modes) == 1 else None
        return m if m in ("full", "chan", "nc", "scalar") else None

    def mode(self, operand: str, out_shape, shapes) -> str:
        s = tuple(self.g.params[operand].shape) if self.is_param(operand) else tuple(shapes[operand])
        out_shape = tuple(out_shape)
        if prod(s) == 1:
            return "scalar"
        if self.is_param(operand):
            if len(s) <= len(out_shape) and s[-1] == out_shape[-1] and all(d == 1 for d in s[:-1]):
                return "chan"
            return "full" if s == out_shape else "bcast"
        if s == out_shape:
            return "full"
        if len(s) == 4 == len(out_shape) and s[0] == out_shape[0] and s[1] == s[2] == 1 and s[3] == out_shape[3]:
            return "nc"
        return "bcast"

    def _as_epi(self, m: Node, t: str):
        """m (the one reader of t) as epilogue ops on t, or None."""
        if m.op in G.UNARY:
            return [(m.op, dict(m.attrs), None, False)]
        if m.op == "BatchNormalization":
            if self._kind(m) != "eltwise" or m.inputs[0] != t:
                return None
            k, b = self._bn_consts(m)
            return [("Mul", {}, k, False), ("Add", {}, b, False)]
        if m.op in G.BINARY:
            other = m.inputs[1] if m.inputs[0] == t else m.inputs[0]
            if other == t or any(tuple(s[m.outputs[0]]) != tuple(s[t]) for s in self.probe):
                return None
            if self._fixed_mode(other, t) is None:
                return None
            return [(m.op, {}, other, m.inputs[1] == t)]
        return None

    def _fuse(self) -> list:
        g = self.g
        pos = {n.name: i for i, n in enumerate(g.nodes)}
        readers: dict[str, list] = {}
        for n in g.nodes:
            for t in n.inputs:
                readers.setdefault(t, []).append(n)
        outs = set(g.outputs)
        claimed: set = set()

        def only_reader(t):
            r = readers.get(t, [])
            if t in outs or len(r) != 1 or r[0].inputs.count(t) != 1 or r[0].name in claimed:
                return None
            return r[0]

        groups = []
        for n in g.nodes:
            if n.name in claimed:
                continue
            kind = self._kind(n)
            claimed.add(n.name)
            if kind == "alias":
                self.alias[n.outputs[0]] = n.inputs[0]
                continue
            grp = Group(kind, [n])
            if kind == "gpool" and n.op == "GlobalAveragePool":
                chain, m = [], only_reader(n.outputs[0])
                while m is not None and m.op in ALIAS_OPS:
                    chain.append(m)
                    m = only_reader(m.outputs[0])
                if (m is not None and m.op == "Dense" and self._kind(m) == "dense"
                        and all(tuple(s[m.inputs[0]]) == (s[n.inputs[0]][0], s[n.inputs[0]][3]) for s in self.probe)):
                    grp.kind = "gpool_dense"
                    grp.nodes += chain + [m]
                    claimed.update(x.name for x in chain + [m])
            if grp.kind in EPI_KINDS and len(grp.nodes[-1].outputs) == 1:
                t = grp.nodes[-1].outputs[0]
                while True:
                    m = only_reader(t)
                    ops = self._as_epi(m, t) if m is not None else None
                    if ops is None:
                        break
                    grp.epi += ops
                    grp.nodes.append(m)
                    claimed.add(m.name)
                    t = m.outputs[0]
            grp.output = grp.nodes[-1].outputs[0]
            grp.pos = max(pos[x.name] for x in grp.nodes)
            groups.append(grp)
        groups.sort(key=lambda q: q.pos)
        return groups

    # ------------------------------------------------------------ describe
    def describe(self, n: int = 1) -> list[tuple[str, str, str]]:
        """(node, op, kernel) for every node, for a batch of n: which kernel runs it, fused or generic."""
        plan = self.plan(n)
        where = {}
        for l in plan.launches:
            for name in l.nodes:
                where.setdefault(name, l.label)
        rows = []
        kept = {node.name for node in self.g.nodes}
        for node in self.original.nodes:
            if node.name not in kept:
                rows.append((node.name, node.op, "folded away when the model loads (ir.passes)"))
            elif node.outputs[0] in self.alias:
                rows.append((node.name, node.op, "view (no kernel)"))
            else:
                rows.append((node.name, node.op, where.get(node.name, "?")))
        return rows

    # ------------------------------------------------------------ instantiation
    def plan(self, n: int, in_kind: str = "f32") -> Plan:
        key = (int(n), in_kind)
        if key not in self._plans:
            self._plans[key] = _Planner(self, int(n), in_kind).build()
        return self._plans[key]


class _Planner:
    """Builds one Plan: launches in order, then buffers and their offsets."""

    def __init__(self, prog: Program, n: int, in_kind: str):
        if n < 1:
            raise ValueError("batch size must be at least 1")
        self.p, self.n, self.in_kind = prog, n, in_kind
        self.shapes = prog.g.infer_shapes({prog.input: (n,) + prog.item_shape})
        self.in_pad = prog.item_shape[-1] if prog.item_shape else 1
        self.s2d = prog.s2d if prog.s2d is not None and self._s2d_pays(prog.s2d) else None
        if self.s2d is not None:  # the input stored as its space-to-depth, 16 channels at half the size
            h, w, _ = prog.item_shape
            self.shapes[prog.input] = (n, cdiv(h, 2), cdiv(w, 2), 16)
        elif prog.item_shape and prog.in_pad != self.in_pad and self._pad_pays(prog.in_pad):
            self.in_pad = prog.in_pad  # the input stored with zero channels (Program.in_pad)
            self.shapes[prog.input] = (n,) + prog.item_shape[:-1] + (prog.in_pad,)
        self.launches: list[Launch] = []
        self.buffers: dict[str, Buffer] = {}
        self.meta: list[int] = []
        self.consts_used: set = set()

    def _s2d_pays(self, t: S2D) -> bool:
        """Whether this plan runs the stem over the space-to-depth input: where the halo conv takes
        the stride-1 conv (at small batches the stem keeps its own kernel)."""
        p = self.p
        nd = next(x for x in p.g.nodes if x.name == t.node)
        o = p.g.params[nd.inputs[1]].shape[0]
        _, ho, wo, _ = self.shapes[nd.outputs[0]]
        h, w, _ = p.item_shape
        ph, pw, _, _ = t.pads
        geom = G.HaloGeom(16, cdiv(h, 2), cdiv(w, 2), ho, wo, t.kh2, t.kw2, 1, 1, ph, pw, 1, 1)
        return choose_halo(geom, o, self.n, p.nsm) is not None

    def _pad_pays(self, c: int) -> bool:
        """Whether to store the input with c channels in this plan: when every conv reading it then
        runs the halo kernel, fp16 or 3xTF32 (measured on an H200: ResNet-18's fp16 stem at 256
        images 1,268 -> 780 us).
        At small batches the stem keeps the image's channels: with the K-step kernel the zero
        channels cost more than the element gather saves (ResNet-18 at batch 1: 322 -> 336 us)."""
        p = self.p
        for nd in p.g.nodes:
            if p.input not in nd.inputs:
                continue
            w = p.g.params[nd.inputs[1]]
            _, ho, wo, _ = self.shapes[nd.outputs[0]]
            (sh, sw), (dh, dw), pads = nd.attrs["strides"], nd.attrs["dilations"], nd.attrs["pads"]
            geom = G.HaloGeom(c, p.item_shape[0], p.item_shape[1], ho, wo, w.shape[1], w.shape[2], sh, sw,
                              pads[0], pads[1], dh, dw)
            if choose_halo(geom, w.shape[0], self.n, p.nsm, tf32=not p.fp16) is None:
                return False
        return True

    # -------------------------------------------------------- helpers
    def t(self, name: str):
        """An argument for a tensor or constant."""
        if self.p.is_param(name):
            q = f"{name}:q"
            self.p.const(q, lambda: self.p._q(self.p.g.params[name]))
            self.consts_used.add(q)
            return ("c", q)
        b = self.p.base(name)
        if b not in self.buffers:
            self.buffers[b] = Buffer(b, tuple(self.shapes[b]), self.p.dtype(b))
        return ("t", b)

    def c(self, name: str):
        self.consts_used.add(name)
        return ("c", name)

    def temp(self, name: str, shape, dtype: str):
        self.buffers[name] = Buffer(name, tuple(int(d) for d in shape), dtype)
        return ("t", name)

    def dt(self, name: str) -> str:
        return "f32" if self.p.is_param(name) else self.p.dtype(name)

    def add_meta(self, vals) -> int:
        off = len(self.meta)
        self.meta.extend(int(v) for v in vals)
        return off

    def grid_stride(self, total: int) -> tuple:
        return (max(1, min(cdiv(total, 256), self.p.nsm * GRID_STRIDE_BLOCKS)), 1, 1)

    def epi(self, grp: Group, out: str, head=()):
        """EpiOps and their operand arguments for a group's epilogue, against output `out`."""
        ops, args = [], []
        for op, attrs, operand, swap in list(head) + list(grp.epi):
            if operand is None:
                ops.append(G.epi_op(op, attrs))
                continue
            if operand in self.p.consts:  # a per-channel constant made by the planner (BN scale/shift, bias)
                mode = "chan"
            else:
                mode = self.p.mode(operand, self.shapes[out], self.shapes)
            if operand in self.p.consts:
                arg, dtype = self.c(operand), "f32"
            else:
                arg, dtype = self.t(operand), self.dt(operand)
            ops.append(G.epi_op(op, attrs, mode, dtype, swap))
            args.append((arg, mode, operand))
        return ops, args

    def bcast_meta(self, out_shape, operands) -> int:
        """meta block: the output's 6 dims, then 6 strides per broadcast operand."""
        vals = pad6(out_shape, 1)
        for name in operands:
            s = tuple(self.p.g.params[name].shape) if self.p.is_param(name) else tuple(self.shapes[name])
            vals += pad6(bcast_strides(s, out_shape), 0)
        return self.add_meta(vals)

    def emit(self, grp: Group | None, kernel, grid, block, args, reads, writes, label=None, smem=0, nodes=None):
        nodes = nodes if nodes is not None else [x.name for x in grp.nodes]
        rb = [a[1] for a in args.values() if isinstance(a, tuple) and a[0] == "t"]
        self.launches.append(Launch("kernel", label or kernel.family, nodes, sorted(set(rb) - set(writes)),
                                    list(writes), kernel, tuple(grid) + (1,) * (3 - len(grid)),
                                    tuple(block) + (1,) * (3 - len(block)), smem, args))

    @staticmethod
    def label(grp: Group, what: str) -> str:
        ops = grp.ops
        if len(ops) == 1:
            return f"{what} (generic)"
        return f"{what} (fused: {'+'.join(ops)})"

    def put_epi(self, args: dict, eargs) -> None:
        for i, (arg, _, _) in enumerate(eargs):
            args[f"e{i}"] = arg

    # -------------------------------------------------------- groups
    def build(self) -> Plan:
        p = self.p
        stage = self.temp(":stage", (self.n,) + p.item_shape, self.in_kind)
        x = self.t(p.input)
        u8 = self.in_kind == "u8"
        chi = p.item_shape[-1] if p.item_shape else 1
        if self.s2d is not None:
            self._prep_s2d(stage, x, chi)
            for grp in p.groups:
                getattr(self, f"g_{grp.kind}")(grp)
            return self._finish_plan()
        pad = self.in_pad != chi
        k = G.prep_kernel(self.in_kind, p.dtype(p.input), pad, self.in_pad if pad else 8)
        total = prod(self.shapes[p.input])
        args = {"x": stage, "y": x, "total": total, "CH": self.in_pad,
                "scale": float(p.g.input_scale) if u8 else 1.0,
                "mean": self.c("prep:mean" if u8 else "prep:zero"), "std": self.c("prep:std" if u8 else "prep:one")}
        if pad:
            args["CHI"] = chi
        threads = total // self.in_pad if pad else total  # the padded prep takes a pixel a thread
        self.emit(None, k, self.grid_stride(threads), (256,), args, [stage[1]], [x[1]], nodes=[],
                  label="prep (input scale/normalise" + (f"; {chi} channels stored as {self.in_pad})" if pad else ")"))
        for grp in p.groups:
            getattr(self, f"g_{grp.kind}")(grp)
        return self._finish_plan()

    def _prep_s2d(self, stage, x, chi: int) -> None:
        p, u8 = self.p, self.in_kind == "u8"
        n, h2, w2, _ = self.shapes[p.input]
        h, w, _ = p.item_shape
        k = G.prep_s2d_kernel(self.in_kind, p.dtype(p.input))
        args = {"x": stage, "y": x, "N": n, "H": h, "W": w, "H2": h2, "W2": w2, "CHI": chi,
                "scale": float(p.g.input_scale) if u8 else 1.0,
                "mean": self.c("prep:mean" if u8 else "prep:zero"), "std": self.c("prep:std" if u8 else "prep:one")}
        self.emit(None, k, self.grid_stride(n * h2 * w2), (256,), args, [stage[1]], [x[1]], nodes=[],
                  label=f"prep (input scale/normalise; space-to-depth 2x2: {chi} channels stored as 16 at half the size)")

    def _finish_plan(self) -> Plan:
        p = self.p
        outputs = []
        for o in p.g.outputs:
            arg = self.t(o)
            outputs.append((o, arg[1], tuple(self.shapes[o])))
        offsets, size = self.assign(outputs)
        meta = np.asarray(self.meta or [0], np.int64)
        return Plan(self.n, self.in_kind, self.launches, self.buffers, offsets, size, meta, ":stage", outputs,
                    sorted(self.consts_used), self.life)

    def g_conv(self, grp: Group):
        p, node = self.p, grp.nodes[0]
        xs, ys = self.shapes[node.inputs[0]], self.shapes[node.outputs[0]]
        w = p.g.params[node.inputs[1]]
        o, kh, kw, cg = w.shape
        groups = int(node.attrs["group"])
        og = o // groups
        K = kh * kw * cg
        bias = self._bias(node, o)
        n, h, wd, c = xs
        _, ho, wo, _ = ys
        M = n * ho * wo
        if p.mma and groups == 1 and self.dt(node.inputs[0]) == "f16":
            self._mma_conv(grp, node, w, bias, xs, ys)
            return
        if groups == 1 and self.dt(node.inputs[0]) == "f32" and xs[3] != cg:
            # the input stored with zero channels (Program.in_pad, fp32): zero weights for them, and
            # the 3xTF32 halo conv, which _pad_pays saw take this conv
            w = np.concatenate([w, np.zeros(w.shape[:3] + (xs[3] - cg,), w.dtype)], axis=3)
            if not self._tf32_conv(grp, node, w, bias, xs, ys):
                raise RuntimeError(f"{node.name}: its input was stored with {xs[3]} channels for the 3xTF32 "
                                   "halo conv, which did not take it (a planner bug)")
            return
        if groups == 1 and self.dt(node.inputs[0]) == "f32" and self._tf32_conv(grp, node, w, bias, xs, ys):
            return
        if groups == 1 and self.dt(node.inputs[0]) == "f32" and self._tf32_gemm_conv(grp, node, w, bias, xs, ys):
            return
        wp = p.const(f"{node.name}:wpack", lambda: p._q(w.reshape(groups, og, K).transpose(0, 2, 1)))
        tname = choose_tile(M, og, K, groups, p.nsm)
        tile = G.TILES[tname]
        out = grp.output
        ops, eargs = self.epi(grp, out)
        y = self.t(out)
        (sh, sw), (dh, dw), pads = node.attrs["strides"], node.attrs["dilations"], node.attrs["pads"]
        dims = dict(N=n, H=h, W=wd, C=c, Ho=ho, Wo=wo, O=o, KW=kw, sh=sh, sw=sw, ph=pads[0], pw=pads[1], dh=dh, dw=dw,
                    Cg=cg, Og=og, K=K)
        splits = choose_splitk_simt(M, og, K, tname, p.nsm) if groups == 1 else 1
        if splits > 1:
            kts = cdiv(cdiv(K, tile.bk), splits)
            splits = cdiv(cdiv(K, tile.bk), kts)
            ws = self.temp(f"{node.name}:splitk", (splits, M, o), "f32")
            kern = G.conv_kernel(tile, self.dt(node.inputs[0]), "f32", splitk=True)
            args = {"x": self.t(node.inputs[0]), "w": self.c(wp), "ws": ws, **dims, "kts": kts}
            self.emit(grp, kern, (cdiv(M, tile.bm), cdiv(og, tile.bn), splits), (tile.threads,), args, [], [ws[1]],
                      self.label(grp, f"conv implicit-GEMM {tname} split-K x{splits}"))
            self._splitk_reduce(grp, ws, bias, y, ops, eargs, M, o, ho * wo * o, splits)
            return
        kern = G.conv_kernel(tile, self.dt(node.inputs[0]), self.dt(out), ops)
        args = {"x": self.t(node.inputs[0]), "w": self.c(wp), "bias": self.c(bias), "y": y}
        self.put_epi(args, eargs)
        args.update(dims)
        self.emit(grp, kern, (cdiv(M, tile.bm), cdiv(og, tile.bn), groups), (tile.threads,), args, [], [y[1]],
                  self.label(grp, f"conv implicit-GEMM {tname}"))

    def _splitk_reduce(self, grp: Group, ws, bias: str, y, ops, eargs, M: int, o: int, hwc: int, splits: int):
        """The S partial sums of a split-K conv, plus bias, then the group's epilogue, into y."""
        out = grp.output
        red = G.splitk_reduce_kernel(self.dt(out), ops)
        args = {"ws": ws, "bias": self.c(bias), "y": y}
        self.put_epi(args, eargs)
        args.update(total=M * o, CH=o, HWC=hwc, S=splits)
        self.emit(grp, red, self.grid_stride(M * o), (256,), args, [], [y[1]],
                  f"conv split-K sum of {splits} parts + bias" + (f" + {'+'.join(grp.ops[1:])}" if len(grp.ops) > 1 else ""))

    def _mma_conv(self, grp: Group, node: Node, w, bias: str, xs, ys):
        """A groups == 1 conv with fp16 input on the tensor cores (cuda_codegen.mma_conv_kernel)."""
        p = self.p
        s2d = self.s2d is not None and node.name == self.s2d.node
        if s2d:  # the stem over the space-to-depth input: a stride-1 conv (Program.s2d)
            t = self.s2d
            w = t.weights(w)
        padded = xs[3] != w.shape[3]
        if padded:  # the input stored with zero channels (Program.in_pad): zero weights for them
            w = np.concatenate([w, np.zeros(w.shape[:3] + (xs[3] - w.shape[3],), w.dtype)], axis=3)
        o, kh, kw, c = w.shape
        K = kh * kw * c
        kp = cdiv(K, G.MMA_KPAD) * G.MMA_KPAD

        def pack():
            wq = np.zeros((o, kp), np.float16)
            wq[:, :K] = np.asarray(w, np.float32).reshape(o, K)  # one rounding to fp16 (as _q's, then stored)
            return wq

        wp = p.const(f"{node.name}:wmma" + (f":c{c}" if padded else "") + (":s2d" if s2d else ""), pack)
        n, h, wd, _ = xs
        _, ho, wo, _ = ys
        M = n * ho * wo
        (sh, sw), (dh, dw), pads = node.attrs["strides"], node.attrs["dilations"], node.attrs["pads"]
        if s2d:
            (sh, sw), (dh, dw), pads = (1, 1), (1, 1), self.s2d.pads
        variant = G.mma_variant(c, kh, kw, (sh, sw), pads)
        out = grp.output
        ops, eargs = self.epi(grp, out)
        y = self.t(out)
        if p.wgmma and variant != "scalar":  # (an A/B switch: every 16-byte-gather conv, halo or not)
            tile = G.WGMMA_TILES[p.wgmma]
            if o <= 64 and tile.bn > 64:
                tile = G.WGMMA_TILES["wg2n64sp"]
            kern = G.wgmma_conv_kernel(tile, self.dt(out), ops)
            args = {"x": self.t(node.inputs[0]), "w": self.c(wp), "bias": self.c(bias), "y": y}
            self.put_epi(args, eargs)
            args.update(N=n, H=h, W=wd, C=c, Ho=ho, Wo=wo, O=o, KW=kw, sh=sh, sw=sw, ph=pads[0], pw=pads[1], dh=dh,
                        dw=dw, K=K, Kp=kp)
            self.emit(grp, kern, (cdiv(M, tile.bm), cdiv(o, tile.bn)), (tile.threads,), args, [], [y[1]],
                      self.label(grp, f"conv implicit-GEMM tensor-core wgmma {tile.bm}x{tile.bn} (sm_90a, "
                                      f"{tile.stages} stages{', 128-byte swizzle' if tile.swz else ''}"
                                      f"{', pipelined' if tile.pipe else ''})"), smem=tile.smem)
            return
        geom = G.HaloGeom(c, h, wd, ho, wo, kh, kw, sh, sw, pads[0], pads[1], dh, dw)
        bt = choose_band(geom, o, n, p.nsm, p.wgmma_band) if p.wgmma_band and variant != "scalar" else None
        if bt is not None:
            kern = G.band_conv_kernel(geom, bt, self.dt(out), ops)
            if bt.cm:  # its K order: channel-major
                wp = p.const(f"{wp}:cm", lambda: G.band_weights_cm(p.consts[wp], kh, kw, c))
            args = {"x": self.t(node.inputs[0]), "w": self.c(wp), "bias": self.c(bias), "y": y}
            self.put_epi(args, eargs)
            args.update(N=n, O=o, Kp=kp)
            self.emit(grp, kern, (bt.blocks(geom, n), cdiv(o, bt.bn), 1), (bt.threads,), args, [], [y[1]],
                      self.label(grp, f"conv implicit-GEMM tensor-core wgmma band ({bt.rows} rows x {bt.bn} channels "
                                      f"in {bt.mt} x 64 GEMM rows, {bt.useful(geom):.0%} used; input and weights "
                                      f"in shared memory, {bt.bstages} stages{', channel-major' if bt.cm else ''}, "
                                      f"sm_90a)"), smem=kern.static["smem"])
            return
        ht = choose_halo(geom, o, n, p.nsm)
        if ht is not None:
            wt = wgmma_halo_tile(ht, geom, o, p.wgmma_halo) if p.wgmma_halo else None
            if wt is not None:
                ht, kern = wt, G.halo_wgmma_kernel(geom, wt, self.dt(out), ops, pipe=p.wgmma_halo.pipe)
            else:
                kern = (G.halo_stream_kernel if ht.bstages else G.halo_conv_kernel)(geom, ht, self.dt(out), ops)
            args = {"x": self.t(node.inputs[0]), "w": self.c(wp), "bias": self.c(bias), "y": y}
            self.put_epi(args, eargs)
            args.update(N=n, O=o, Kp=kp)
            self._emit_halo(grp, kern, geom, ht, args, y,
                            ("space-to-depth " if s2d else "") + ("wgmma " if wt is not None else ""))
            return
        tname = choose_mma_tile(M, o, K, p.nsm, variant)
        tile = G.MMA_TILES[tname]
        dims = dict(N=n, H=h, W=wd, C=c, Ho=ho, Wo=wo, O=o, KW=kw, sh=sh, sw=sw, ph=pads[0], pw=pads[1], dh=dh, dw=dw,
                    K=K, Kp=kp)
        cs = choose_cluster_splitk(M, o, K, tname, p.nsm, variant) if p.sm90a and cluster_splitk_enabled() else 1
        if cs > 1:  # split-K summed in a cluster: one launch, no workspace
            kts = cdiv(cdiv(K, tile.bk), cs)
            assert cdiv(cdiv(K, tile.bk), kts) == cs
            kern = G.mma_conv_kernel(tile, variant, self.dt(out), ops, cluster=cs)
            args = {"x": self.t(node.inputs[0]), "w": self.c(wp), "bias": self.c(bias), "y": y}
            self.put_epi(args, eargs)
            args.update(dims, kts=kts)
            self.emit(grp, kern, (cdiv(M, tile.bm), cdiv(o, tile.bn), cs), (tile.threads,), args, [], [y[1]],
                      self.label(grp, f"conv implicit-GEMM tensor-core {tname} {variant}{self._stages(kern)} "
                                      f"split-K x{cs} summed in a cluster"), smem=kern.static["smem"])
            return
        splits = choose_splitk(M, o, K, tname, p.nsm, variant)
        if splits > 1:
            kts = cdiv(cdiv(K, tile.bk), splits)
            ws = self.temp(f"{node.name}:splitk", (splits, M, o), "f32")
            kern = G.mma_conv_kernel(tile, variant, "f32", splitk=True)
            args = {"x": self.t(node.inputs[0]), "w": self.c(wp), "ws": ws, **dims, "kts": kts}
            self.emit(grp, kern, (cdiv(M, tile.bm), cdiv(o, tile.bn), splits), (tile.threads,), args, [], [ws[1]],
                      self.label(grp, f"conv implicit-GEMM tensor-core {tname} {variant}{self._stages(kern)} "
                                      f"split-K x{splits}"), smem=kern.static["smem"])
            self._splitk_reduce(grp, ws, bias, y, ops, eargs, M, o, ho * wo * o, splits)
            return
        kern = G.mma_conv_kernel(tile, variant, self.dt(out), ops)
        args = {"x": self.t(node.inputs[0]), "w": self.c(wp), "bias": self.c(bias), "y": y}
        self.put_epi(args, eargs)
        args.update(dims)
        self.emit(grp, kern, (cdiv(M, tile.bm), cdiv(o, tile.bn), 1), (tile.threads,), args, [], [y[1]],
                  self.label(grp, f"conv implicit-GEMM tensor-core {tname} {variant}{self._stages(kern)}"),
                  smem=kern.static["smem"])

    def _tf32_conv(self, grp: Group, node: Node, w, bias: str, xs, ys) -> bool:
        """An fp32 conv on the halo kernel with 3xTF32 tensor-core products, where tf32x3_enabled()
        and choose_halo(tf32=True) take it; False leaves it to the SIMT kernel."""
        p = self.p
        o, kh, kw, c = w.shape
        n, h, wd, _ = xs
        _, ho, wo, _ = ys
        (sh, sw), (dh, dw), pads = node.attrs["strides"], node.attrs["dilations"], node.attrs["pads"]
        geom = G.HaloGeom(c, h, wd, ho, wo, kh, kw, sh, sw, pads[0], pads[1], dh, dw)
        ht = choose_halo(geom, o, n, p.nsm, tf32=True) if tf32x3_enabled() and p.tensor_cores else None
        if ht is None or self.dt(grp.output) != "f32":
            return False
        wh, wl, kp = self._tf32_weights(node, w)
        out = grp.output
        ops, eargs = self.epi(grp, out)
        y = self.t(out)
        kern = G.halo_tf32_kernel(geom, ht, ops)
        args = {"x": self.t(node.inputs[0]), "wh": self.c(wh), "wl": self.c(wl), "bias": self.c(bias), "y": y}
        self.put_epi(args, eargs)
        args.update(N=n, O=o, Kp=kp)
        self._emit_halo(grp, kern, geom, ht, args, y, "3xTF32 ")
        return True

    def _tf32_weights(self, node: Node, w) -> tuple:
        """(wh, wl, Kp): the conv's weights packed [O][Kp] fp32 and split into their tf32 part and
        the tf32 rest (tf32_split), as the 3xTF32 convs read them."""
        p = self.p
        o, kh, kw, c = w.shape
        K = kh * kw * c
        kp = cdiv(K, G.MMA_KPAD) * G.MMA_KPAD

        def packed():
            wq = np.zeros((o, kp), np.float32)
            wq[:, :K] = w.reshape(o, K)
            return wq

        key = f"{node.name}:wtf32" + (f":c{c}" if c != p.g.params[node.inputs[1]].shape[3] else "")  # padded
        wh = p.const(f"{key}hi", lambda: G.tf32_split(packed())[0])
        wl = p.const(f"{key}lo", lambda: G.tf32_split(packed())[1])
        return wh, wl, kp

    def _tf32_gemm_conv(self, grp: Group, node: Node, w, bias: str, xs, ys) -> bool:
        """An fp32 conv that the 3xTF32 halo conv did not take, with C % 4 == 0, on the 3xTF32 im2col
        conv (mma_tf32_conv_kernel; the tile as choose_mma_tile picks it for fp16): with at least a
        tile per SM; with fewer (small batches) on sm_90 as a cluster split-K where
        choose_tf32_cluster splits K; False: the SIMT kernel (whose own split-K takes small batches
        elsewhere)."""
        p = self.p
        o, kh, kw, c = w.shape
        if not (tf32_gemm_enabled() and p.tensor_cores) or c % 4 or self.dt(grp.output) != "f32" or xs[3] != c:
            return False
        n, h, wd, _ = xs
        _, ho, wo, _ = ys
        K = kh * kw * c
        M = n * ho * wo
        tname = choose_mma_tile(M, o, K, p.nsm)
        tile = G.MMA_TILES[tname]
        cs = 0
        if cdiv(M, tile.bm) * cdiv(o, tile.bn) < p.nsm:  # too few tiles to fill the SMs (batch 1)
            cs = choose_tf32_cluster(M, o, K, tname, p.nsm) if p.sm90a and cluster_splitk_enabled() else 1
            if cs < 2:
                return False  # the SIMT conv splits K
        wh, wl, kp = self._tf32_weights(node, w)
        out = grp.output
        ops, eargs = self.epi(grp, out)
        y = self.t(out)
        kern = G.mma_tf32_conv_kernel(tile, "f32", ops, cluster=cs)
        (sh, sw), (dh, dw), pads = node.attrs["strides"], node.attrs["dilations"], node.attrs["pads"]
        args = {"x": self.t(node.inputs[0]), "wh": self.c(wh), "wl": self.c(wl), "bias": self.c(bias), "y": y}
        self.put_epi(args, eargs)
        args.update(N=n, H=h, W=wd, C=c, Ho=ho, Wo=wo, O=o, KW=kw, sh=sh, sw=sw, ph=pads[0], pw=pads[1], dh=dh, dw=dw,
                    K=K, Kp=kp)
        split = ""
        if cs:
            kts = cdiv(cdiv(K, tile.bk // 2), cs)
            assert cdiv(cdiv(K, tile.bk // 2), kts) == cs
            args["kts"] = kts
            split = f" split-K x{cs} summed in a cluster"
        self.emit(grp, kern, (cdiv(M, tile.bm), cdiv(o, tile.bn), max(cs, 1)), (tile.threads,), args, [], [y[1]],
                  self.label(grp, f"conv implicit-GEMM tensor-core 3xTF32 {tname}{split}"), smem=kern.static["smem"])
        return True

    def _emit_halo(self, grp: Group, kern, geom, ht, args: dict, y, kind: str) -> None:
        """The launch of a halo conv: a block per band (or group of images) and column tile."""
        what = f"{ht.imgs} images" if ht.imgs > 1 else f"{ht.rows} rows"
        streamed = f", weights in {ht.bstages} stages" if ht.bstages else ""
        if ht.presplit:
            streamed += ", input split once"
        if ht.wg:
            streamed += f" of {ht.kch} K steps, sm_90a" + (f", {kern.static['pipe']} group in flight" if kern.static["pipe"] else "")
        self.emit(grp, kern, (ht.blocks(geom, args["N"]), cdiv(args["O"], ht.bn), 1), (ht.threads(geom),), args, [],
                  [y[1]], self.label(grp, f"conv implicit-GEMM tensor-core {kind}halo ({what} x {ht.bn} channels, "
                                          f"input in shared memory{streamed})"), smem=kern.static["smem"])

    @staticmethod
    def _stages(kern) -> str:
        st = kern.static.get("stages", 0)
        return f" cp.async x{st}" if st else ""

    def _bias(self, node: Node, o: int) -> str:
        if len(node.inputs) > 2:
            b = self.p.g.params[node.inputs[2]]
            return self.p.const(f"{node.name}:bias", lambda: self.p._q(b))
        return self.p.const(f"zeros:{o}", lambda: np.zeros(o, np.float32))

    def g_dwconv(self, grp: Group):
        p, node = self.p, grp.nodes[0]
        xs, ys = self.shapes[node.inputs[0]], self.shapes[node.outputs[0]]
        w = p.g.params[node.inputs[1]]
        o, kh, kw, _ = w.shape
        wp = p.const(f"{node.name}:wpack", lambda: p._q(w.reshape(o, kh * kw).T))
        bias = self._bias(node, o)
        n, h, wd, c = xs
        _, ho, wo, _ = ys
        out = grp.output
        ops, eargs = self.epi(grp, out)
        y = self.t(out)
        (sh, sw), (dh, dw), pads = node.attrs["strides"], node.attrs["dilations"], node.attrs["pads"]
        args = {"x": self.t(node.inputs[0]), "w": self.c(wp), "bias": self.c(bias), "y": y}
        self.put_epi(args, eargs)
        args.update(N=n, H=h, W=wd, C=c, Ho=ho, Wo=wo, O=o, KH=kh, KW=kw, sh=sh, sw=sw, ph=pads[0], pw=pads[1], dh=dh,
                    dw=dw)
        if o == c and c % 8 == 0 and self.dt(node.inputs[0]) in ("f16", "f32") and self.dt(out) in ("f16", "f32") \
                and vec8_enabled():
            window = (kh, kw) if kh * kw <= G.WINDOW_UNROLL and G.window_enabled() else None
            rows = min(G.dw_rows(), ho) if window else 0
            rows = rows if rows >= 2 else 0
            kern = G.dwconv8_kernel(self.dt(out), ops, ti=self.dt(node.inputs[0]), window=window, rows=rows)
            self.emit(grp, kern, self.grid_stride(n * cdiv(ho, max(rows, 1)) * wo * o // 8), (256,), args, [], [y[1]],
                      self.label(grp, "depthwise conv, 8 channels a thread" + (f", {rows} rows" if rows else "")))
            return
        kern = G.dwconv_kernel(self.dt(node.inputs[0]), self.dt(out), ops)
        args["mult"] = o // c
        self.emit(grp, kern, self.grid_stride(n * ho * wo * o), (256,), args, [], [y[1]],
                  self.label(grp, "depthwise conv"))

    def g_pool(self, grp: Group):
        node = grp.nodes[0]
        a = node.attrs
        n, h, wd, c = self.shapes[node.inputs[0]]
        _, ho, wo, _ = self.shapes[node.outputs[0]]
        out = grp.output
        ops, eargs = self.epi(grp, out)
        y = self.t(out)
        kind = "max" if node.op == "MaxPool" else "avg"
        (kh, kw), (sh, sw), (dh, dw), pads = a["kernel_shape"], a["strides"], a["dilations"], a["pads"]
        incl = kind == "avg" and bool(a.get("count_include_pad", 0))
        args = {"x": self.t(node.inputs[0]), "y": y}
        self.put_epi(args, eargs)
        args.update(N=n, H=h, W=wd, C=c, Ho=ho, Wo=wo, KH=kh, KW=kw, sh=sh, sw=sw, ph=pads[0], pw=pads[1], dh=dh, dw=dw,
                    hlo=-pads[0] if incl else 0, hhi=h + pads[2] if incl else h,
                    wlo=-pads[1] if incl else 0, whi=wd + pads[3] if incl else wd)
        if c % 8 == 0 and self.dt(node.inputs[0]) in ("f16", "f32") and self.dt(out) in ("f16", "f32") and vec8_enabled():
            window = (kh, kw) if kh * kw <= G.WINDOW_UNROLL and G.window_enabled() else None
            kern = G.pool8_kernel(kind, self.dt(out), ops, ti=self.dt(node.inputs[0]), window=window)
            self.emit(grp, kern, self.grid_stride(n * ho * wo * c // 8), (256,), args, [], [y[1]],
                      self.label(grp, f"{kind} pool, 8 channels a thread"))
            return
        kern = G.pool_kernel(kind, self.dt(node.inputs[0]), self.dt(out), ops)
        self.emit(grp, kern, self.grid_stride(n * ho * wo * c), (256,), args, [], [y[1]],
                  self.label(grp, f"{kind} pool"))

    def _gpool(self, grp: Group, node: Node, out_arg, out_dtype, ops, eargs, nodes=None, label=None):
        n, h, wd, c = self.shapes[node.inputs[0]]
        kind = "max" if node.op == "GlobalMaxPool" else "avg"
        kern = G.gpool_kernel(kind, self.dt(node.inputs[0]), out_dtype, ops)
        args = {"x": self.t(node.inputs[0]), "y": out_arg}
        self.put_epi(args, eargs)
        args.update(HW=h * wd, C=c, inv=1.0 / (h * wd))
        self.emit(grp, kern, (cdiv(c, 32), n), (32, 8), args, [], [out_arg[1]],
                  label or self.label(grp, f"global {kind} pool"), nodes=nodes)

    def g_gpool(self, grp: Group):
        out = grp.output
        ops, eargs = self.epi(grp, out)
        y = self.t(out)
        self._gpool(grp, grp.nodes[0], y, self.dt(out), ops, eargs)

    def g_gpool_dense(self, grp: Group):
        pool, dense = grp.nodes[0], next(x for x in grp.nodes if x.op == "Dense")
        n, h, wd, c = self.shapes[pool.inputs[0]]
        if self._dense_small_ok(n, c):
            self._dense(grp, dense, pool.inputs[0], h * wd, "global avg pool + dense")
            return
        pooled = self.temp(f"{pool.name}:pooled", (n, c), self.p.dtype(pool.outputs[0]))
        self._gpool(grp, pool, pooled, self.buffers[pooled[1]].dtype, [], [],
                    nodes=[x.name for x in grp.nodes if x is not dense], label="global avg pool (generic)")
        self._dense(grp, dense, pooled[1], 1, "dense", skip=[x.name for x in grp.nodes if x is not dense])

    def g_dense(self, grp: Group):
        node = grp.nodes[0]
        self._dense(grp, node, node.inputs[0], 1, "dense")

    @staticmethod
    def _dense_small_ok(rows: int, k: int) -> bool:
        return rows <= DENSE_SMALL_MAX_ROWS and k * 4 <= G.DENSE_SMALL_SMEM

    def _dense_smem(self) -> int:
        """The small-batch dense kernel's most shared memory for its rows: more on sm_80 and later
        (CNNRT_CUDA_DENSE=v1: 48 KB everywhere, and fp32 weights read 4 bytes a lane: the A/B switch)."""
        return G.DENSE_SMALL_SMEM_SM80 if self.p.tensor_cores and not G.dense_v1() else G.DENSE_SMALL_SMEM

    def _dense(self, grp: Group, node: Node, xin: str, hw: int, what: str, skip=()):
        """Dense (or MatMul with a constant right side) over xin, pooled over hw positions first if hw > 1."""
        p = self.p
        if node.op == "MatMul":
            wsrc = p.g.params[node.inputs[1]].T
        else:
            wsrc = p.g.params[node.inputs[1]]
        o, k = wsrc.shape
        xshape = self.buffers[xin].shape if xin in self.buffers else self.shapes[xin]
        rows = prod(xshape) // (k * hw)
        xdt = self.buffers[xin].dtype if xin in self.buffers else self.dt(xin)
        wname = p.const(f"{node.name}:w:{xdt}",
                        lambda: p._q(wsrc).astype(np.float16 if xdt == "f16" else np.float32))
        bias = self._bias(node, o) if node.op == "Dense" else p.const(f"zeros:{o}", lambda: np.zeros(o, np.float32))
        out = grp.output
        nodes = [x.name for x in grp.nodes if x.name not in skip]
        xarg = ("t", xin) if xin in self.buffers and xin.endswith(":pooled") else self.t(xin)
        if self._dense_small_ok(rows, k):
            ops, eargs = self.epi(grp, out)
            y = self.t(out)
            kern = G.dense_small_kernel(xdt, xdt, self.dt(out), ops)
            nb = min(G.DENSE_SMALL_NB, self._dense_smem() // (4 * k))
            args = {"x": xarg, "w": self.c(wname), "bias": self.c(bias), "y": y}
            self.put_epi(args, eargs)
            opw = max(1, min(G.DENSE_SMALL_OPW, cdiv(o, 8 * p.nsm)))  # enough warps to cover every SM
            args.update(N=rows, HW=hw, K=k, O=o, inv=1.0 / hw, NB=nb, OPW=opw)
            self.emit(grp, kern, (cdiv(o, 8 * opw),), (256,), args, [], [y[1]],
                      self.label(grp, f"{what} small-batch kernel"), smem=nb * k * 4, nodes=nodes)
            return
        assert hw == 1
        if self._tf32_dense(grp, node, xarg, wsrc, bias, rows, k, o, xdt, nodes):
            return
        acc = self.temp(f"{node.name}:acc", (rows, o), "f32")
        self.launches.append(Launch("gemm", f"dense cuBLAS GEMM ({'fp16 in, ' if xdt == 'f16' else ''}fp32 accumulate)",
                                    nodes, [xarg[1]], [acc[1]],
                                    gemm={"m": o, "n": rows, "k": k, "A": self.c(wname), "B": xarg, "C": acc,
                                          "ab": xdt}))
        ops, eargs = self.epi(grp, out, head=[("Add", {}, bias, False)])
        y = self.t(out)
        kern = G.eltwise_kernel("full", "f32", self.dt(out), ops)
        args = {"a0": acc}
        self.put_epi(args, eargs)
        args.update(y=y, total=rows * o, CH=o, HWC=o, meta=("m", self.add_meta([0])))
        self.emit(grp, kern, self.grid_stride(rows * o), (256,), args, [], [y[1]],
                  "dense bias" + (f" (fused: {'+'.join(grp.ops[1:])})" if len(nodes) > 1 else ""), nodes=nodes)

    def _tf32_dense(self, grp: Group, node: Node, xarg, wsrc, bias: str, rows: int, k: int, o: int, xdt: str,
                    nodes) -> bool:
        """An fp32 Dense over `rows` rows on the 3xTF32 im2col conv as a 1x1 conv over (rows, 1, 1, k),
        bias and the fused chain in its epilogue, where tf32_dense_enabled() and it has a tile per
        SM; False: cuBLAS."""
        p = self.p
        if not (tf32_dense_enabled() and p.tensor_cores) or xdt != "f32" or self.dt(grp.output) != "f32" or k % 4:
            return False
        tname = choose_mma_tile(rows, o, k, p.nsm)
        tile = G.MMA_TILES[tname]
        if cdiv(rows, tile.bm) * cdiv(o, tile.bn) < p.nsm:
            return False
        kp = cdiv(k, G.MMA_KPAD) * G.MMA_KPAD

        def packed():
            wq = np.zeros((o, kp), np.float32)
            wq[:, :k] = p._q(wsrc)
            return wq

        wh = p.const(f"{node.name}:wtf32hi", lambda: G.tf32_split(packed())[0])
        wl = p.const(f"{node.name}:wtf32lo", lambda: G.tf32_split(packed())[1])
        ops, eargs = self.epi(grp, grp.output)
        y = self.t(grp.output)
        kern = G.mma_tf32_conv_kernel(tile, "f32", ops)
        args = {"x": xarg, "wh": self.c(wh), "wl": self.c(wl), "bias": self.c(bias), "y": y}
        self.put_epi(args, eargs)
        args.update(N=rows, H=1, W=1, C=k, Ho=1, Wo=1, O=o, KW=1, sh=1, sw=1, ph=0, pw=0, dh=1, dw=1, K=k, Kp=kp)
        self.emit(grp, kern, (cdiv(rows, tile.bm), cdiv(o, tile.bn), 1), (tile.threads,), args, [], [y[1]],
                  self.label(grp, f"dense as a 1x1 conv, tensor-core 3xTF32 {tname}"), smem=kern.static["smem"],
                  nodes=nodes)
        return True

    def g_eltwise(self, grp: Group):
        node = grp.nodes[0]
        out = grp.output
        if node.op in G.UNARY:
            a0, head = node.inputs[0], [(node.op, dict(node.attrs), None, False)]
        elif node.op == "BatchNormalization":
            kq, bq = self.p._bn_consts(node)
            a0, head = node.inputs[0], [("Mul", {}, kq, False), ("Add", {}, bq, False)]
        else:
            x0, x1 = node.inputs
            if self.p.is_param(x0):
                a0, head = x1, [(node.op, {}, x0, True)]
            else:
                a0, head = x0, [(node.op, {}, x1, False)]
        shape = self.shapes[out]
        ops, eargs = self.epi(grp, out, head=head)
        m0 = self.p.mode(a0, shape, self.shapes)
        bc = ([a0] if m0 == "bcast" else []) + [name for _, mode, name in eargs if mode == "bcast"]
        meta = self.bcast_meta(shape, bc) if bc else self.add_meta([0])
        y = self.t(out)
        kern = G.eltwise_kernel(m0, self.dt(a0), self.dt(out), ops)
        args = {"a0": self.t(a0)}
        self.put_epi(args, eargs)
        total = prod(shape)
        args.update(y=y, total=total, CH=shape[-1] if shape else 1, HWC=max(1, total // max(shape[0], 1)) if shape else 1,
                    meta=("m", meta))
        self.emit(grp, kern, self.grid_stride(total), (256,), args, [], [y[1]], self.label(grp, "elementwise"))

    def g_softmax(self, grp: Group):
        node = grp.nodes[0]
        s = self.shapes[node.inputs[0]]
        ax = int(node.attrs["axis"]) % len(s)
        outer, L, inner = prod(s[:ax]), s[ax], prod(s[ax + 1:])
        y = self.t(node.outputs[0])
        kern = G.softmax_kernel(node.op == "LogSoftmax", self.dt(node.inputs[0]), self.dt(node.outputs[0]))
        args = {"x": self.t(node.inputs[0]), "y": y, "b": ("null",), "outer": outer, "L": L, "inner": inner}
        self.emit(grp, kern, (cdiv(outer * inner * 32, 256),), (256,), args, [], [y[1]],
                  f"{node.op.lower()} (generic)")

    def _copy(self, grp, src: str, dst, dims, ostr, istr, lo, hi, obase, ibase, fill=0.0, label=None):
        meta = self.add_meta(pad6(dims, 1) + pad6(ostr, 0) + pad6(istr, 0) + pad6(lo, 0) + pad6(hi, 1) + [obase, ibase])
        total = prod(dims)
        kern = G.copy_kernel(self.dt(src), self.buffers[dst[1]].dtype)
        args = {"x": self.t(src), "y": dst, "total": total, "meta": ("m", meta), "fill": float(fill)}
        if total:
            self.emit(grp, kern, self.grid_stride(total), (256,), args, [], [dst[1]], label or f"{grp.nodes[0].op.lower()} copy (generic)")

    def g_copy(self, grp: Group):
        node = grp.nodes[0]
        a = node.attrs
        s = tuple(self.shapes[node.inputs[0]])
        if node.op == "Transpose":
            perm = a["perm"] if a["perm"] is not None else tuple(reversed(range(len(s))))
            o = tuple(self.shapes[node.outputs[0]])
            st = contiguous_strides(s)
            self._copy(grp, node.inputs[0], self.t(node.outputs[0]), o, contiguous_strides(o), [st[q] for q in perm],
                       [0] * len(o), o, 0, 0)
        elif node.op == "Concat":
            o = tuple(self.shapes[node.outputs[0]])
            ax = int(a["axis"]) % len(o)
            y = self.t(node.outputs[0])
            ost = contiguous_strides(o)
            off = 0
            for src in node.inputs:
                si = tuple(self.shapes[src])
                self._copy(grp, src, y, si, ost, contiguous_strides(si), [0] * len(si), si, off * ost[ax], 0,
                           label="concat copy (generic)")
                off += si[ax]
        elif node.op in ("Slice", "Split"):
            st = contiguous_strides(s)
            if node.op == "Slice":
                parts = [(node.outputs[0], O.slice_indices(s, a))]
            else:
                ax = int(a["axis"]) % len(s)
                parts, off = [], 0
                for t, size in zip(node.outputs, a["split"]):
                    sl = [slice(None)] * len(s)
                    sl[ax] = slice(off, off + int(size))
                    parts.append((t, tuple(sl)))
                    off += int(size)
            for t, sl in parts:
                o = tuple(self.shapes[t])
                starts, steps = [], []
                for d, q in enumerate(sl):
                    b, _, step = q.indices(s[d])
                    starts.append(b)
                    steps.append(step)
                self._copy(grp, node.inputs[0], self.t(t), o, contiguous_strides(o),
                           [st[d] * steps[d] for d in range(len(s))], [0] * len(o), o, 0,
                           sum(st[d] * starts[d] for d in range(len(s))))
        elif node.op == "Pad":
            o = tuple(self.shapes[node.outputs[0]])
            r = len(s)
            pads = [int(v) for v in a["pads"]]
            st = contiguous_strides(s)
            lo = [max(pads[d], 0) for d in range(r)]
            hi = [max(lo[d], min(o[d], s[d] + pads[d])) for d in range(r)]
            ibase = -sum(pads[d] * st[d] for d in range(r))
            self._copy(grp, node.inputs[0], self.t(node.outputs[0]), o, contiguous_strides(o), st, lo, hi, 0, ibase,
                       fill=float(a["value"]))

    def g_reduce(self, grp: Group):
        node = grp.nodes[0]
        s = tuple(self.shapes[node.inputs[0]])
        r = len(s)
        axes = sorted({int(v) % r for v in node.attrs["axes"]}) if node.attrs["axes"] is not None else list(range(r))
        st = contiguous_strides(s)
        keep = [d for d in range(r) if d not in axes]
        rdims = [s[d] for d in axes]
        R = prod(rdims)
        meta = self.add_meta(pad6([s[d] for d in keep], 1) + pad6([st[d] for d in keep], 0) + pad6(rdims, 1)
                             + pad6([st[d] for d in axes], 0))
        y = self.t(node.outputs[0])
        kern = G.reduce_kernel(node.op, self.dt(node.inputs[0]), self.dt(node.outputs[0]))
        total = prod(self.shapes[node.outputs[0]])
        args = {"x": self.t(node.inputs[0]), "y": y, "total": total, "R": R, "meta": ("m", meta),
                "scale": 1.0 / max(R, 1)}
        self.emit(grp, kern, self.grid_stride(total), (256,), args, [], [y[1]], f"{node.op} (generic)")

    def g_host(self, grp: Group):
        node = grp.nodes[0]
        reads = [self.t(t)[1] for t in node.inputs if not self.p.is_param(t)]
        writes = [self.t(t)[1] for t in node.outputs]
        self.launches.append(Launch("host", "host: NumPy reference (generic, not on the GPU)", [node.name], reads,
                                    writes, host=node))

    # -------------------------------------------------------- buffers
    def assign(self, outputs) -> tuple[dict, int]:
        """Arena offsets: each buffer lives from the first launch that touches it to the last (the
        staging buffer from the copy in, outputs to the copy out); buffers whose lifetimes overlap
        never share bytes. Greedy, largest first, lowest free offset."""
        end = len(self.launches)
        life: dict[str, list] = {":stage": [-1, 0]}
        for i, l in enumerate(self.launches):
            names = list(l.reads) + list(l.writes)
            if l.kind == "gemm":
                names += [l.gemm["B"][1], l.gemm["C"][1]]
            for a in l.args.values():
                if isinstance(a, tuple) and a[0] == "t":
                    names.append(a[1])
            for b in names:
                lo, hi = life.get(b, [i, i])
                life[b] = [min(lo, i), max(hi, i)]
        for _, b, _ in outputs:
            lo, hi = life.get(b, [end, end])
            life[b] = [lo, end]
        for b in self.buffers:
            life.setdefault(b, [0, end])
        order = sorted(self.buffers, key=lambda b: (-self.buffers[b].nbytes, b))
        placed: list = []  # (offset, size, lo, hi)
        offsets = {}
        for b in order:
            size = cdiv(max(self.buffers[b].nbytes, 1), ALIGN) * ALIGN
            lo, hi = life[b]
            busy = sorted((o, o + s) for o, s, l2, h2 in placed if not (h2 < lo or hi < l2))
            off = 0
            for s0, e0 in busy:
                if off + size <= s0:
                    break
                off = max(off, e0)
            offsets[b] = off
            placed.append((off, size, lo, hi))
        total = max((o + s for o, s, _, _ in placed), default=0)
        self.life = life
        return offsets, max(total, ALIGN)
