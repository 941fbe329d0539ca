"""The CUDA planner on the CPU: plans run through the NumPy emulator of the kernel families against
the float64 reference, buffer sharing, tile choice, fusion, and (where an NVRTC library is
installed) that every generated kernel compiles. No GPU needed."""
from __future__ import annotations

import numpy as np
import pytest

from cnnrt.backends import cuda_codegen as G
from cnnrt.backends.cuda_plan import Program, choose_tile
from cnnrt.ir.graph import run_reference
from cnnrt.testing import cuda_emulator as EM
from cnnrt.testing import graphs as TG

CASES = TG.single_op_cases()


def reference(g, x):
    pp = g.preprocess
    xf = x.astype(np.float64)
    if x.dtype == np.uint8:
        xf = xf * pp["scale"]
        if pp.get("mean") is not None:
            xf = (xf - np.asarray(pp["mean"])) / np.asarray(pp["std"])
    return run_reference(g, {g.input_name: xf})


def rel_err(out, ref):
    return np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_single_op_plans(rng, case, precision):
    g = CASES[case]
    prog = Program(g, precision)
    for n in (1, 3):
        x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
        out = EM.run(prog, x)["y"]
        ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=precision == "fp16")["y"]
        assert out.shape == ref.shape
        assert np.isfinite(out).all(), "a value was read before it was written (NaN poison)"
        assert rel_err(out, ref) < (1e-6 if precision == "fp32" else 1e-2), f"{case} {precision} n={n}"


@pytest.mark.parametrize("name", ["awkward_convs", "awkward_ops", "with_host_op", "lenet5"])
def test_whole_graphs(rng, name):
    g = (TG.COVERAGE.get(name) or TG.ZOO[name])(int(rng.integers(1 << 30)))
    for precision in ("fp32", "fp16"):
        prog = Program(g, precision)
        x = rng.integers(0, 256, (2,) + g.input_shape, dtype=np.uint8)
        out = EM.run(prog, x)
        ref = reference(g, x)
        for o in g.outputs:
            assert np.isfinite(out[o]).all()
            if precision == "fp32":
                assert rel_err(out[o], ref[o]) < 1e-6
            else:
                assert rel_err(out[o], ref[o]) < 2e-2


def test_buffers_never_shared_while_live():
    g = TG.resnet20(0)
    plan = Program(g, "fp16").plan(5)
    spans = [(plan.offsets[b], plan.offsets[b] + plan.buffers[b].nbytes, *plan.life[b]) for b in plan.buffers]
    for i, (o1, e1, l1, h1) in enumerate(spans):
        for o2, e2, l2, h2 in spans[i + 1:]:
            if not (h1 < l2 or h2 < l1):
                assert e1 <= o2 or e2 <= o1, "two live buffers overlap in the arena"
    # and sharing happens: the arena is smaller than all buffers side by side
    assert plan.arena_bytes < sum(b.nbytes for b in plan.buffers.values()) / 2


def test_every_kernel_parameter_is_given():
    for g in list(CASES.values()) + [TG.mobilenet_v3_small(0, size=64), TG.awkward_ops(0)]:
        for precision in ("fp32", "fp16"):
            for n in (1, 40):
                for l in Program(g, precision).plan(n).launches:
                    if l.kind == "kernel":
                        names = [p for _, p in l.kernel.params]
                        assert sorted(names) == sorted(l.args), (g.name, l.label)


def test_fusion_resnet_and_mobilenet():
    prog = Program(TG.resnet20(0), "fp16")
    rows = prog.describe(64)
    kinds = {op: {k for _, o, k in rows if o == op} for op in ("Add", "Relu", "BatchNormalization")}
    assert all("conv implicit-GEMM" in k and "fused" in k for k in kinds["Add"]), kinds["Add"]
    assert all("fused" in k for k in kinds["Relu"])
    assert kinds["BatchNormalization"] == {"folded away when the model loads (ir.passes)"}
    prog = Program(TG.mobilenet_v3_small(0, size=64), "fp16")
    rows = prog.describe(1)
    assert any(k.startswith("depthwise conv") and k.endswith("(fused: Conv+HardSwish)") for _, _, k in rows)
    assert any("global avg pool + dense" in k for _, op, k in rows if op == "Dense")
    labels = {k for _, _, k in prog.describe(256)}
    assert any("cuBLAS" in k for k in labels)  # large batches go to cuBLAS for the dense layers


def test_host_fallback_is_marked():
    prog = Program(TG.with_host_op(0), "fp32")
    plan = prog.plan(2)
    assert not plan.capturable
    assert any(k.startswith("host") for _, op, k in prog.describe(2) if op == "MatMul")


