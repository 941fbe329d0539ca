"""The tensor-core conv kernel on the CPU: its thread-level emulation (cnnrt.testing.mma_emulator)
against a float64 convolution for every tile and A-gather variant on awkward shapes, the planner's
choice of it (and CNNRT_CUDA_NO_MMA=1), and (with an NVRTC library) that every variant compiles."""
from __future__ import annotations

import numpy as np
import pytest

from cnnrt.backends import cuda_codegen as G
from cnnrt.backends.cuda_plan import Program, choose_mma_tile
from cnnrt.testing import graphs as TG
from cnnrt.testing import mma_emulator as ME


def conv64(x, w, b, s, p, d):
    """float64 NHWC convolution, weights (O, KH, KW, C)."""
    N, H, W, C = x.shape
    O, KH, KW, _ = w.shape
    Ho = (H + 2 * p[0] - d[0] * (KH - 1) - 1) // s[0] + 1
    Wo = (W + 2 * p[1] - d[1] * (KW - 1) - 1) // s[1] + 1
    xp = np.zeros((N, H + 2 * p[0], W + 2 * p[1], C))
    xp[:, p[0]:p[0] + H, p[1]:p[1] + W] = x
    out = np.zeros((N, Ho, Wo, O))
    for i in range(KH):
        for j in range(KW):
            tap = xp[:, i * d[0]:i * d[0] + (Ho - 1) * s[0] + 1:s[0], j * d[1]:j * d[1] + (Wo - 1) * s[1] + 1:s[1]]
            out += tap @ w[:, i, j, :].T
    return out + b, Ho, Wo


SHAPES = [  # (N, H, W, C, O, KH, KW, stride, pad, dilation)
    (2, 5, 6, 3, 20, 3, 3, (2, 1), (1, 1), (1, 1)),  # C=3: scalar gather, K=27 < one K step
    (1, 7, 5, 5, 9, 3, 2, (1, 2), (2, 0), (2, 1)),  # dilation, asymmetric stride, O < 16
    (3, 4, 4, 16, 37, 3, 3, (1, 1), (1, 1), (1, 1)),  # vec gather, K=144 (4.5 K steps), O not /8
    (2, 6, 6, 8, 24, 3, 3, (2, 2), (1, 1), (2, 2)),  # vec, K=72 padded to 96, stride + dilation
    (2, 3, 5, 24, 40, 1, 1, (1, 1), (0, 0), (1, 1)),  # pointwise, M = 30
    (1, 5, 5, 40, 16, 1, 1, (2, 2), (0, 0), (1, 1)),  # 1x1 stride 2: vec, not pointwise
]


def emulate(rng, shape, tile, kts=None, stages=None, coalesce=None):
    """(the emulated kernel's output, the float64 convolution, the bias, Kp) on fresh fp16 inputs of
    `shape`; stages and coalesce default to what the planner gives the tile."""
    N, H, W, C, O, KH, KW, s, p, d = shape
    x = rng.standard_normal((N, H, W, C)).astype(np.float16)
    w = rng.standard_normal((O, KH, KW, C)).astype(np.float16)
    b = rng.standard_normal(O)
    K = KH * KW * C
    kp = -(-K // G.MMA_KPAD) * G.MMA_KPAD
    wq = np.zeros((O, kp), np.float16)
    wq[:, :K] = w.reshape(O, K)
    want, Ho, Wo = conv64(x.astype(np.float64), w.astype(np.float64), b, s, p, d)
    variant = G.mma_variant(C, KH, KW, s, (p[0], p[1], p[0], p[1]))
    tile = G.MMA_TILES[tile] if isinstance(tile, str) else tile
    stages = G.mma_stages(variant, tile) if stages is None else stages
    coalesce = G.mma_coalesce(tile) if coalesce is None else coalesce
    got = ME.run(tile, variant, x, wq, b, KH=KH, KW=KW, sh=s[0], sw=s[1], ph=p[0], pw=p[1], dh=d[0],
                 dw=d[1], Ho=Ho, Wo=Wo, kts=kts, stages=0 if variant == "scalar" else stages, coalesce=coalesce)
    return got, want, b, kp


@pytest.mark.parametrize("shape", SHAPES, ids=[f"s{i}" for i in range(len(SHAPES))])
@pytest.mark.parametrize("tile", ["tc32x16", "tc64x32", "tc32x32", "tc128x64", "tc128x128", "tc256x16", "tc256x64",
                                  "tc128x128k64"])
def test_emulated_kernel_matches_float64(rng, shape, tile):
    O = shape[4]
    got, want, _, _ = emulate(rng, shape, tile)
    assert np.isfinite(got).all(), "an output not written, or a value read from poisoned shared memory"
    np.testing.assert_allclose(got, want.reshape(-1, O), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("stages", [2, 3, 4])
@pytest.mark.parametrize("tile", ["tc32x16", "tc64x32", "tc128x64"])
@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[3], SHAPES[4], (2, 3, 3, 64, 40, 3, 3, (1, 1), (1, 1), (1, 1))],
                         ids=["K144", "K72-dil", "pointwise", "K576"])
def test_emulated_cp_async_pipeline_matches_float64(rng, shape, tile, stages):
    """The cp.async pipeline (16-byte gathers): K steps fewer than, equal to and more than the stages;
    a stage refilled before it was read shows as a wrong or NaN output."""
    O = shape[4]
    got, want, _, _ = emulate(rng, shape, tile, stages=stages)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want.reshape(-1, O), rtol=1e-9, atol=1e-9)
    parts, want, b, kp = emulate(rng, shape, tile, kts=2, stages=stages)  # split-K with the pipeline
    assert np.isfinite(parts).all()
    np.testing.assert_allclose(parts.sum(0) + b, want.reshape(-1, O), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("stages", [0, 3])
@pytest.mark.parametrize("tile", [G.MmaTile(64, 32, 2, 1, 64), G.MmaTile(128, 64, 2, 2, 64), G.MmaTile(64, 64, 1, 1, 64)],
                         ids=["64x32k64", "128x64k64-w64x32", "64x64k64-w64x64"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[4], (2, 3, 3, 64, 40, 3, 3, (1, 1), (1, 1), (1, 1))],
                         ids=["scalar", "K144", "pointwise", "K576"])
def test_emulated_deep_k_steps_and_large_warp_tiles(rng, shape, tile, stages):
    """K steps of 64 halves (four k16 steps between barriers) and warps of 64 pixels, with and
    without the pipeline, plain and split-K, against float64."""
    O = shape[4]
    got, want, _, _ = emulate(rng, shape, tile, stages=stages)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want.reshape(-1, O), rtol=1e-9, atol=1e-9)
    parts, want, b, _ = emulate(rng, shape, tile, kts=2, stages=stages)
    assert np.isfinite(parts).all()
    np.testing.assert_allclose(parts.sum(0) + b, want.reshape(-1, O), rtol=1e-9, atol=1e-9)


def test_planner_asks_for_the_pipelines_shared_memory(monkeypatch):
    """16-byte gathers run the cp.async pipeline with its dynamic shared memory in the launch (the
    executor raises the kernel's limit above 48 KB); the scalar gather keeps registers;
    CNNRT_CUDA_MMA_STAGES=0 turns the pipeline off."""
    g = TG.mma_conv_cases()["mma_c16_add_relu"]
    for env, want in ((None, G.MMA_STAGES), ("3", 3), ("4", 4), ("0", 0)):
        if env is not None:
            monkeypatch.setenv("CNNRT_CUDA_MMA_STAGES", env)
        ls = [l for l in Program(g, "fp16", nsm=132, mma=True).plan(300).launches
              if l.kernel is not None and l.kernel.family == "mma_conv"]
        assert ls
        for l in ls:
            st = l.kernel.static["stages"]
            assert st == (0 if l.kernel.static["variant"] == "scalar" else want)
            t = l.kernel.static["tile"]
            assert l.smem == max(t.smem_stages(st), t.bm * (t.bn + 4) * 4)
            assert (f"cp.async x{st}" in l.label) == bool(st)
    assert G.MMA_TILES["tc128x128"].smem_stages(4) > G.STATIC_SMEM


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[4]], ids=["scalar", "K144", "pointwise"])
@pytest.mark.parametrize("tile", ["tc64x32", "tc128x16"])
def test_emulated_direct_store(rng, shape, tile):
    # CNNRT_CUDA_MMA_STORE=direct: each accumulator pair stored by its own thread
    got, want, _, _ = emulate(rng, shape, tile, coalesce=False)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want.reshape(-1, shape[4]), rtol=1e-9, atol=1e-9)


def test_scalar_variant_on_a_vec_shape(rng):
    # the generic gather must agree on shapes the 16-byte paths take too
    x = rng.standard_normal((2, 4, 4, 16)).astype(np.float16)
    w = rng.standard_normal((20, 1, 1, 16)).astype(np.float16)
    wq = np.zeros((20, 32), np.float16)
    wq[:, :16] = w.reshape(20, 16)
    b = np.zeros(20)
    want, Ho, Wo = conv64(x.astype(np.float64), w.astype(np.float64), b, (1, 1), (0, 0), (1, 1))
    for variant in G.MMA_AVARIANTS:
        got = ME.run(G.MMA_TILES["tc64x32"], variant, x, wq, b, KH=1, KW=1, sh=1, sw=1, ph=0, pw=0, dh=1, dw=1,
                     Ho=Ho, Wo=Wo)
        np.testing.assert_allclose(got, want.reshape(-1, 20), rtol=1e-9, atol=1e-9)


def test_variants_and_tiles():
    assert G.mma_variant(3, 3, 3, (1, 1), (1, 1, 1, 1)) == "scalar"
    assert G.mma_variant(16, 3, 3, (1, 1), (1, 1, 1, 1)) == "vec"
    assert G.mma_variant(16, 1, 1, (1, 1), (0, 0, 0, 0)) == "pointwise"
    assert G.mma_variant(16, 1, 1, (2, 2), (0, 0, 0, 0)) == "vec"
    for t in G.MMA_TILES.values():
        t.check()
    assert choose_mma_tile(256 * 56 * 56, 64, 576, 132) in ("tc256x64", "tc128x64", "tc128x128")
    assert G.MMA_TILES[choose_mma_tile(1000, 16, 144, 132)].bn == 16


def test_planner_uses_tensor_cores_for_fp16_only(monkeypatch):
    g = TG.awkward_convs(0)
    labels = lambda prog: [l.label for l in prog.plan(7).launches if l.kernel is not None and "conv" in l.label]  # noqa: E731
    fp16 = labels(Program(g, "fp16"))
    assert any("tensor-core" in k for k in fp16)
    assert any("depthwise" in k for k in fp16)  # depthwise keeps its kernel
    grouped = [k for k in fp16 if "implicit-GEMM" in k and "tensor-core" not in k]
    assert grouped, "the grouped conv (groups > 1) stays on the SIMT kernel"
    assert not any("tensor-core" in k for k in labels(Program(g, "fp32")))
    monkeypatch.setenv("CNNRT_CUDA_NO_MMA", "1")
    assert not any("tensor-core" in k for k in labels(Program(g, "fp16")))
    monkeypatch.delenv("CNNRT_CUDA_NO_MMA")
    assert not any("tensor-core" in k for k in labels(Program(g, "fp16", mma=False)))


def test_mma_kernels_compile():
    from cnnrt.testing.nvrtc import compile_ptx, find_library

    if find_library() is None:
        pytest.skip("no NVRTC library here (pip install nvidia-cuda-nvrtc to check the generated CUDA on the CPU)")
    ks = [G.mma_conv_kernel(t, v, to, (G.epi_op("Add", mode="full", dtype="f16"), G.epi_op("Relu")), stages=st)
          for t in G.MMA_TILES.values() for v, to in zip(G.MMA_AVARIANTS, ("f16", "f32", "f16"))
          for st in ((0,) if v == "scalar" else (0, 3, 4))]
    ptx, _ = compile_ptx(G.module_source(ks))
    for k in ks:
        assert k.name in ptx
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in ptx and "ldmatrix.sync.aligned" in ptx
    assert "cp.async.cg.shared.global" in ptx and "cp.async.wait_group" in ptx


@pytest.mark.parametrize("kts", [1, 2, 3])
@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[3], (1, 3, 3, 64, 40, 3, 3, (1, 1), (1, 1), (1, 1))],
                         ids=["K144", "K72-dil", "K576"])