def test_describe_covers_every_node():
    g = TG.mobilenet_v2(0, size=32)
    rows = Program(g, "fp32").describe(3)
    assert [r[0] for r in rows] == [n.name for n in g.nodes]
    assert all(r[2] and r[2] != "?" for r in rows)


def test_tile_choice():
    assert choose_tile(256 * 56 * 56, 64, 576, 1, 132) == "128x64"
    assert G.TILES[choose_tile(64, 512, 4608, 1, 132)].bm <= 64  # batch 1, 8x8 map: small tiles fill the GPU
    assert G.TILES[choose_tile(100000, 16, 144, 1, 132)].bn == 16  # 16 output channels: no wasted columns


def test_codegen_epilogue_and_literals():
    ops = (G.epi_op("Add", mode="full", dtype="f16"), G.epi_op("Clip", {"min": 0.0, "max": 6.0}),
           G.epi_op("Sub", mode="chan", swap=True))
    params, code, _ = G.epilogue(ops)
    assert [n for _, n in params] == ["e0", "e1"]
    assert "fmaxf(v, 0.0f)" in code and "fminf(v, 6.0f)" in code and "u - v" in code
    assert G.lit(1e-5) == "1e-05f" and G.lit(2) == "2.0f"
    with pytest.raises(ValueError):
        G.lit(float("inf"))
    # the same kernel for two layers is one compiled function
    assert G.conv_kernel(G.TILES["64x64"], "f32", "f32").name == G.conv_kernel(G.TILES["64x64"], "f32", "f32").name


def test_generated_kernels_compile():
    from cnnrt.testing.nvrtc import compile_ptx, find_library

    if find_library() is None:
        pytest.skip("no NVRTC library here (pip install nvidia-cuda-nvrtc to check the generated CUDA on the CPU)")
    kernels = {}
    graphs = list(CASES.values()) + [TG.awkward_ops(0), TG.awkward_convs(0), TG.mobilenet_v3_small(0, size=64),
                                     TG.resnet20(0)]
    for g in graphs:
        for precision in ("fp32", "fp16"):
            prog = Program(g, precision)
            for n in (1, 300):
                for k in prog.plan(n).kernels + prog.plan(n, "u8").kernels:
                    kernels[k.name] = k
    for t in G.TILES.values():
        k = G.conv_kernel(t, "f16", "f32", (G.epi_op("Relu"),))
        kernels[k.name] = k
    ptx, _ = compile_ptx(G.module_source(kernels.values()))
    for name in kernels:
        assert f".entry {name}(" in ptx or f".entry {name} (" in ptx or name in ptx


def test_fp32_rgb_input_padded_for_the_tf32_halo_conv(rng, monkeypatch):
    """fp32: an RGB image read only by convs is stored with 4 channels where the 3xTF32 halo conv
    then takes every conv reading it (a 7x7 stride-2 stem with a relu, a 3x3 stride-1 one); zero
    weights for the fourth channel. Emulated plans
    against float64 within 1e-5; not on a device without tensor cores, not with
    CNNRT_CUDA_TF32X3=0, not where the halo conv does not take the stem (batch 1 on 132 SMs)."""
    stem = TG._one("stem7", (23, 29, 3), lambda b, x: b.op("Relu", [b.conv(x, 24, 7, stride=2, pad=3)]))
    r3 = TG._one("stem3", (9, 11, 3), lambda b, x: b.conv(x, 16, 3))
    for g in (stem, r3):
        prog = Program(g, "fp32", nsm=1)
        assert prog.in_pad == 4
        for n in (1, 3):
            plan = prog.plan(n)
            assert "3 channels stored as 4" in plan.launches[0].label, plan.launches[0].label
            assert plan.buffers[prog.base(prog.input)].shape == (n,) + g.input_shape[:2] + (4,)
            assert "3xTF32 halo" in plan.launches[1].label, plan.launches[1].label
            x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
            out = EM.run(prog, x)["y"]
            ref = run_reference(g, {"images": x.astype(np.float64)})["y"]
            assert np.isfinite(out).all() and np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max(), g.name
    assert Program(stem, "fp32", nsm=1, tensor_cores=False).in_pad == 3
    assert Program(stem, "fp32", nsm=132).plan(1).launches[0].label == "prep (input scale/normalise)"
    monkeypatch.setenv("CNNRT_CUDA_FP32_PAD", "0")  # the A/B switch
    assert Program(stem, "fp32", nsm=1).in_pad == 3
    monkeypatch.delenv("CNNRT_CUDA_FP32_PAD")
    monkeypatch.setenv("CNNRT_CUDA_TF32X3", "0")
    assert Program(stem, "fp32", nsm=1).in_pad == 3