def test_emulated_splitk_partials_sum_to_float64(rng, shape, kts):
    """The split-K variant: grid.z blocks each sum their kts K steps; the partials, summed, are the
    convolution, and no partial is left unwritten."""
    O = shape[4]
    parts, want, b, kp = emulate(rng, shape, "tc32x16", kts)
    assert parts.shape[0] == -(-(-(-shape[3] * shape[5] * shape[6] // G.MMA_BK)) // kts)
    assert np.isfinite(parts).all(), "a partial sum not written"
    np.testing.assert_allclose(parts.sum(0) + b, want.reshape(-1, O), rtol=1e-9, atol=1e-9)


def test_planner_splits_k_for_few_output_tiles(rng):
    """Few output tiles and a long K (batch 1 of a 7x7 stage): split-K, then a reduction with the
    bias and the fused epilogue; a large batch keeps one block per tile. The plans' emulation
    (every launch from its own arguments, arena poisoned) matches float64."""
    from cnnrt.backends.cuda_plan import choose_splitk
    from cnnrt.ir.graph import run_reference
    from cnnrt.testing import cuda_emulator as CE

    assert choose_splitk(49, 256, 2304, "tc32x32", 132) > 1
    assert choose_splitk(256 * 49, 256, 2304, choose_mma_tile(256 * 49, 256, 2304, 132), 132) == 1
    assert choose_splitk(49, 256, 96, "tc32x32", 132) == 1  # too few K steps to share
    cases = TG.mma_conv_cases()
    for name in ("mma_splitk_7x7_add_relu", "mma_splitk_c37_7x7"):
        g = cases[name]
        prog = Program(g, "fp16", nsm=132, mma=True)
        labels = [l.label for l in prog.plan(1).launches]
        assert any("split-K" in k for k in labels), (name, labels)
        for n in (1, 2):
            x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
            out = CE.run(prog, x)["y"]
            ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=True)["y"]
            assert np.isfinite(out).all(), f"{name}: a value read before it was written"
            err = np.abs(out - ref).max() / np.abs(ref).max()
            assert err < 3e-3, (name, n, err)
    assert not any("split-K" in l.label for l in Program(cases["mma_splitk_7x7_add_relu"], "fp16", nsm=132,
                                                         mma=True).plan(512).launches)


def test_cluster_splitk_planned_and_emulated(rng, monkeypatch):
    """CNNRT_CUDA_CLUSTER_SPLITK (on by default, sm_90): split-K summed in a thread block cluster, one
    launch with bias and the epilogue, where its estimate beats both no split and the split with a
    separate sum (ResNet-20's 8x8x64 convs at batch 1, which had no split; ResNet-18's 14x14x256
    convs, which had 9 and 18 shares and a sum each). The plans' emulation matches float64."""
    from cnnrt.backends.cuda_plan import choose_cluster_splitk, choose_splitk
    from cnnrt.ir.graph import run_reference
    from cnnrt.testing import cuda_emulator as CE

    assert choose_splitk(64, 64, 576, "tc128x64", 132) == 1 and choose_cluster_splitk(64, 64, 576, "tc128x64", 132) > 1
    assert 1 < choose_cluster_splitk(196, 256, 2304, "tc128x64", 132) <= G.CLUSTER_MAX
    assert choose_cluster_splitk(49, 512, 4608, "tc128x64", 132) == 1  # 29 shares and a sum beat 8
    assert choose_cluster_splitk(2048 * 64, 64, 576, "tc128x64", 132) == 1  # a large batch fills the SMs
    # at most CLUSTER_MAX_WAVES blocks an SM: ResNet-18's 56x56x64 convs at batch 7 (172 blocks)
    # took 3 shares before the cap and lost (23 -> 36 us); 14x14x256 (44 blocks) at most 4
    assert choose_cluster_splitk(7 * 56 * 56, 64, 576, "tc128x64", 132) == 1
    assert choose_cluster_splitk(7 * 14 * 14, 256, 2304, "tc128x64", 132) <= 4
    cases = TG.mma_conv_cases()
    for name, g in (("resnet20", TG.resnet20(3)), ("mma_splitk_7x7_add_relu", cases["mma_splitk_7x7_add_relu"]),
                    ("mma_splitk_c37_7x7", cases["mma_splitk_c37_7x7"])):
        monkeypatch.setenv("CNNRT_CUDA_CLUSTER_SPLITK", "0")
        assert not any("cluster" in k for _, _, k in Program(g, "fp16", nsm=132, sm90a=True).describe(1))
        monkeypatch.delenv("CNNRT_CUDA_CLUSTER_SPLITK", raising=False)
        assert not any("cluster" in k for _, _, k in Program(g, "fp16", nsm=132).describe(1))  # sm_90 only
        prog = Program(g, "fp16", nsm=132, sm90a=True)
        for n in (1, 3):
            labels = [l.label for l in prog.plan(n).launches]
            assert any("summed in a cluster" in k for k in labels), (name, labels)
            assert not any("split-K sum" in k for k in labels if "cluster" not in k) or name == "resnet20", labels
            x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
            out = CE.run(prog, x)[g.outputs[0]]
            ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=True)[g.outputs[0]]
            assert np.isfinite(out).all(), f"{name}: a value read before it was written"
            err = np.abs(out - ref).max() / np.abs(ref).max()
            assert err < 3e-3, (name, n, err)


def test_cluster_splitk_kernels_compile_for_sm90():
    # NVRTC and ptxas for sm_90: the cluster conv's cluster attribute, barrier, DSMEM reads, no spills
    import shutil

    from cnnrt.testing.nvrtc import compile_ptx, find_library

    if find_library() is None or shutil.which("ptxas") is None:
        pytest.skip("needs an NVRTC library and ptxas (pip install nvidia-cuda-nvrtc; CUDA's ptxas)")
    ks = [G.mma_conv_kernel(G.MMA_TILES[t], v, to, ADD_RELU16 if to == "f16" else (), cluster=cs)
          for t, v, to, cs in (("tc128x64", "vec", "f16", 8), ("tc32x32", "vec", "f16", 3),
                               ("tc64x16", "scalar", "f32", 2), ("tc256x64", "pointwise", "f16", 4),
                               ("tc128x128k64", "vec", "f16", 2))]
    ptx, _ = compile_ptx(G.module_source(ks), arch="compute_90")
    assert all(k.name in ptx for k in ks)
    assert ptx.count(".reqnctapercluster") == len(ks) and "barrier.cluster.arrive.release" in ptx
    assert "mapa.shared::cluster" in ptx and "ld.shared::cluster.v4.f32" in ptx
    err, spills = _ptxas(ptx, "sm_90")
    # ptxas spills 4 bytes in one of them (tc32x32 with the residual add, 40 registers; 0 without
    # the cluster): noted, not worth a variant of its own
    assert len(spills) == len(ks) and max(spills) <= 4 and spills.count(0) >= len(ks) - 1, err[-2000:]


def test_tf32_gemm_conv_planned_and_emulated(rng, monkeypatch):
    """CNNRT_CUDA_TF32_GEMM (on by default): fp32 convs with C % 4 == 0 that the 3xTF32 halo conv does
    not take run on the 3xTF32 im2col conv where they have a tile per SM (ResNet-18's 128- to
    512-channel convs at 256 images; not at batch 1, where the SIMT conv splits K). The plans'
    emulation (weights as tf32 hi + lo) matches float64 to fp32's precision."""
    from cnnrt.ir.graph import run_reference
    from cnnrt.testing import cuda_emulator as CE

    g18 = TG.resnet18(0)
    monkeypatch.setenv("CNNRT_CUDA_TF32_GEMM", "0")
    assert not any("3xTF32 tc" in k for _, _, k in Program(g18, "fp32", nsm=132).describe(256))
    monkeypatch.delenv("CNNRT_CUDA_TF32_GEMM", raising=False)
    assert sum("3xTF32 tc" in k for _, _, k in Program(g18, "fp32", nsm=132).describe(256)) >= 8
    assert not any("3xTF32 tc" in k for _, _, k in Program(g18, "fp32", nsm=132).describe(1))
    assert not any("3xTF32 tc" in k for _, _, k in Program(g18, "fp16", nsm=132).describe(256))
    monkeypatch.setenv("CNNRT_CUDA_TF32X3", "0")  # the halo conv off: every case with C % 4 == 0 takes it
    seen = 0
    for name, g in sorted(TG.mma_conv_cases().items()):
        prog = Program(g, "fp32", nsm=1)
        if not any("3xTF32 tc" in k for _, _, k in prog.describe(3)):
            continue
        seen += 1
        x = rng.standard_normal((3,) + g.input_shape).astype(np.float32)
        out = CE.run(prog, x)["y"]
        ref = run_reference(g, {"images": x.astype(np.float64)})["y"]
        assert np.isfinite(out).all(), name
        assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5, name
    assert seen >= 5, seen


def test_tf32_dense_planned_and_emulated(rng, monkeypatch):
    """CNNRT_CUDA_TF32_DENSE=1 (opt-in): fp32 Dense layers with a tile per SM run on the 3xTF32 im2col
    conv as a 1x1 conv, bias and ReLU in its epilogue; with fewer tiles than SMs they keep cuBLAS.
    The plan's emulation matches float64 to fp32's precision; off by default."""
    from cnnrt.ir.graph import run_reference
    from cnnrt.testing import cuda_emulator as CE

    g = TG.logits(TG.deep_mnist(0))
    label = "dense as a 1x1 conv, tensor-core 3xTF32"
    assert not any(label in k for _, _, k in Program(g, "fp32", nsm=4).describe(300))
    monkeypatch.setenv("CNNRT_CUDA_TF32_DENSE", "1")
    prog = Program(g, "fp32", nsm=4)
    rows = {n: k for n, op, k in prog.describe(300) if op == "Dense"}
    assert len(rows) == 2 and all(label in k for k in rows.values()), rows
    assert sum("(fused: Dense+Relu)" in k for k in rows.values()) == 1, rows  # fc1 with its ReLU
    assert not any(label in k for _, _, k in Program(g, "fp32", nsm=132).describe(300))  # 24 tiles
    assert not any(label in k for _, _, k in Program(g, "fp16", nsm=4).describe(300))
    assert not any(label in k for _, _, k in Program(g, "fp32", nsm=4, tensor_cores=False).describe(300))
    x = rng.integers(0, 256, (300,) + g.input_shape, dtype=np.uint8)
    out = CE.run(prog, x)[g.outputs[0]]
    ref = run_reference(g, {"images": TG.scaled(g, x)})[g.outputs[0]]
    assert np.isfinite(out).all() and np.abs(out - ref).max() / np.abs(ref).max() < 1e-5


def test_no_tf32_kernels_without_tensor_cores(monkeypatch):
    # a device before sm_80 has no tf32 mma.sync: its fp32 plans keep every conv on the SIMT kernel
    monkeypatch.setenv("CNNRT_CUDA_TF32_GEMM", "1")
    for g, n in ((TG.resnet20(0), 300), (TG.resnet18(0), 256)):
        assert any("3xTF32" in k for _, _, k in Program(g, "fp32", nsm=80).describe(n))
        assert not any("3xTF32" in k for _, _, k in Program(g, "fp32", nsm=80, tensor_cores=False).describe(n))


def test_tf32_gemm_kernels_compile_for_sm90():
    # NVRTC and ptxas (sm_90): every tile, fp32 out with the residual add, no spills
    import shutil

    from cnnrt.testing.nvrtc import compile_ptx, find_library

    if find_library() is None or shutil.which("ptxas") is None:
        pytest.skip("needs an NVRTC library and ptxas (pip install nvidia-cuda-nvrtc; CUDA's ptxas)")
    epi = (G.epi_op("Add", mode="full", dtype="f32"), G.epi_op("Relu"))
    ks = [G.mma_tf32_conv_kernel(t, "f32", epi) for t in G.MMA_TILES.values()]
    ptx, _ = compile_ptx(G.module_source(ks), arch="compute_90")
    assert all(k.name in ptx for k in ks) and "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in ptx
    err, spills = _ptxas(ptx, "sm_90")
    assert len(spills) == len(ks) and not any(spills), err[-2000:]
    # the cluster split-K variants (sm_90): cluster attribute, barrier, DSMEM reads
    ks = [G.mma_tf32_conv_kernel(G.MMA_TILES[t], "f32", e, cluster=cs)
          for t, e, cs in (("tc128x64", epi, 8), ("tc64x16", (), 3), ("tc32x32", epi, 5), ("tc128x128k64", (), 2))]
    ptx, _ = compile_ptx(G.module_source(ks), arch="compute_90")
    assert ptx.count(".reqnctapercluster") == len(ks) and "mapa.shared::cluster" in ptx
    err, spills = _ptxas(ptx, "sm_90")
    assert len(spills) == len(ks) and not any(spills), err[-2000:]


def test_tf32_cluster_splitk_planned_and_emulated(rng, monkeypatch):
    """fp32 at small batches on sm_90: convs with fewer output tiles than SMs and C % 4 == 0 run on
    the 3xTF32 im2col conv as a cluster split-K (they ran on the SIMT conv: ResNet-18's 7x7x512
    convs at batch 1 at 2.7 TFLOP/s); not before sm_90, not with CNNRT_CUDA_CLUSTER_SPLITK=0, and
    the stem (C = 3) stays on the SIMT conv. The plans' emulation (shares checked against the
    grid) matches float64 within fp32's 1e-5."""
    from cnnrt.backends.cuda_plan import choose_tf32_cluster
    from cnnrt.ir.graph import run_reference
    from cnnrt.testing import cuda_emulator as CE

    assert 2 <= choose_tf32_cluster(49, 512, 4608, "tc128x64", 132) <= G.CLUSTER_MAX
    assert choose_tf32_cluster(49, 512, 16, "tc128x64", 132) == 1  # one K step: nothing to share
    assert choose_tf32_cluster(128 * 132, 64, 576, "tc128x64", 132) == 1  # the blocks fill the SMs
    g18 = TG.resnet18(0)
    labels = [k for _, _, k in Program(g18, "fp32", nsm=132, sm90a=True).describe(1)]
    assert sum("3xTF32 tc" in k and "summed in a cluster" in k for k in labels) >= 10, labels
    assert not any("3xTF32 tc" in k for k in [k for _, _, k in Program(g18, "fp32", nsm=132).describe(1)])
    monkeypatch.setenv("CNNRT_CUDA_CLUSTER_SPLITK", "0")
    assert not any("cluster" in k for _, _, k in Program(g18, "fp32", nsm=132, sm90a=True).describe(1))
    monkeypatch.delenv("CNNRT_CUDA_CLUSTER_SPLITK")
    cases = TG.mma_conv_cases()
    seen = 0
    for name, g in [("resnet20", TG.resnet20(3))] + sorted(cases.items()):
        prog = Program(g, "fp32", nsm=132, sm90a=True)
        for n in (1, 3):
            if not any("3xTF32 tc" in k and "cluster" in k for _, _, k in prog.describe(n)):
                continue
            seen += 1
            x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
            if name == "resnet20":
                x = rng.integers(0, 256, (n,) + g.input_shape).astype(np.uint8)
            out = CE.run(prog, x)[g.outputs[0]]
            ref = run_reference(g, {g.input_name: TG.scaled(g, x)})[g.outputs[0]]
            assert np.isfinite(out).all(), f"{name}: a value read before it was written"
            assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max(), (name, n)
    assert seen >= 6, seen


def test_planner_splits_k_of_the_fp32_simt_conv(rng):
    """fp32 (the SIMT conv) at batch 1 of a 7x7 stage: split-K as for the tensor cores, the partial
    sums then the reduction with bias and epilogue; not at a large batch. Emulated plans (arena
    poisoned) against float64, within fp32's 1e-4 of the largest value."""
    from cnnrt.backends.cuda_plan import choose_splitk_simt, choose_tile
    from cnnrt.ir.graph import run_reference
    from cnnrt.testing import cuda_emulator as CE

    assert choose_splitk_simt(49, 512, 4608, choose_tile(49, 512, 4608, 1, 132), 132) > 1
    assert choose_splitk_simt(256 * 49, 512, 4608, choose_tile(256 * 49, 512, 4608, 1, 132), 132) == 1
    assert choose_splitk_simt(49, 64, 72, "32x16", 132) == 1  # too few K steps to share
    cases = TG.mma_conv_cases()
    for name in ("mma_splitk_7x7_add_relu", "mma_splitk_c37_7x7"):
        g = cases[name]
        prog = Program(g, "fp32", nsm=132)
        labels = [l.label for l in prog.plan(1).launches]
        assert any("split-K" in k and "tensor-core" not in k for k in labels), (name, labels)
        for n in (1, 3):
            x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
            out = CE.run(prog, x)["y"]
            ref = run_reference(g, {"images": x.astype(np.float64)})["y"]
            assert np.isfinite(out).all(), f"{name}: a value read before it was written"
            err = np.abs(out - ref).max() / np.abs(ref).max()
            assert err < 1e-4, (name, n, err)
    assert not any("split-K" in l.label for l in Program(cases["mma_splitk_7x7_add_relu"], "fp32", nsm=132).plan(512).launches)


def test_splitk_kernels_compile():
    from cnnrt.testing.nvrtc import compile_ptx, find_library

    if find_library() is None:
        pytest.skip("no NVRTC library here (pip install nvidia-cuda-nvrtc to check the generated CUDA on the CPU)")
    ks = [G.mma_conv_kernel(G.MMA_TILES[t], v, "f32", splitk=True) for t in ("tc32x16", "tc64x64") for v in G.MMA_AVARIANTS]
    ks.append(G.splitk_reduce_kernel("f16", (G.epi_op("Add", mode="full", dtype="f16"), G.epi_op("Relu"))))
    ks += [G.conv_kernel(G.TILES[t], "f32", "f32", splitk=True) for t in ("32x16", "128x64")]
    ptx, _ = compile_ptx(G.module_source(ks))
    for k in ks:
        assert k.name in ptx


# ------------------------------------------------------------------ the halo conv (input tile in shared memory)

HALO_SHAPES = [  # (N, H, W, C, O, K, stride, pad, dilation)
    (2, 10, 9, 16, 16, 3, 1, 1, 1),  # two whole images a block
    (3, 20, 20, 8, 16, 3, 1, 1, 1),  # bands of 12 rows, the last one short; C = 8: K steps span two taps
    (2, 33, 17, 16, 16, 3, 2, 1, 1),  # stride 2
    (7, 8, 8, 16, 20, 3, 1, 1, 1),  # 4 images a block, 3 in the last; O = 20 (a ragged n8 fragment)
    (1, 12, 11, 24, 40, 3, 1, 2, 2),  # dilation 2, C = 24 (no swizzle), two channel tiles
    (5, 4, 4, 32, 70, 3, 1, 1, 1),  # 64-channel tiles of 2 warps, O = 70
    (2, 9, 9, 64, 16, 1, 1, 0, 1),  # 1x1
    (1, 6, 6, 16, 8, 5, 1, 2, 1),  # 5x5, K = 400 (25 K steps)
]


def halo_case(rng, shape, dtype, **tile_kw):
    """(x, packed weights [O][Kp], bias, the float64 conv, geometry, the halo tile) on fresh inputs."""
    N, H, W, C, O, k, s, p, d = shape[:9]
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    w = rng.standard_normal((O, k, k, C)).astype(dtype)
    b = rng.standard_normal(O)
    K = k * k * C
    wq = np.zeros((O, -(-K // G.MMA_KPAD) * G.MMA_KPAD), dtype)
    wq[:, :K] = w.reshape(O, K)
    want, Ho, Wo = conv64(x.astype(np.float64), w.astype(np.float64), b, (s, s), (p, p), (d, d))
    g = G.HaloGeom(C, H, W, Ho, Wo, k, k, s, s, p, p, d, d)
    t = G.halo_tile(g, O, N, **tile_kw)
    assert t is not None
    return x, wq, b, want, g, t


@pytest.mark.parametrize("shape", HALO_SHAPES, ids=[f"h{i}" for i in range(len(HALO_SHAPES))])
def test_emulated_halo_conv_matches_float64(rng, shape):
    x, wq, b, want, g, t = halo_case(rng, shape, np.float16)
    got = ME.run_halo(g, t, x, wq, b).reshape(want.shape)
    assert np.abs(got - want).max() <= 1e-9 * np.abs(want).max(), t


@pytest.mark.parametrize("C", [8, 16, 32, 64, 128])
def test_halo_swizzle_spreads_ldmatrix_rows_over_bank_groups(C):
    # stride 1: an ldmatrix's 8 rows are 8 consecutive footprint positions, same chunk j; with the
    # swizzle their 16-byte units land in 8 distinct bank groups (of 8), for every j and start
    sws, swm = G.halo_swizzle(C)
    cpp = C // 8
    for start in range(16):
        for j in range(cpp):
            units = [(P * cpp + (j ^ ((P >> sws) & swm))) % 8 for P in range(start, start + 8)]
            assert len(set(units)) == 8, (C, start, j, units)


def test_halo_tile_limits():
    g = G.HaloGeom(16, 32, 32, 32, 32, 3, 3, 1, 1, 1, 1, 1, 1)  # ResNet-20's first stage
    t = G.halo_tile(g, 16, 10000)
    assert (t.rows, t.imgs, t.bn, t.threads(g)) == (8, 1, 16, 256) and t.blocks(g, 10000) == 40000
    assert G.halo_tile(G.HaloGeom(3, 32, 32, 32, 32, 3, 3, 1, 1, 1, 1, 1, 1), 16, 10) is None  # C % 8
    big = G.HaloGeom(512, 14, 14, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1)
    assert G.halo_tile(big, 512, 8) is None  # footprint and weights past HALO_SMEM


def test_planner_takes_the_halo_conv_for_narrow_layers_at_large_batch(monkeypatch):
    def halo_labels(n):
        return [k for _, _, k in Program(TG.resnet20(0), "fp16").describe(n) if "halo" in k]

    monkeypatch.delenv("CNNRT_CUDA_HALO", raising=False)
    assert halo_labels(1) == []  # batch 1: too few blocks, the K-step kernel (and split-K) keep it
    many = halo_labels(4096)
    assert len(many) >= 9 and all("x 16 channels" in k or "x 32 channels" in k or "x 64 channels" in k for k in many)
    monkeypatch.setenv("CNNRT_CUDA_HALO", "0")
    assert halo_labels(4096) == []
    monkeypatch.setenv("CNNRT_CUDA_HALO", "all")
    assert len(halo_labels(1)) >= 6


def compiled_halo_kernels(cases, make, **tile) -> str:
    """PTX of make(geometry, tile, coalesce) for each case (N, H, W, C, O, K, stride, pad, dilation
    [, weight stages]) with both stores, checked to hold every kernel; skips without NVRTC."""
    from cnnrt.testing.nvrtc import compile_ptx, find_library

    if find_library() is None:
        pytest.skip("no NVRTC library here (pip install nvidia-cuda-nvrtc to check the generated CUDA on the CPU)")
    ks = []
    for N, H, W, C, O, k, s, p, d, *bst in cases:
        Ho, Wo = (H + 2 * p - d * (k - 1) - 1) // s + 1, (W + 2 * p - d * (k - 1) - 1) // s + 1
        g = G.HaloGeom(C, H, W, Ho, Wo, k, k, s, s, p, p, d, d)
        t = G.halo_tile(g, O, N, bstages=bst[0] if bst else 0, **tile)
        ks += [make(g, t, c) for c in (False, True)]
    ptx, _ = compile_ptx(G.module_source(ks))
    for kern in ks:
        assert kern.name in ptx
    return ptx


ADD_RELU16 = (G.epi_op("Add", mode="full", dtype="f16"), G.epi_op("Relu"))


def test_halo_kernels_compile():
    ptx = compiled_halo_kernels(HALO_SHAPES, lambda g, t, c: G.halo_conv_kernel(g, t, "f16", ADD_RELU16, coalesce=c))
    assert "ldmatrix.sync.aligned" in ptx and "cp.async.cg.shared.global" in ptx
    assert "ld.global.v4.u32" in ptx  # the coalesced epilogue reads the residual 8 halves at a time


# ------------------------------------------------------------------ fp32 on the tensor cores (3xTF32 halo conv)

TF32_SHAPES = [  # (N, H, W, C, O, K, stride, pad, dilation); fp32 doubles the footprint and the weights
    (2, 10, 9, 16, 16, 3, 1, 1, 1),  # two whole images a block
    (3, 20, 20, 8, 16, 3, 1, 1, 1),  # bands with a short last one
    (2, 33, 17, 16, 16, 3, 2, 1, 1),  # stride 2
    (7, 8, 8, 16, 20, 3, 1, 1, 1),  # a short last group of images, O = 20
    (1, 12, 11, 12, 24, 3, 1, 2, 2),  # dilation 2, C = 12 (3 chunks a position: no swizzle)
    (2, 9, 9, 64, 16, 1, 1, 0, 1),  # 1x1
    (1, 6, 6, 16, 8, 5, 1, 2, 1),  # 5x5
    (3, 7, 7, 4, 20, 3, 2, 1, 1),  # C = 4: a K step of 8 spans two taps
    (2, 5, 6, 12, 40, 3, 1, 1, 1),  # 64-channel tiles of two warps, O = 40
]


TF32_CASES = [s + (0,) for s in TF32_SHAPES] + [  # the weights streamed through 2-4 stages
    (2, 10, 9, 16, 16, 3, 1, 1, 1, 2), (1, 9, 9, 32, 40, 3, 1, 1, 1, 3), (2, 14, 14, 32, 64, 5, 1, 2, 1, 3),
    (3, 7, 7, 4, 20, 3, 2, 1, 1, 4)]


@pytest.mark.parametrize("split", ["trunc", "half", "rna"])
@pytest.mark.parametrize("shape", TF32_CASES, ids=[f"t{i}" for i in range(len(TF32_CASES))])
def test_emulated_tf32x3_halo_conv_keeps_fp32_precision(rng, monkeypatch, shape, split):
    # fp32 inputs and weights, float64 reference: the three tf32 products keep the error near
    # fp32's (a single tf32 product would be about 1e-3); resident or streamed weights; the
    # activations split by truncation (the default) or by cvt.rna (CNNRT_CUDA_TF32_SPLIT=rna)
    monkeypatch.setenv("CNNRT_CUDA_TF32_SPLIT", split)
    assert G.tf32_split_mode() == split
    x, wq, b, want, g, t = halo_case(rng, shape, np.float32, tf32=True, bstages=shape[9])
    assert t.tf32 and t.bstages == shape[9]
    got = ME.run_halo_tf32(g, t, x, *G.tf32_split(wq), b).reshape(want.shape)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max(), t


@pytest.mark.parametrize("split", ["trunc", "half", "rna"])
def test_tf32_split_of_activations(monkeypatch, split):
    # hi + lo within 2^-21 of v, both with the low 13 bits zero (the tensor cores read 19 bits);
    # NaN stays NaN through lo, and the kernels' two sources differ only in the split they call
    monkeypatch.setenv("CNNRT_CUDA_TF32_SPLIT", split)
    v = np.random.default_rng(1).standard_normal(10000).astype(np.float32) * np.float32(1e3)
    hi, lo = G.tf32_split_a(v)
    assert not (hi & 0x1FFF).any() and not (lo & 0x1FFF).any()
    err = np.abs(hi.view(np.float32).astype(np.float64) + lo.view(np.float32) - v)
    assert err.max() <= 2.0 ** -21 * np.abs(v).max() and err.max() > 0
    _, lo_nan = G.tf32_split_a(np.float32([np.nan]))
    assert np.isnan(lo_nan.view(np.float32)).all()
    src = G.halo_tf32_kernel(*tf32_layer()).source
    assert f"tf32_split_{split}(v, ah[i][r], al[i][r])" in src and "$TF32_SPLIT" not in src


def tf32_layer():
    g = G.HaloGeom(C=16, H=8, W=8, Ho=8, Wo=8, KH=3, KW=3, sh=1, sw=1, ph=1, pw=1, dh=1, dw=1)
    return g, G.halo_tile(g, 16, 4, tf32=True)


def test_tf32_split():
    a = np.random.default_rng(0).standard_normal(10000).astype(np.float32)
    hi, lo = G.tf32_split(a)
    assert not (hi.view(np.uint32) & 0x1FFF).any() and not (lo.view(np.uint32) & 0x1FFF).any()
    assert np.abs(hi.astype(np.float64) - a).max() <= 2.0 ** -11 * np.abs(a).max()
    assert np.abs(hi.astype(np.float64) + lo - a).max() <= 2.0 ** -21 * np.abs(a).max()
    assert G.tf32_round(np.float32([1 + 2 ** -11]))[0] == 1 + 2 ** -10  # a tie rounds away from zero


def test_tf32x3_on_by_default_and_its_switch(rng, monkeypatch):
    from cnnrt.testing import cuda_emulator as EM

    g = TG.resnet20(0)
    monkeypatch.setenv("CNNRT_CUDA_TF32X3", "0")  # the A/B switches turn them off; on by default
    assert not any("3xTF32 halo" in k for _, _, k in Program(g, "fp32", nsm=4).describe(6))
    monkeypatch.setenv("CNNRT_CUDA_TF32_GEMM", "0")  # the im2col one too: every conv on the SIMT kernel
    assert not any("TF32" in k for _, _, k in Program(g, "fp32", nsm=4).describe(6))
    monkeypatch.delenv("CNNRT_CUDA_TF32X3")
    monkeypatch.delenv("CNNRT_CUDA_TF32_GEMM")
    prog = Program(g, "fp32", nsm=4)
    assert sum("3xTF32" in k for _, _, k in prog.describe(6)) >= 9
    assert not any("TF32" in k for _, _, k in Program(g, "fp16", nsm=4).describe(6))
    x = rng.integers(0, 256, (6,) + g.input_shape, dtype=np.uint8)
    out = EM.run(prog, x)[g.outputs[0]]
    from cnnrt.ir.graph import run_reference

    ref = run_reference(g, {g.input_name: TG.scaled(g, x)})[g.outputs[0]]
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("case", ["pointwise", "pointwise_s2", "wide3x3"])
def test_tf32x3_pointwise_and_streamed_convs_emulated(rng, case):
    # fp32 1x1 convs take the 3xTF32 halo kernel too, and wide 3x3 layers stream their weights
    # through as many stages as fit (fp32's footprint is twice fp16's); emulated against float64
    from cnnrt.ir.graph import run_reference
    from cnnrt.testing import cuda_emulator as EM

    build = {"pointwise": ((10, 10, 24), lambda b, x: b.op("Relu", [b.conv(x, 40, 1)])),
             "pointwise_s2": ((9, 9, 20), lambda b, x: b.conv(x, 72, 1, stride=2)),
             "wide3x3": ((28, 28, 128), lambda b, x: b.op("Relu", [b.conv(x, 128, 3)]))}[case]
    g = TG._one(case, *build)
    n = {"wide3x3": 2, "pointwise_s2": 40}.get(case, 8)  # (one block an SM at least: nsm = 4)
    prog = Program(g, "fp32", nsm=4)
    kinds = [k for _, _, k in prog.describe(n) if "Conv" in k or "conv" in k]
    assert kinds and all("3xTF32" in k for k in kinds), kinds
    x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
    out = EM.run(prog, x)["y"]
    ref = run_reference(g, {"images": x.astype(np.float64)})["y"]
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_tf32x3_kernels_compile():
    epi = (G.epi_op("Add", mode="full", dtype="f32"), G.epi_op("Relu"))
    ptx = compiled_halo_kernels(TF32_CASES, lambda g, t, c: G.halo_tf32_kernel(g, t, epi, coalesce=c), tf32=True)
    assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in ptx
    # the activations' split: cvt.rna only where CNNRT_CUDA_TF32_SPLIT=rna asks for it
    assert ("cvt.rna.tf32.f32" in ptx) == (G.tf32_split_mode() == "rna")


def test_tf32x3_presplit_kernels_compile_and_plan(rng, monkeypatch):
    """CNNRT_CUDA_TF32_PRESPLIT=1 (opt-in, not yet run on a GPU): the 3xTF32 halo conv with its
    footprint split once into hi and lo parts in shared memory. Its tiles count twice the footprint's
    bytes; the plans take it where it fits and their emulation matches float64; NVRTC and ptxas
    (sm_90) build every case with both weight layouts and stores, without spills."""
    import shutil

    from cnnrt.ir.graph import run_reference
    from cnnrt.testing import cuda_emulator as CE

    g = G.HaloGeom(16, 8, 8, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1)
    t0, t1 = G.halo_tile(g, 16, 4, tf32=True), G.halo_tile(g, 16, 4, tf32=True, presplit=True)
    assert t1.presplit and not t0.presplit and t1.smem_x(g) == 2 * t0.smem_x(g)
    assert not G.halo_tile(g, 16, 4, presplit=True).presplit  # fp16: no split to keep
    monkeypatch.setenv("CNNRT_CUDA_TF32_PRESPLIT", "1")
    for g20, n in ((TG.logits(TG.resnet20(0)), 6), (TG.logits(TG.deep_mnist(0)), 6)):
        prog = Program(g20, "fp32", nsm=1)
        assert any("input split once" in k for _, _, k in prog.describe(n)), g20.name
        x = rng.integers(0, 256, (n,) + g20.input_shape, dtype=np.uint8)
        out = CE.run(prog, x)[g20.outputs[0]]
        ref = run_reference(g20, {"images": TG.scaled(g20, x)})[g20.outputs[0]]
        assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5, g20.name
    monkeypatch.delenv("CNNRT_CUDA_TF32_PRESPLIT")
    assert not any("input split once" in k for _, _, k in Program(TG.resnet20(0), "fp32", nsm=1).describe(6))
    from cnnrt.testing.nvrtc import find_library

    if find_library() is None or shutil.which("ptxas") is None:
        pytest.skip("needs an NVRTC library and ptxas (pip install nvidia-cuda-nvrtc; CUDA's ptxas)")
    epi = (G.epi_op("Add", mode="full", dtype="f32"), G.epi_op("Relu"))
    ptx = compiled_halo_kernels(TF32_CASES, lambda g, t, c: G.halo_tf32_kernel(g, t, epi, coalesce=c), tf32=True,
                                presplit=True)
    err, spills = _ptxas(ptx, "sm_90")
    assert spills and not any(spills), err[-2000:]


# ------------------------------------------------------------------ the halo conv with streamed weights

STREAM_SHAPES = [  # (N, H, W, C, O, K, stride, pad, dilation, weight stages)
    (2, 10, 9, 16, 16, 3, 1, 1, 1, 2),  # two stages: each chunk refills the stage just read
    (1, 9, 9, 64, 80, 3, 1, 1, 1, 3),  # two 64-channel column tiles, O = 80; 9 chunks
    (2, 7, 7, 32, 24, 3, 2, 1, 1, 4),  # stride 2, more stages than a short K needs at the end
    (1, 6, 6, 8, 16, 5, 1, 2, 1, 2),  # 5x5 on C = 8 (K steps span two taps)
    (3, 5, 5, 24, 40, 3, 1, 1, 2, 3),  # dilation 2 on 5x5 images, a short last chunk
]


@pytest.mark.parametrize("shape", STREAM_SHAPES, ids=[f"s{i}" for i in range(len(STREAM_SHAPES))])
def test_emulated_halo_stream_matches_float64(rng, shape):
    x, wq, b, want, g, t = halo_case(rng, shape, np.float16, bstages=shape[9])
    assert t.bstages == shape[9]
    got = ME.run_halo_stream(g, t, x, wq, b).reshape(want.shape)
    assert np.abs(got - want).max() <= 1e-9 * np.abs(want).max(), t


def test_halo_stream_on_by_default_and_its_switch(rng, monkeypatch):
    from cnnrt.testing import cuda_emulator as EM

    # a 3x3 conv whose 64-channel weights (1,152 halves a row) do not fit beside its footprint
    g = TG._one("wide3x3", (20, 20, 128), lambda b, x: b.op("Relu", [b.conv(x, 96, 3)]))
    monkeypatch.setenv("CNNRT_CUDA_HALO_STREAM", "0")  # the A/B switch turns it off; on by default
    assert not any("halo" in k for _, _, k in Program(g, "fp16", nsm=4).describe(8))
    monkeypatch.delenv("CNNRT_CUDA_HALO_STREAM")
    prog = Program(g, "fp16", nsm=4)
    assert any("weights in 2 stages" in k for _, _, k in prog.describe(8))
    g2 = TG._one("wide3x3s2", (20, 20, 128), lambda b, x: b.op("Relu", [b.conv(x, 96, 3, stride=2)]))
    assert not any("halo" in k for _, _, k in Program(g2, "fp16", nsm=4).describe(8))  # stride 2 keeps mma_conv
    x = rng.standard_normal((8,) + g.input_shape).astype(np.float32)
    out = EM.run(prog, x)["y"]
    from cnnrt.ir.graph import run_reference

    ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=True)["y"]
    assert np.abs(out - ref).max() <= 1e-2 * np.abs(ref).max()


def test_halo_stream_kernels_compile():
    ptx = compiled_halo_kernels(STREAM_SHAPES, lambda g, t, c: G.halo_stream_kernel(g, t, "f16", ADD_RELU16, coalesce=c))
    assert "cp.async.wait_group 1" in ptx or "cp.async.wait_group 0" in ptx


# ------------------------------------------------------------------ the Hopper wgmma conv (opt-in)

@pytest.mark.parametrize("case", ["conv3x3_add_relu", "conv_s2_o40", "pointwise_o200"])
def test_wgmma_conv_planned_and_emulated(rng, monkeypatch, case):
    # CNNRT_CUDA_WGMMA=1 on an sm_90a device puts each 16-byte-gather conv on the wgmma kernel;
    # never without the switch, on other devices or in fp32; the plan emulated against float64
    from cnnrt.ir.graph import run_reference
    from cnnrt.testing import cuda_emulator as EM

    build = {"conv3x3_add_relu": ((12, 10, 16), lambda b, x: b.op("Relu", [b.op("Add", [b.conv(x, 16, 3), x])])),
             "conv_s2_o40": ((9, 11, 24), lambda b, x: b.conv(x, 40, 3, stride=2)),
             "pointwise_o200": ((5, 7, 64), lambda b, x: b.op("Relu", [b.conv(x, 200, 1)]))}[case]
    g = TG._one(case, *build)
    monkeypatch.delenv("CNNRT_CUDA_WGMMA", raising=False)
    assert not any("wgmma" in k for _, _, k in Program(g, "fp16", nsm=4, sm90a=True).describe(5))
    monkeypatch.setenv("CNNRT_CUDA_WGMMA", "1")
    assert not any("wgmma" in k for _, _, k in Program(g, "fp16", nsm=4).describe(5))  # not sm_90
    assert not any("wgmma" in k for _, _, k in Program(g, "fp32", nsm=4, sm90a=True).describe(5))
    prog = Program(g, "fp16", nsm=4, sm90a=True)
    kinds = [k for _, _, k in prog.describe(5) if "onv" in k]
    assert kinds and all("wgmma" in k and "sm_90a" in k for k in kinds), kinds
    x = rng.standard_normal((5,) + g.input_shape).astype(np.float32)
    out = EM.run(prog, x)["y"]
    ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=True)["y"]
    assert np.abs(out - ref).max() <= 1e-2 * np.abs(ref).max()


def test_wgmma_conv_on_the_fake_runner(rng, monkeypatch):
    # the runner compiles sm_90a kernels apart (cuda_graph.load_sm90a) and binds their arguments
    from cnnrt.backends import cuda_graph
    from cnnrt.ir.graph import run_reference
    from cnnrt.testing import fake_cupy

    fake_cupy.install(monkeypatch)
    monkeypatch.setenv("CNNRT_CUDA_WGMMA", "wg2n64sp")
    g = TG._one("wg", (8, 8, 32), lambda b, x: b.op("Relu", [b.conv(x, 48, 3)]))
    r = cuda_graph.GraphRunner(g, "fp16")
    assert any("wgmma 128x64" in k for _, _, k in r.describe(6))
    x = rng.standard_normal((6,) + g.input_shape).astype(np.float32)
    out = r.run({"images": x})["y"]
    ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=True)["y"]
    assert np.abs(out - ref).max() <= 1e-2 * np.abs(ref).max()


def _ptxas(ptx: str, arch: str = "sm_90a") -> tuple:
    """ptxas assembles the PTX for `arch`: its stderr (-v), and each kernel's spill-store bytes."""
    import subprocess
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "k.ptx"
        p.write_text(ptx)
        r = subprocess.run(["ptxas", f"-arch={arch}", "-v", str(p), "-o", str(Path(d) / "k.cubin")],
                           capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    spills = [int(x.split("bytes spill stores")[0].rsplit(",", 1)[-1]) for x in r.stderr.splitlines()
              if "spill stores" in x]
    return r.stderr, spills


def _ptxas_sm90a_clean(ptx: str) -> None:
    """ptxas assembles the PTX for sm_90a with no spills and without serializing the wgmmas."""
    err, spills = _ptxas(ptx)
    assert spills and not any(spills), err[-2000:]
    assert "C7515" not in err  # ptxas did not have to serialize the wgmmas


def _sm90a_convs_emulated(rng, g, marker: str, nsm: int) -> None:
    """Every conv of g's sm_90a fp16 plan at batch 1 and 7 on a kernel labelled `marker`, and the
    plan emulated against float64 (inputs and weights rounded to fp16)."""
    from cnnrt.ir.graph import run_reference
    from cnnrt.testing import cuda_emulator as EM

    for n in (1, 7):
        prog = Program(g, "fp16", nsm=nsm, sm90a=True)
        kinds = [k for _, _, k in prog.describe(n) if "onv" in k]
        assert kinds and all(marker in k and "sm_90a" in k for k in kinds), (g.name, kinds)
        x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
        out = EM.run(prog, x)["y"]
        ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=True)["y"]
        assert np.abs(out - ref).max() <= 1e-2 * np.abs(ref).max(), (g.name, n)


WGMMA_HALO_CASES = {  # (item shape, net): every one a halo conv when forced (CNNRT_CUDA_HALO=all)
    "c16_add_relu": ((12, 10, 16), lambda b, x: b.op("Relu", [b.op("Add", [b.conv(x, 16, 3), x])])),
    "c24_o40": ((9, 11, 24), lambda b, x: b.conv(x, 40, 3)),  # 99 pixels an image: a part-empty warpgroup
    "c64_o80": ((9, 9, 64), lambda b, x: b.op("Relu", [b.conv(x, 80, 3)])),  # two column tiles at bn 64
    "c8_5x5": ((6, 6, 8), lambda b, x: b.conv(x, 16, 5, pad=2)),  # K steps span two taps
    "c32_s2": ((15, 13, 32), lambda b, x: b.conv(x, 24, 3, stride=2)),
}


@pytest.mark.parametrize("spec", ["1", "bn128,st3,p1", "k2,st3,p1"])
def test_wgmma_halo_planned_and_emulated(rng, monkeypatch, spec):
    # CNNRT_CUDA_WGMMA_HALO on an sm_90a device: every halo conv on halo_wgmma_kernel (whole
    # warpgroups, weights streamed in the core-matrix layout); never without the switch or off
    # sm_90; the plans emulated against float64 at batch 1 and 7
    monkeypatch.setenv("CNNRT_CUDA_HALO", "all")
    for case, build in WGMMA_HALO_CASES.items():
        g = TG._one(case, *build)
        monkeypatch.delenv("CNNRT_CUDA_WGMMA_HALO", raising=False)
        assert not any("wgmma" in k for _, _, k in Program(g, "fp16", nsm=4, sm90a=True).describe(7))
        monkeypatch.setenv("CNNRT_CUDA_WGMMA_HALO", spec)
        assert not any("wgmma" in k for _, _, k in Program(g, "fp16", nsm=4).describe(7)), case
        _sm90a_convs_emulated(rng, g, "wgmma halo", nsm=4)


def test_wgmma_halo_spec_parsing(monkeypatch):
    from cnnrt.backends.cuda_plan import WgmmaHalo, wgmma_halo_spec

    for env, want in (("", None), ("0", None), ("1", WgmmaHalo()), ("bn128,st3,k2,p1", WgmmaHalo(128, 3, 2, 1)),
                      ("st4", WgmmaHalo(bstages=4))):
        monkeypatch.setenv("CNNRT_CUDA_WGMMA_HALO", env)
        assert wgmma_halo_spec() == want, env


def test_wgmma_halo_kernels_compile_for_sm90a():
    # NVRTC and ptxas for sm_90a: every spec's kernels over the stream shapes, both stores, no spills
    import dataclasses
    import shutil

    from cnnrt.backends.cuda_plan import WgmmaHalo, wgmma_halo_tile
    from cnnrt.testing.nvrtc import compile_ptx, find_library

    if find_library() is None or shutil.which("ptxas") is None:
        pytest.skip("needs an NVRTC library and ptxas (pip install nvidia-cuda-nvrtc; CUDA's ptxas)")
    ks = []
    for spec in (WgmmaHalo(), WgmmaHalo(128, 3, 4, 1), WgmmaHalo(64, 3, 2, 1)):
        for N, H, W, C, O, k, s, p, d, _ in STREAM_SHAPES:
            Ho, Wo = (H + 2 * p - d * (k - 1) - 1) // s + 1, (W + 2 * p - d * (k - 1) - 1) // s + 1
            g = G.HaloGeom(C, H, W, Ho, Wo, k, k, s, s, p, p, d, d)
            t = wgmma_halo_tile(G.halo_tile(g, O, N, bstages=2), g, O, spec)
            assert t is not None and t.threads(g) % 128 == 0
            ks += [G.halo_wgmma_kernel(g, dataclasses.replace(t), "f16", ADD_RELU16, c, spec.pipe) for c in (False, True)]
    ptx, _ = compile_ptx(G.module_source(ks), arch="compute_90a")
    assert all(k.name in ptx for k in ks) and "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16" in ptx
    _ptxas_sm90a_clean(ptx)


@pytest.mark.parametrize("spec", ["all", "all,bn64,st2,p0", "all,k2,st3", "all,cm", "all,cm,k8,st3"])
def test_wgmma_band_planned_and_emulated(rng, monkeypatch, spec):
    # CNNRT_CUDA_WGMMA_BAND=all on an sm_90a device: every stride-1 conv with C % 16 == 0 on
    # band_conv_kernel; by default only the wide ones (none of these), never with =0, off sm_90, for
    # stride 2 or C % 16 != 0; the plans emulated against float64 at batch 1 and 7
    for case, g in TG.band_conv_cases().items():
        monkeypatch.delenv("CNNRT_CUDA_WGMMA_BAND", raising=False)
        assert not any("wgmma" in k for _, _, k in Program(g, "fp16", nsm=1, sm90a=True).describe(7))
        monkeypatch.setenv("CNNRT_CUDA_WGMMA_BAND", "0")
        assert not any("wgmma" in k for _, _, k in Program(g, "fp16", nsm=1, sm90a=True).describe(7))
        monkeypatch.setenv("CNNRT_CUDA_WGMMA_BAND", spec)
        assert not any("wgmma" in k for _, _, k in Program(g, "fp16", nsm=1).describe(7)), case
        _sm90a_convs_emulated(rng, g, "wgmma band", nsm=1)
    monkeypatch.setenv("CNNRT_CUDA_WGMMA_BAND", "all")
    for shape, build in (((9, 11, 32), lambda b, x: b.conv(x, 40, 3, stride=2)),
                         ((9, 11, 24), lambda b, x: b.conv(x, 40, 3))):
        g = TG._one("not_band", shape, build)
        assert not any("wgmma" in k for _, _, k in Program(g, "fp16", nsm=1, sm90a=True).describe(7))


def test_wgmma_band_spec_parsing(monkeypatch):
    from cnnrt.backends.cuda_plan import WgmmaBand, wgmma_band_spec

    for env, want in (("", WgmmaBand()), ("0", None), ("1", WgmmaBand()), ("all", WgmmaBand(all=True)),
                      ("bn64,st3,k2,p0,sm113,cm", WgmmaBand(64, 3, 2, 0, False, 113, True))):
        monkeypatch.setenv("CNNRT_CUDA_WGMMA_BAND", env)
        assert wgmma_band_spec() == want, env


def test_band_weights_cm_round_trip(rng):
    # the channel-major packing is a permutation of K (the padding kept): every weight once
    wq = np.zeros((5, 320), np.float32)
    wq[:, :288] = rng.standard_normal((5, 288))  # 3x3 taps of 32 channels, padded to 320
    cm = G.band_weights_cm(wq, 3, 3, 32)
    assert not cm[:, 288:].any() and np.array_equal(np.sort(cm, axis=1), np.sort(wq, axis=1))
    # step s = pair * 9 + tap holds that tap's channels 16 * pair .. 16 * pair + 15
    w4 = wq[:, :288].reshape(5, 3, 3, 32)
    assert np.array_equal(cm[:, (1 * 9 + 4) * 16:(1 * 9 + 5) * 16], w4[:, 1, 1, 16:32])


def test_band_rule_by_default(monkeypatch):
    # by default on sm_90: ResNet-18's stride-1 28x28x128 and 14x14x256 convs (256 GEMM rows x 128
    # channels a block, as many weight stages as fit up to 6) take the band conv at 256 images, its
    # other convs do not; =0, fp32 and other devices never
    from cnnrt.testing import cuda_emulator as EM

    monkeypatch.delenv("CNNRT_CUDA_WGMMA_BAND", raising=False)
    g = TG.resnet18(3)
    kinds = [k for _, _, k in Program(g, "fp16", nsm=132, sm90a=True).describe(256) if "onv" in k]
    band = [k for k in kinds if "wgmma band" in k]
    import re

    assert {re.search(r"\((\d+) rows x (\d+) channels in (\d) x 64 .* (\d) stages", k).groups() for k in band} == {
        ("8", "128", "4", "6"), ("14", "128", "4", "5")}, band
    assert len(band) < len(kinds)
    assert not any("wgmma" in k for _, _, k in Program(g, "fp16", nsm=132).describe(256))
    assert not any("wgmma" in k for _, _, k in Program(g, "fp32", nsm=132, sm90a=True).describe(256))
    monkeypatch.setenv("CNNRT_CUDA_WGMMA_BAND", "0")
    assert not any("wgmma" in k for _, _, k in Program(g, "fp16", nsm=132, sm90a=True).describe(256))
    monkeypatch.delenv("CNNRT_CUDA_WGMMA_BAND")
    # a wide 1x1 conv: band-shaped, but only with =all (not yet timed against the pointwise tiles)
    pw = TG._one("pw_wide", (28, 28, 128), lambda b, x: b.op("Relu", [b.conv(x, 128, 1)]))
    assert not any("wgmma" in k for _, _, k in Program(pw, "fp16", nsm=132, sm90a=True).describe(256))
    monkeypatch.setenv("CNNRT_CUDA_WGMMA_BAND", "all")
    assert any("wgmma band" in k for _, _, k in Program(pw, "fp16", nsm=132, sm90a=True).describe(256))
    monkeypatch.delenv("CNNRT_CUDA_WGMMA_BAND")
    # the default plan emulated whole at a batch where the band conv's blocks fill 4 SMs
    x = np.random.default_rng(0).integers(0, 256, (2,) + g.input_shape).astype(np.float32)
    prog = Program(g, "fp16", nsm=4, sm90a=True)
    assert any("wgmma band" in k for _, _, k in prog.describe(2))
    from cnnrt.ir.graph import run_reference

    out = EM.run(prog, x)[g.outputs[0]]
    ref = run_reference(g, {g.input_name: x.astype(np.float64)}, fp16_storage=True)[g.outputs[0]]
    assert np.abs(out - ref).max() <= 2e-2 * np.abs(ref).max()


def test_band_tiles():
    # the band tile of ResNet-18's stride-1 convs: GEMM rows cover the band; the shared memory fits
    for C, HW, O in ((64, 56, 64), (128, 28, 128), (256, 14, 256), (512, 7, 512), (16, 32, 16)):
        g = G.HaloGeom(C, HW, HW, HW, HW, 3, 3, 1, 1, 1, 1, 1, 1)
        t = G.band_tile(g, O, 256)
        assert t is not None and 64 * t.mt >= t.rows * t.twi(g) and t.smem(g) <= G.BAND_SMEM
        assert t.npx(g) % 2 == 1 and t.npx(g) >= 64 * t.mt + 2 * t.twi(g) + 2 and t.useful(g) >= 0.75, t
    assert G.band_tile(G.HaloGeom(24, 8, 8, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1), 32, 4) is None  # C % 16
    assert G.band_tile(G.HaloGeom(32, 8, 8, 4, 4, 3, 3, 2, 2, 1, 1, 1, 1), 32, 4) is None  # stride 2


def test_band_kernels_compile_for_sm90a():
    # NVRTC and ptxas for sm_90a: the band conv over the band cases' shapes and ResNet-18's, no spills
    import shutil

    from cnnrt.testing.nvrtc import compile_ptx, find_library

    if find_library() is None or shutil.which("ptxas") is None:
        pytest.skip("needs an NVRTC library and ptxas (pip install nvidia-cuda-nvrtc; CUDA's ptxas)")
    ks = []
    for C, H, W, O, k, pad, dil in ((16, 12, 10, 16, 3, 1, 1), (32, 9, 11, 40, 3, 1, 1), (64, 9, 9, 80, 3, 2, 2),
                                    (48, 7, 5, 96, 1, 0, 1), (16, 6, 6, 24, 5, 2, 1), (64, 56, 56, 64, 3, 1, 1),
                                    (256, 14, 14, 256, 3, 1, 1), (512, 7, 7, 512, 3, 1, 1)):
        g = G.HaloGeom(C, H, W, H, W, k, k, 1, 1, pad, pad, dil, dil)
        for bn, st, pipe, cm in ((128, 3, 1, False), (64, 2, 0, False), (256, 3, 1, False), (128, 4, 1, True)):
            t = G.band_tile(g, O, 64, bn=bn, bstages=st, pipe=pipe, cm=cm)
            ks.append(G.band_conv_kernel(g, t, "f16", ADD_RELU16))
    ptx, _ = compile_ptx(G.module_source(ks), arch="compute_90a")
    assert all(k.name in ptx for k in ks) and "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16" in ptx
    _ptxas_sm90a_clean(ptx)


def test_wgmma_kernels_compile_for_sm90a():
    import shutil

    from cnnrt.testing.nvrtc import compile_ptx, find_library

    if find_library() is None or shutil.which("ptxas") is None:
        pytest.skip("needs an NVRTC library and ptxas (pip install nvidia-cuda-nvrtc; CUDA's ptxas)")
    epi = (G.epi_op("Add", mode="full", dtype="f16"), G.epi_op("Relu"))
    ks = [G.wgmma_conv_kernel(t, to, epi) for t in G.WGMMA_TILES.values() for to in ("f16", "f32")]
    ptx, _ = compile_ptx(G.module_source(ks), arch="compute_90a")
    assert all(k.name in ptx for k in ks) and "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16" in ptx
    _ptxas_sm90a_clean(ptx)


# ------------------------------------------------------------------ the space-to-depth stem (opt-in)

S2D_STEMS = TG.s2d_stem_cases()


@pytest.mark.parametrize("case", sorted(S2D_STEMS))
def test_s2d_stem_planned_and_emulated(rng, monkeypatch, case):
    # the stride-2 stem runs as a stride-1 conv over the image's 2x2 space-to-depth (prep writes it,
    # the weights are rearranged); the plan emulated against the original graph in float64, at
    # batches 1 and 5; by default, never with CNNRT_CUDA_S2D=0, never in fp32
    from cnnrt.ir.graph import run_reference
    from cnnrt.testing import cuda_emulator as EM

    g = S2D_STEMS[case]
    monkeypatch.setenv("CNNRT_CUDA_HALO", "all")
    monkeypatch.setenv("CNNRT_CUDA_S2D", "0")
    assert not any("space-to-depth" in k for _, _, k in Program(g, "fp16", nsm=1).describe(5))
    monkeypatch.delenv("CNNRT_CUDA_S2D")
    prog = Program(g, "fp16", nsm=1)
    assert prog.s2d is not None and not Program(g, "fp32", nsm=1).s2d
    for n in (1, 5):
        labels = [la.label for la in prog.plan(n).launches]
        assert "space-to-depth 2x2" in labels[0] and any("space-to-depth halo" in k for k in labels), labels
        x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
        out = EM.run(prog, x)["y"]
        ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=True)["y"]
        assert np.abs(out - ref).max() <= 1e-2 * np.abs(ref).max(), (case, n)


def test_s2d_only_where_it_cuts_k(monkeypatch):
    # a 4x4 stem (pad 1) becomes 3x3 taps on 16 channels, K 144 against 128 stored: not taken; nor a
    # stride-1 stem, an 8-channel image or an input read twice
    monkeypatch.delenv("CNNRT_CUDA_S2D", raising=False)
    for shape, build in (((16, 16, 3), lambda b, x: b.conv(x, 32, 4, stride=2, pad=1)),
                         ((16, 16, 3), lambda b, x: b.conv(x, 32, 3)),
                         ((16, 16, 8), lambda b, x: b.conv(x, 32, 7, stride=2, pad=3)),
                         ((16, 16, 3), lambda b, x: b.op("Add", [b.conv(x, 3, 3), x]))):
        assert Program(TG._one("no_s2d", shape, build), "fp16", nsm=1).s2d is None


def test_s2d_weights_against_a_direct_stride2_conv(rng):
    # S2D's arithmetic alone, in float64: the stride-1 conv over the space-to-depth of x with the
    # rearranged weights equals the stride-2 conv of x, for every kernel size and pad up to 7
    from cnnrt.backends.cuda_plan import S2D

    def conv(x, w, s, ph, pw, ho, wo):  # x (H, W, C), w (O, KH, KW, C), zero padding
        o, kh, kw, c = w.shape
        xp = np.zeros((x.shape[0] + 2 * kh + 2 * s * ho, x.shape[1] + 2 * kw + 2 * s * wo, c))
        xp[kh:kh + x.shape[0], kw:kw + x.shape[1]] = x
        y = np.zeros((ho, wo, o))
        for i in range(ho):
            for j in range(wo):
                r, q = kh + i * s - ph, kw + j * s - pw
                y[i, j] = np.einsum("abc,oabc->o", xp[r:r + kh, q:q + kw], w)
        return y

    for k in range(2, 8):
        for p in range(0, k):
            c, H, W = 3, 11, 8
            x, w = rng.standard_normal((H, W, c)), rng.standard_normal((5, k, k, c))
            ho, wo = (H + 2 * p - k) // 2 + 1, (W + 2 * p - k) // 2 + 1
            t = S2D("stem", c, (k, p), (k, p))
            xs = np.zeros((-(-H // 2), -(-W // 2), 16))
            xz = np.zeros((2 * xs.shape[0], 2 * xs.shape[1], c))
            xz[:H, :W] = x
            for dy in range(2):
                for dx in range(2):
                    xs[..., (dy * 2 + dx) * c:(dy * 2 + dx + 1) * c] = xz[dy::2, dx::2]
            ph, pw, _, _ = t.pads
            got = conv(xs, t.weights(w), 1, ph, pw, ho, wo)  # (the weights come back in float32)
            want = conv(x, w.astype(np.float32), 2, p, p, ho, wo)
            assert np.abs(got - want).max() < 1e-9 * np.abs(want).max(), (k, p)


def test_prep_s2d_kernel_compiles():
    from cnnrt.testing.nvrtc import compile_ptx, find_library

    if find_library() is None:
        pytest.skip("no NVRTC library here (pip install nvidia-cuda-nvrtc to check the generated CUDA on the CPU)")
    ks = [G.prep_s2d_kernel(ti, "f16") for ti in ("u8", "f32")]
    ptx, _ = compile_ptx(G.module_source(ks))
    assert all(k.name in ptx for k in ks)


def test_s2d_on_the_fake_runner(rng, monkeypatch):
    # the runner binds the space-to-depth prep's arguments and runs the plan (CuPy faked, kernels emulated)
    from cnnrt.backends import cuda_graph
    from cnnrt.ir.graph import run_reference
    from cnnrt.testing import fake_cupy

    fake_cupy.install(monkeypatch)
    monkeypatch.delenv("CNNRT_CUDA_S2D", raising=False)
    monkeypatch.setenv("CNNRT_CUDA_HALO", "all")
    g = S2D_STEMS["odd_5x5"]
    r = cuda_graph.GraphRunner(g, "fp16")
    x = rng.standard_normal((7,) + g.input_shape).astype(np.float32)
    assert "space-to-depth 2x2" in r.program.plan(7).launches[0].label
    out = r.run({"images": x})["y"]
    ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=True)["y"]
    assert np.abs(out - ref).max() <= 1e-2 * np.abs(ref).max()