def test_dense_small_batch_rows_and_fp32_loads(rng, monkeypatch):
    """The small-batch dense kernel holds up to 96 KB of rows on sm_80 and later (48 KB before):
    Deep MNIST's fc1 (K = 3136 floats) takes batch 7 in one pass over its weights, not three;
    emulated against float64 within fp32's 1e-5. Its fp32 weights are read 16 bytes a lane
    where K % 4 == 0 (the VEC4 path: compiled in for fp32 weights only)."""
    from cnnrt.ir.graph import run_reference

    g = TG.deep_mnist(0)
    for tc, nb in ((True, 7), (False, 3)):
        prog = Program(g, "fp32", tensor_cores=tc)
        dense = [l for l in prog.plan(7).launches if l.kernel is not None and l.kernel.family == "dense"]
        fc1 = max(dense, key=lambda l: l.args["K"])
        assert fc1.args["K"] == 3136 and fc1.args["NB"] == nb and fc1.smem == nb * 3136 * 4, (tc, fc1.args)
        x = rng.integers(0, 256, (7,) + g.input_shape, dtype=np.uint8)
        out = EM.run(prog, x)[g.outputs[0]]
        ref = run_reference(g, {g.input_name: TG.scaled(g, x)})[g.outputs[0]]
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max(), tc
    src32 = G.dense_small_kernel("f32", "f32", "f32").source
    src16 = G.dense_small_kernel("f16", "f16", "f16").source
    assert "#if 1\n            if ((K & 3) == 0)" in src32 and "#if 0\n            if ((K & 3) == 0)" in src16
    monkeypatch.setenv("CNNRT_CUDA_DENSE", "v1")  # the A/B switch: as before, 4-byte loads and 48 KB
    assert "#if 0\n            if ((K & 3) == 0)" in G.dense_small_kernel("f32", "f32", "f32").source
    dense = [l for l in Program(g, "fp32").plan(7).launches if l.kernel is not None and l.kernel.family == "dense"]
    assert max(dense, key=lambda l: l.args["K"]).args["NB"] == 3


def test_cli_info_prints_the_cuda_plan(tmp_path):
    # the plan is pure Python: `cnnrt info --backend cuda` prints it with or without a GPU
    import subprocess
    import sys

    from cnnrt.formats import save_bundle

    path = tmp_path / "awkward.safetensors"
    save_bundle(TG.awkward_convs(0), path)
    p = subprocess.run([sys.executable, "-m", "cnnrt", "info", str(path), "--backend", "cuda", "--precision", "fp32",
                        "--batch-size", "7"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "Plan on cuda, fp32, batch 7" in p.stdout
    assert "depthwise conv (fused: Conv+Sigmoid)" in p.stdout and "in fused kernels" in p.stdout
    p = subprocess.run([sys.executable, "-m", "cnnrt", "info", "--backend", "cuda"], capture_output=True, text=True)
    assert p.returncode == 0 and "deep_mnist pattern: features kernel" in p.stdout


def test_vec8_kernels_where_they_apply(monkeypatch):
    """fp16 and fp32 depthwise convs (mult 1) and pools with C % 8 == 0 run 8 channels a thread;
    C = 5 and CNNRT_CUDA_NO_VEC8=1 keep the one-value-a-thread kernels. (Their results: the emulated
    plans above against float64, and the same cases on the GPU in tests/test_cuda_graph.py.)"""
    def fams(name, precision):
        return {l.kernel.family for l in Program(CASES[name], precision).plan(3).launches if l.kernel is not None}

    assert "dwconv8" in fams("dw8_s2_clip", "fp16") and "dwconv" not in fams("dw8_chain_dil_pads", "fp16")
    assert "pool8" in fams("pool8_max_avg", "fp16") and "pool" not in fams("pool8_max_avg", "fp16")
    assert "dwconv8" in fams("dw8_s2_clip", "fp32") and "pool8" in fams("pool8_max_avg", "fp32")
    assert "dwconv" not in fams("dw8_s2_clip", "fp32") and "pool" not in fams("pool8_max_avg", "fp32")
    assert "dwconv8" not in fams("conv_depthwise", "fp16")  # C = 5
    monkeypatch.setenv("CNNRT_CUDA_NO_VEC8", "1")
    assert "dwconv8" not in fams("dw8_s2_clip", "fp16") and "pool8" not in fams("pool8_max_avg", "fp16")


def test_input_channels_padded_for_the_tensor_cores(rng):
    # 3 to 7 input channels read only by tensor-core convs are stored as 8 (zero channels, zero
    # weights), so the stem gathers 16 bytes at a time; anything else keeps the image's channels
    # when the stem then runs the halo kernel (a block for every SM: nsm=1 here)
    g = CASES["conv3x3"]  # C = 5
    prog = Program(g, "fp16", nsm=1)
    assert prog.in_pad == 8
    plan = prog.plan(3)
    assert plan.buffers[prog.base(prog.input)].shape == (3, 7, 9, 8)
    assert "5 channels stored as 8" in plan.launches[0].label
    assert any("halo" in l.label for l in plan.launches) and not any("scalar" in l.label for l in plan.launches)
    small = Program(g, "fp16").plan(1)  # 132 SMs and one image: the K-step kernel on the image's 5 channels
    assert small.launches[0].label == "prep (input scale/normalise)" and any("scalar" in l.label for l in small.launches)
    x = rng.standard_normal((3,) + g.input_shape).astype(np.float32)
    out = EM.run(prog, x)["y"]
    ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=True)["y"]
    assert rel_err(out, ref) < 1e-2
    assert Program(g, "fp32").in_pad == 5 and Program(g, "fp16", mma=False).in_pad == 5  # (fp32 pads RGB only)
    assert Program(CASES["conv_groups3"], "fp16").in_pad == 6  # a grouped conv reads it: SIMT kernel
    both = TG._one("conv_and_add", (6, 6, 3), lambda b, x: b.op("Add", [b.conv(x, 3, 3), x]))
    assert Program(both, "fp16").in_pad == 3  # the Add reads the image too


def test_depthwise_rows_planned_emulated_and_compiled(rng, monkeypatch):
    """CNNRT_CUDA_DW_ROWS=R (2 by default): the 8-channel depthwise conv computes R output rows a thread,
    its launch covering ceil(Ho / R) row groups (stride 2, dilation 2, asymmetric pads, 7x1 and
    row counts that R does not divide); the plans emulated against float64, and the kernels
    compiled by NVRTC where a library is at hand."""
    from cnnrt.backends.cuda_plan import GRID_STRIDE_BLOCKS

    monkeypatch.setenv("CNNRT_CUDA_DW_ROWS", "4")
    kernels = {}
    for name in ("dw8_s2_clip", "dw8_chain_dil_pads"):
        g = CASES[name]
        for precision in ("fp16", "fp32"):
            prog = Program(g, precision)
            for n in (1, 3):
                plan = prog.plan(n)
                dw = [l for l in plan.launches if l.kernel is not None and l.kernel.family == "dwconv8"]
                assert any(l.kernel.static.get("rows") for l in dw), name
                for l in dw:  # rows where the window is compiled in (up to 16 taps: not the 5x5)
                    a, r = l.args, l.kernel.static.get("rows", 0)
                    assert r == (min(4, a["Ho"]) if a["KH"] * a["KW"] <= G.WINDOW_UNROLL else 0), (name, a)
                    groups = a["N"] * -(-a["Ho"] // max(r, 1)) * a["Wo"] * a["O"] // 8
                    assert l.grid[0] == min(-(-groups // 256), prog.nsm * GRID_STRIDE_BLOCKS), (name, l.grid)
                    kernels[l.kernel.name] = l.kernel
                x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
                out = EM.run(prog, x)["y"]
                ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=precision == "fp16")["y"]
                assert np.isfinite(out).all() and rel_err(out, ref) < (1e-6 if precision == "fp32" else 1e-2), name
    for env in ("9", "0"):  # past DW_ROWS_MAX, or off: the one-row kernel
        monkeypatch.setenv("CNNRT_CUDA_DW_ROWS", env)
        assert not any(l.kernel.static.get("rows") for l in Program(CASES["dw8_s2_clip"], "fp16").plan(1).launches
                       if l.kernel is not None)
    monkeypatch.delenv("CNNRT_CUDA_DW_ROWS")  # the default: 2 rows
    assert {l.kernel.static.get("rows") for l in Program(CASES["dw8_s2_clip"], "fp16").plan(1).launches
            if l.kernel is not None and l.kernel.family == "dwconv8"} == {2}
    from cnnrt.testing.nvrtc import compile_ptx, find_library

    if find_library() is None:
        pytest.skip("no NVRTC library here: the plans were checked, the CUDA source was not")
    ptx, _ = compile_ptx(G.module_source(kernels.values()))
    assert all(name in ptx for name in kernels)
