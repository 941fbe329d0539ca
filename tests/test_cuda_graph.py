"""The generic CUDA graph runner against the float64 NumPy reference (run on the device: `make test-gpu`).

Every kernel family and fused pattern (cnnrt.testing.graphs.single_op_cases), the coverage nets and
the small zoo nets, on random inputs of awkward sizes (batch 1, 7, 300 and 10,000), with the
arena and the pinned output buffers poisoned with NaN before each run, chunked runs over two
lanes, and concurrent calls from 4 threads. fp32: within 1e-4 of the reference relative to its
largest value; fp16 storage: argmax agreement. Skips, with the reason, where CuPy or a GPU is missing.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from cnnrt.backends import cuda as cuda_backend

pytestmark = pytest.mark.gpu

_REASON = cuda_backend.available()
if _REASON is not None:
    pytest.skip(f"GPU tests need CuPy and an NVIDIA GPU: {_REASON}", allow_module_level=True)

from cnnrt.backends import cuda_codegen as G  # noqa: E402
from cnnrt.backends import cuda_graph  # noqa: E402
from cnnrt.ir.graph import run_reference  # noqa: E402
from cnnrt.testing import graphs as TG  # noqa: E402

CASES = TG.single_op_cases()
_RUNNERS: dict = {}


def runner(g, precision, **kw):
    key = (g.name, id(g), precision, tuple(sorted(kw.items())))
    if key not in _RUNNERS:
        _RUNNERS[key] = cuda_backend.prepare(g, precision, **kw)
    return _RUNNERS[key]


def poison(r):
    for lane in getattr(r, "lanes", []):
        if lane.arena is not None:
            lane.arena.fill(255)  # NaN in fp32 and fp16
        if lane.h_out is not None:
            lane.h_out[:] = 255
    if getattr(r, "_h_all", None) is not None:
        r._h_all[:] = 255
    import cupy

    cupy.cuda.Device().synchronize()


scaled = TG.scaled


def rel_err(out, ref):
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def check_fp32(out, ref, what):
    assert out.shape == ref.shape, what
    assert np.isfinite(out).all(), f"{what}: {int((~np.isfinite(out)).sum())} values not written (NaN poison left)"
    err = rel_err(out, ref)
    assert err < 1e-4, f"{what}: max error {err:.2e} of the largest reference value"


def check_fp16(out, ref, what, min_agree=0.99, ref16=None):
    """fp16 outputs against the float64 reference: argmax on every clear row, and on 99% of all
    rows; where ref16 (float64 with fp16 storage, the rounding alone) agrees with the reference on
    fewer (near-ties in a small random net), 1% below what it reaches."""
    assert out.shape == ref.shape and np.isfinite(out).all(), what
    o, r = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
    if ref16 is not None:
        min_agree = min(min_agree, float((ref16.reshape(len(r), -1).argmax(1) == r.argmax(1)).mean()) - 0.01)
    top2 = np.sort(r, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 5e-2 * np.abs(r).max()
    agree = (o.argmax(1) == r.argmax(1))
    assert agree[clear].all(), f"{what}: argmax differs on {int((~agree[clear]).sum())} clear rows"
    assert agree.mean() >= min_agree or len(agree) < 100, f"{what}: argmax agreement {agree.mean():.4f}"
    # fp16 storage over tens of layers: a few percent; a wrong kernel is off by the whole scale
    assert rel_err(out, ref) < 0.1, f"{what}: error {rel_err(out, ref):.2e}"


# ------------------------------------------------------------------------------ every kernel family

@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_single_op(rng, case, precision):
    g = CASES[case]
    r = runner(g, precision)
    assert isinstance(r, cuda_graph.GraphRunner)
    for n in (1, 7, 300):
        x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
        poison(r)
        out = r.run({"images": x})["y"]
        ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=precision == "fp16")["y"]
        assert out.shape == ref.shape and np.isfinite(out).all(), f"{case} n={n}: output not all written"
        tol = 1e-4 if precision == "fp32" else 2e-2
        assert rel_err(out, ref) < tol, f"{case} {precision} n={n}: error {rel_err(out, ref):.2e}"


# ------------------------------------------------------------------------------ whole nets

NETS = {"awkward_convs": lambda: TG.awkward_convs(3), "awkward_ops": lambda: TG.awkward_ops(4),
        "with_host_op": lambda: TG.with_host_op(5), "lenet5": lambda: TG.lenet5(6), "resnet20": lambda: TG.resnet20(7),
        "mobilenet_v2_32": lambda: TG.mobilenet_v2(8, size=32, classes=10),
        "mobilenet_v3_small_64": lambda: TG.mobilenet_v3_small(9, size=64, classes=10),
        "deep_mnist": lambda: TG.deep_mnist(10)}
ZOO = {"mobilenet_v2": lambda: TG.mobilenet_v2(11), "resnet18": lambda: TG.resnet18(12)}  # full size, for some tests
_GRAPHS: dict = {}


def net(name):
    if name not in _GRAPHS:
        _GRAPHS[name] = {**NETS, **ZOO}[name]()
    return _GRAPHS[name]


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_nets(rng, name, precision):
    g = net(name)
    r = runner(g, precision)
    if name == "deep_mnist" and precision == "fp16":
        assert isinstance(r, cuda_backend.FusedRunner)  # the registered pattern
    else:
        assert isinstance(r, cuda_graph.GraphRunner)
    for n in (1, 7, 300):
        x = rng.integers(0, 256, (n,) + g.input_shape, dtype=np.uint8)
        poison(r)
        out = r.probabilities(x)
        ref = run_reference(g, {"images": scaled(g, x)})[g.outputs[0]].reshape(n, -1)
        if precision == "fp32":
            check_fp32(out, ref, f"{name} {precision} n={n}")
        else:
            ref16 = run_reference(g, {"images": scaled(g, x)}, fp16_storage=True)[g.outputs[0]]
            check_fp16(out, ref, f"{name} {precision} n={n}", ref16=ref16)
        np.testing.assert_array_equal(r.predict(x), out.argmax(1))


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "deep_mnist"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_ten_thousand(rng, name, precision):
    # a large batch (one chunk, big grids), checked on a random subset of rows against the reference
    g = net(name)
    r = runner(g, precision)
    x = rng.integers(0, 256, (10000,) + g.input_shape, dtype=np.uint8)
    poison(r)
    out = r.probabilities(x)
    assert np.isfinite(out).all()
    rows = np.sort(rng.choice(10000, 150, replace=False))
    rows = np.concatenate([[0, 9999], rows])
    ref = run_reference(g, {"images": scaled(g, x[rows])})[g.outputs[0]].reshape(len(rows), -1)
    (check_fp32 if precision == "fp32" else check_fp16)(out[rows], ref, f"{name} {precision} n=10000")


def test_chunks_on_two_lanes(rng):
    g = net("resnet20")
    r = cuda_graph.GraphRunner(g, "fp32", max_chunk=128)
    x = rng.integers(0, 256, (777,) + g.input_shape, dtype=np.uint8)  # 6 full chunks and a tail of 9
    poison(r)
    out = r.probabilities(x)
    assert len(r.lanes) == 2
    ref = run_reference(g, {"images": scaled(g, x)})[g.outputs[0]]
    check_fp32(out, ref, "chunked resnet20")
    again = r.probabilities(x[:9])  # the tail's size again: graphs replay with new data
    check_fp32(again, ref[:9], "replay")
    xp = cuda_backend.pinned_empty(x.shape, x.dtype)  # 2.4 MB: copied in by the lanes' streams
    xp[...] = x
    poison(r)
    check_fp32(r.probabilities(xp), ref, "chunked resnet20 from pinned memory")
    poison(r)
    check_fp32(r.probabilities(xp, batch_size=300), ref, "chunks of 300 from pinned memory")


@pytest.mark.parametrize("stage", ["1", "0"])
def test_pageable_input_staged(rng, monkeypatch, stage):
    # a large pageable input (2.4 MB) is copied into the runner's pinned stage on host threads in
    # pieces of 10,000 bytes (cutting images in two), each sent to the GPU once there; with
    # CNNRT_CUDA_STAGE=0 through a lane's pinned buffer, one chunk at a time, as before
    from cnnrt.backends import cuda_staging

    monkeypatch.setenv("CNNRT_CUDA_STAGE", stage)
    monkeypatch.setattr(cuda_staging, "PIECE_BYTES", 10000)
    g = net("resnet20")
    r = cuda_graph.GraphRunner(g, "fp32", max_chunk=128)
    x = rng.integers(0, 256, (777,) + g.input_shape, dtype=np.uint8)
    ref = run_reference(g, {"images": scaled(g, x)})[g.outputs[0]]
    for bs in (None, 300):
        poison(r)
        check_fp32(r.probabilities(x, batch_size=bs), ref, f"pageable, batch_size={bs}, CNNRT_CUDA_STAGE={stage}")
    assert (r._stager is not None) == (stage == "1")
    xf = scaled(g, x[:250]).astype(np.float32)  # 3 MB of float32 images
    poison(r)
    check_fp32(r.run({"images": xf})[g.outputs[0]], ref[:250], "pageable float32")


def test_graph_replay_new_data(rng):
    g = net("awkward_ops")
    r = runner(g, "fp32")
    for n in (3, 7, 3, 1, 7):
        x = rng.integers(0, 256, (n,) + g.input_shape, dtype=np.uint8)
        poison(r)
        out = r.run({"images": scaled(g, x).astype(np.float32)})["log_probabilities"]
        check_fp32(out, run_reference(g, {"images": scaled(g, x)})["log_probabilities"], f"replay n={n}")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_concurrent_calls(rng, precision):
    g = net("resnet20")
    r = cuda_backend.prepare(g, precision)
    inputs = [rng.integers(0, 256, (n,) + g.input_shape, dtype=np.uint8) for n in (1, 7, 64, 300)]
    want = [r.probabilities(x) for x in inputs]
    errors = []

    def work(i):
        try:
            for _ in range(10):
                got = r.probabilities(inputs[i])
                if not np.array_equal(got, want[i]):
                    errors.append(f"thread {i}: result differs")
        except Exception as e:  # noqa: BLE001
            errors.append(f"thread {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    check = check_fp32 if precision == "fp32" else check_fp16
    check(want[2], run_reference(g, {"images": scaled(g, inputs[2])})[g.outputs[0]], "threads")


def test_describe_and_summary():
    g = net("mobilenet_v3_small_64")
    r = runner(g, "fp16")
    rows = r.describe(1)
    assert [n for n, _, _ in rows] == [n.name for n in g.nodes]
    assert "fused" in r.summary(1)
    fused = runner(net("deep_mnist"), "fp16")
    assert all("deep_mnist pattern" in k for _, _, k in fused.describe())


def test_compile_cache_is_reused(tmp_path):
    # a second process finds every module in cnnrt's on-disk cubin cache (load_cubin): nothing new
    # is written, no module falls back to CuPy's compiler (cold start target: 0.3 s)
    import os
    import subprocess
    import sys

    code = ("from cnnrt.testing.graphs import resnet20; "
            "from cnnrt.backends.cuda_graph import GraphRunner; r = GraphRunner(resnet20(0), 'fp16'); "
            "print(r.compile_seconds, r.cupy_modules)")
    env = dict(os.environ, CUPY_CACHE_DIR=str(tmp_path / "cupy"), CNNRT_CACHE_DIR=str(tmp_path / "cnnrt"))

    def entries():
        return {p: p.stat().st_mtime_ns for p in (tmp_path / "cnnrt").rglob("*.cubin")}

    runs = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        runs.append((p.stdout.split(), entries()))
    (first, cached), (second, again) = runs
    print(f"compile and load: first {float(first[0]):.2f} s, cached {float(second[0]):.2f} s")
    assert first[1] == second[1] == "0" and cached and again == cached


# ------------------------------------------------------------------------------ tensor-core convolution

MMA_CASES = TG.mma_conv_cases()


def _needs_mma():
    import cupy

    if int(cupy.cuda.Device().compute_capability) < 80:
        pytest.skip("mma.sync m16n8k16 needs compute capability 8.0 or later")


def _uses_mma(r, n) -> bool:
    return any("tensor-core" in k for _, _, k in r.describe(n))


@pytest.mark.parametrize("case", sorted(MMA_CASES))
def test_tensor_core_conv(rng, case):
    # against float64 (inputs and weights rounded to fp16, as stored) and against the SIMT kernel
    _needs_mma()
    g = MMA_CASES[case]
    r, simt = runner(g, "fp16"), runner(g, "fp16", mma=False)
    assert _uses_mma(r, 7) and not _uses_mma(simt, 7)
    for n in (1, 7, 300):
        x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
        poison(r)
        poison(simt)
        out = r.run({"images": x})["y"]
        ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=True)["y"]
        assert out.shape == ref.shape and np.isfinite(out).all(), f"{case} n={n}: output not all written"
        assert rel_err(out, ref) < 3e-3, f"{case} n={n}: error {rel_err(out, ref):.2e}"
        alt = simt.run({"images": x})["y"]
        assert rel_err(out, alt) < 3e-3, f"{case} n={n}: tensor-core and SIMT differ by {rel_err(out, alt):.2e}"


def test_tensor_core_conv_large_batch(rng):
    # many blocks along M (a 4,096-image batch), checked on random rows
    _needs_mma()
    g = MMA_CASES["mma_c16_add_relu"]
    r = runner(g, "fp16")
    x = rng.standard_normal((4096,) + g.input_shape).astype(np.float32)
    poison(r)
    out = r.run({"images": x})["y"]
    assert np.isfinite(out).all()
    rows = np.concatenate([[0, 4095], np.sort(rng.choice(4096, 100, replace=False))])
    ref = run_reference(g, {"images": x[rows].astype(np.float64)}, fp16_storage=True)["y"]
    assert rel_err(out[rows], ref) < 3e-3


@pytest.mark.parametrize("stages", ["0", "2", "3", "5"])
def test_tensor_core_conv_pipeline_depths(rng, monkeypatch, stages):
    # the cp.async pipeline at other depths than the default (0: the register-staged double buffer),
    # above 48 KB of shared memory at 5 stages of the larger tiles
    _needs_mma()
    monkeypatch.setenv("CNNRT_CUDA_MMA_STAGES", stages)
    for case in ("mma_c16_add_relu", "mma_pointwise_clip"):
        g = MMA_CASES[case]
        r = cuda_graph.GraphRunner(g, "fp16")
        for n in (7, 2000):
            x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
            poison(r)
            out = r.run({"images": x})["y"]
            rows = np.arange(n) if n < 100 else np.concatenate([[0, n - 1], np.sort(rng.choice(n, 60, replace=False))])
            ref = run_reference(g, {"images": x[rows].astype(np.float64)}, fp16_storage=True)["y"]
            assert np.isfinite(out).all() and rel_err(out[rows], ref) < 3e-3, (case, n, stages)


@pytest.mark.parametrize("tile", sorted(G.MMA_TILES))
def test_every_tensor_core_tile(rng, monkeypatch, tile):
    # each tile forced (CNNRT_CUDA_MMA_TILES) on a 3x3 conv with O = 130 (a partial last column
    # tile, a staged epilogue with a ragged 8-channel group) and a 1x1 conv with HardSwish, at batch
    # 1 and 300, against float64
    _needs_mma()
    monkeypatch.setenv("CNNRT_CUDA_MMA_TILES", tile)
    for case in ("mma_wide_o130", "mma_pointwise_o200_hswish", "mma_c3_s2_relu"):
        g = MMA_CASES[case]
        r = cuda_graph.GraphRunner(g, "fp16")
        assert any(tile in k for _, _, k in r.describe(300)), (tile, case, r.describe(300))
        for n in (1, 300):
            x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
            poison(r)
            out = r.run({"images": x})["y"]
            ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=True)["y"]
            assert np.isfinite(out).all() and rel_err(out, ref) < 3e-3, (tile, case, n, rel_err(out, ref))


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2_32", "mobilenet_v3_small_64"])
def test_nets_tensor_core_vs_simt(rng, name):
    # the whole net with every conv on the tensor cores, against the same plan on the SIMT kernel
    _needs_mma()
    g = net(name)
    r, simt = runner(g, "fp16"), runner(g, "fp16", mma=False)
    assert _uses_mma(r, 64) and not _uses_mma(simt, 64)
    x = rng.integers(0, 256, (64,) + g.input_shape, dtype=np.uint8)
    poison(r)
    out = r.probabilities(x)
    ref = run_reference(g, {"images": scaled(g, x)})[g.outputs[0]].reshape(64, -1)
    check_fp16(out, ref, f"{name} tensor-core")
    check_fp16(out, simt.probabilities(x), f"{name} tensor-core vs SIMT")


def test_halo_conv_forced_everywhere(rng, monkeypatch):
    # CNNRT_CUDA_HALO=all: every tensor-core conv with C % 8 == 0 runs the halo kernel (footprint in
    # shared memory), at batch 1, 7 and 300, against float64; the others keep mma_conv_kernel
    _needs_mma()
    monkeypatch.setenv("CNNRT_CUDA_HALO", "all")
    assert _cases_on_kernel(rng, "fp16", "halo", 3e-3) >= 6


def net_against_simt(rng, g, r, n: int, marker: str, least: int = 1) -> None:
    """A whole fp16 net on runner r, whose plan for n images has at least `least` kernels labelled
    `marker`, against the same net's plan on the SIMT kernels, outputs poisoned."""
    assert sum(marker in k for _, _, k in r.describe(n)) >= least, marker
    simt = runner(g, "fp16", mma=False)
    x = rng.integers(0, 256, (n,) + g.input_shape, dtype=np.uint8)
    poison(r)
    check_fp16(r.probabilities(x), simt.probabilities(x), f"{g.name} {marker} vs SIMT")


def against_float64(rng, r, g, n: int, tol: float, what, fp16: bool = True) -> None:
    """Runner r on n fresh random inputs of graph g, outputs poisoned, against float64 (inputs and
    weights rounded to fp16 where fp16): finite, and within tol of the largest output."""
    x = rng.standard_normal((n,) + g.input_shape).astype(np.float32)
    poison(r)
    out = r.run({"images": x})["y"]
    ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=fp16)["y"]
    assert np.isfinite(out).all() and rel_err(out, ref) < tol, (what, n, rel_err(out, ref))


def _cases_on_kernel(rng, precision: str, marker: str, tol: float) -> int:
    """Every MMA case whose plan runs a kernel labelled `marker`, at batch 1, 7 and 300 with outputs
    poisoned, against float64 (inputs and weights rounded to fp16 for an fp16 plan); how many ran."""
    seen = 0
    for case, g in sorted(MMA_CASES.items()):
        r = cuda_graph.GraphRunner(g, precision)
        if not any(marker in k for _, _, k in r.describe(300)):
            continue
        seen += 1
        for n in (1, 7, 300):
            against_float64(rng, r, g, n, tol, case, fp16=precision == "fp16")
    return seen


def test_halo_conv_large_batch(rng, monkeypatch):
    # the planner's own choice at 5,000 images: ResNet-20 takes the halo kernel for its 16- and
    # 32-channel convs; the whole net against the SIMT plan, and a halo layer against float64
    _needs_mma()
    monkeypatch.delenv("CNNRT_CUDA_HALO", raising=False)
    g = MMA_CASES["mma_halo_bands_c8"]
    r = cuda_graph.GraphRunner(g, "fp16")
    assert any("halo" in k for _, _, k in r.describe(5000))
    x = rng.standard_normal((5000,) + g.input_shape).astype(np.float32)
    poison(r)
    out = r.run({"images": x})["y"]
    rows = np.concatenate([[0, 4999], np.sort(rng.choice(5000, 60, replace=False))])
    ref = run_reference(g, {"images": x[rows].astype(np.float64)}, fp16_storage=True)["y"]
    assert np.isfinite(out).all() and rel_err(out[rows], ref) < 3e-3
    net_against_simt(rng, net("resnet20"), runner(net("resnet20"), "fp16"), 5000, "halo")


@pytest.mark.parametrize("presplit", ["0", "1"])
def test_tf32x3_fp32_convs(rng, monkeypatch, presplit):
    # CNNRT_CUDA_TF32X3=1 (and the halo conv wherever it fits): fp32 convs on the tensor cores in
    # three tf32 products, against float64 at fp32's precision (issue 9: within 1e-4 of the reference);
    # CNNRT_CUDA_TF32_PRESPLIT=1 (opt-in): the halo conv's footprint split once in shared memory
    _needs_mma()
    monkeypatch.setenv("CNNRT_CUDA_TF32_PRESPLIT", presplit)
    monkeypatch.setenv("CNNRT_CUDA_TF32X3", "1")
    monkeypatch.setenv("CNNRT_CUDA_HALO", "all")
    assert _cases_on_kernel(rng, "fp32", "3xTF32", 1e-5) >= 6
    monkeypatch.delenv("CNNRT_CUDA_HALO")
    # Deep MNIST's conv2 and ResNet-18's: the weights streamed; MobileNetV2: 1x1 convs too. The
    # logits, relative to their size (TG.logits says why not the probabilities)
    for name, n in (("resnet20", 3000), ("deep_mnist", 3000), ("mobilenet_v2", 512), ("resnet18", 96)):
        g = TG.logits(net(name))
        xs = rng.integers(0, 256, (n,) + g.input_shape, dtype=np.uint8)
        r = cuda_graph.GraphRunner(g, "fp32")  # planned under this test's switches
        assert any("3xTF32" in k for _, _, k in r.describe(n)), name
        assert (presplit == "1") == any("input split once" in k for _, _, k in r.describe(n)), name
        poison(r)
        out = r.run({"images": xs})[g.outputs[0]].reshape(n, -1)
        ref = run_reference(g, {"images": scaled(g, xs[:16])})[g.outputs[0]].reshape(16, -1)
        assert np.isfinite(out).all() and rel_err(out[:16], ref) < 1e-4, (name, rel_err(out[:16], ref))


def test_tf32_dense(rng, monkeypatch):
    # CNNRT_CUDA_TF32_DENSE=1 (opt-in): Deep MNIST fp32's fc1 and fc2 at 3,000 images on the 3xTF32
    # im2col conv as 1x1 convs, outputs poisoned, logits against float64 relative to their size
    _needs_mma()
    monkeypatch.setenv("CNNRT_CUDA_TF32_DENSE", "1")
    g = TG.logits(net("deep_mnist"))
    r = cuda_graph.GraphRunner(g, "fp32")
    n = 3000
    assert sum("dense as a 1x1 conv, tensor-core 3xTF32" in k for _, op, k in r.describe(n) if op == "Dense") >= 1
    xs = rng.integers(0, 256, (n,) + g.input_shape, dtype=np.uint8)
    poison(r)
    out = r.run({"images": xs})[g.outputs[0]].reshape(n, -1)
    rows = np.concatenate([[0, n - 1], np.sort(rng.choice(n, 30, replace=False))])
    ref = run_reference(g, {"images": scaled(g, xs[rows])})[g.outputs[0]].reshape(len(rows), -1)
    assert np.isfinite(out).all() and rel_err(out[rows], ref) < 1e-4, rel_err(out[rows], ref)


def test_halo_stream_conv(rng, monkeypatch):
    # the halo conv with the weights streamed through 2 stages (on by default), forced
    # (CNNRT_CUDA_HALO=all) on a 128-channel conv whose weights do not fit beside the footprint,
    # against float64, and ResNet-18 whole against its SIMT plan
    _needs_mma()
    monkeypatch.setenv("CNNRT_CUDA_HALO_STREAM", "1")
    for case in ("mma_splitk_7x7_add_relu",):
        g = MMA_CASES[case]
        r = cuda_graph.GraphRunner(g, "fp16")
        monkeypatch.setenv("CNNRT_CUDA_HALO", "all")
        assert any("weights in 2 stages" in k for _, _, k in r.describe(300))
        for n in (1, 7, 300):
            against_float64(rng, r, g, n, 3e-3, case)
        monkeypatch.delenv("CNNRT_CUDA_HALO")
    g = TG.resnet18(0)
    net_against_simt(rng, g, runner(g, "fp16"), 32, "weights in 2 stages")


def test_wgmma_conv(rng, monkeypatch):
    # CNNRT_CUDA_WGMMA=1 (opt-in, sm_90 only): every tensor-core conv with C % 8 == 0 on the Hopper
    # wgmma kernel, at batch 1, 7 and 300 with outputs poisoned, against float64; then ResNet-18
    # whole against its SIMT plan
    import cupy

    if int(cupy.cuda.Device().compute_capability) != 90:
        pytest.skip("wgmma (sm_90a) runs on compute capability 9.0 only")
    for tile in ("wg2n128sp", "wg2n128spd", "wg2n128"):  # swizzled and pipelined, staged or direct store; plain
        monkeypatch.setenv("CNNRT_CUDA_WGMMA", tile)
        assert _cases_on_kernel(rng, "fp16", "wgmma", 3e-3) >= 4, tile
    monkeypatch.setenv("CNNRT_CUDA_WGMMA", "1")
    g = TG.resnet18(0)
    net_against_simt(rng, g, cuda_graph.GraphRunner(g, "fp16"), 32, "wgmma", least=15)  # (not the cached runner)


def test_wgmma_halo_conv(rng, monkeypatch):
    # CNNRT_CUDA_WGMMA_HALO (opt-in, sm_90 only): the halo convs on Hopper's wgmma (A by ldmatrix
    # from the footprint into registers, the streamed weights read by the tensor cores from shared
    # memory), forced on every case it fits, at batch 1, 7 and 300 with outputs poisoned, against
    # float64; then ResNet-18 and ResNet-20 whole against their SIMT plans
    import cupy

    if int(cupy.cuda.Device().compute_capability) != 90:
        pytest.skip("wgmma (sm_90a) runs on compute capability 9.0 only")
    monkeypatch.setenv("CNNRT_CUDA_HALO", "all")
    for spec in ("1", "bn128,st3,p1", "k2,st3,p1"):
        monkeypatch.setenv("CNNRT_CUDA_WGMMA_HALO", spec)
        assert _cases_on_kernel(rng, "fp16", "wgmma halo", 3e-3) >= 3, spec
    monkeypatch.delenv("CNNRT_CUDA_HALO")
    monkeypatch.setenv("CNNRT_CUDA_WGMMA_HALO", "1")
    g = TG.resnet18(0)
    net_against_simt(rng, g, cuda_graph.GraphRunner(g, "fp16"), 32, "wgmma halo", least=4)
    g = net("resnet20")
    net_against_simt(rng, g, cuda_graph.GraphRunner(g, "fp16"), 3000, "wgmma halo", least=4)


def test_wgmma_band_conv(rng, monkeypatch):
    # CNNRT_CUDA_WGMMA_BAND (opt-in, sm_90 only): stride-1 convs with C % 16 == 0 on the wgmma band
    # conv (A and B read by the tensor cores from shared memory, a tap one descriptor from the next),
    # its awkward cases at 300 images (where its blocks fill the SMs) and the MMA cases it takes, with
    # outputs poisoned, against float64; then ResNet-18 and ResNet-20 whole against their SIMT plans
    import cupy

    if int(cupy.cuda.Device().compute_capability) != 90:
        pytest.skip("wgmma (sm_90a) runs on compute capability 9.0 only")
    for spec in ("all", "all,bn64,st2,p0", "all,bn256,k2,st3", "all,cm"):
        monkeypatch.setenv("CNNRT_CUDA_WGMMA_BAND", spec)
        for case, g in TG.band_conv_cases().items():
            r = cuda_graph.GraphRunner(g, "fp16")
            assert any("wgmma band" in k for _, _, k in r.describe(300)), (spec, case)
            for n in (300, 301):
                against_float64(rng, r, g, n, 3e-3, (spec, case))
        _cases_on_kernel(rng, "fp16", "wgmma band", 3e-3)
    monkeypatch.setenv("CNNRT_CUDA_WGMMA_BAND", "all")
    g = TG.resnet18(0)
    net_against_simt(rng, g, cuda_graph.GraphRunner(g, "fp16"), 64, "wgmma band", least=8)
    g = net("resnet20")
    net_against_simt(rng, g, cuda_graph.GraphRunner(g, "fp16"), 3000, "wgmma band", least=8)
    monkeypatch.setenv("CNNRT_CUDA_WGMMA_BAND", "1")  # the rule: ResNet-18's 28x28x128 convs
    g = TG.resnet18(0)
    net_against_simt(rng, g, cuda_graph.GraphRunner(g, "fp16"), 256, "wgmma band", least=3)


def test_s2d_stem(rng, monkeypatch):
    # the space-to-depth stem (on by default): stride-2 stems on 3-4 channels as stride-1 convs over the image's
    # space-to-depth (prep_s2d_kernel, then the halo conv), forced with the halo conv everywhere, at
    # batch 1, 7 and 300 with outputs poisoned, against float64; then ResNet-18 against its SIMT plan
    _needs_mma()
    monkeypatch.delenv("CNNRT_CUDA_S2D", raising=False)
    monkeypatch.setenv("CNNRT_CUDA_HALO", "all")
    for case, g in TG.s2d_stem_cases().items():
        r = cuda_graph.GraphRunner(g, "fp16")
        for n in (1, 7, 300):
            assert "space-to-depth 2x2" in r.program.plan(n).launches[0].label, case
            against_float64(rng, r, g, n, 3e-3, case)
    monkeypatch.delenv("CNNRT_CUDA_HALO")
    g = TG.resnet18(0)
    net_against_simt(rng, g, cuda_graph.GraphRunner(g, "fp16"), 64, "space-to-depth halo")


def test_cluster_splitk(rng, monkeypatch):
    # CNNRT_CUDA_CLUSTER_SPLITK (on by default, sm_90): split-K summed inside a thread block cluster
    # (DSMEM), one launch a conv: the MMA cases at the batch sizes (1, 7, 300) whose plans take it,
    # against float64 with outputs poisoned; ResNet-20 and ResNet-18 at batch 1 and 7 against their
    # SIMT plans
    import cupy

    _needs_mma()
    if int(cupy.cuda.Device().compute_capability) != 90:
        pytest.skip("the cluster split-K is planned on sm_90 only")
    monkeypatch.setenv("CNNRT_CUDA_CLUSTER_SPLITK", "1")
    seen = 0
    for case, g in sorted(MMA_CASES.items()):
        r = cuda_graph.GraphRunner(g, "fp16")
        for n in (1, 7, 300):
            if any("summed in a cluster" in k for _, _, k in r.describe(n)):
                seen += 1
                against_float64(rng, r, g, n, 3e-3, case)
    assert seen >= 5, seen
    for g in (TG.resnet20(0), TG.resnet18(0)):
        r = cuda_graph.GraphRunner(g, "fp16")
        for n in (1, 7):
            net_against_simt(rng, g, r, n, "summed in a cluster")


def test_tf32_cluster_splitk(rng, monkeypatch):
    # fp32 at small batches on sm_90: the 3xTF32 im2col conv as a cluster split-K where the SIMT
    # conv took the layers with fewer tiles than SMs: the MMA cases at batch 1 and 7 with outputs
    # poisoned against float64 (1e-5), then ResNet-20 and ResNet-18 fp32 at batch 1 and 7 against
    # their plans with the cluster split-K off (the SIMT conv), within issue 9's 1e-4
    import cupy

    _needs_mma()
    if int(cupy.cuda.Device().compute_capability) != 90:
        pytest.skip("the cluster split-K is planned on sm_90 only")
    marker = "summed in a cluster"
    seen = 0
    for case, g in sorted(MMA_CASES.items()):
        r = cuda_graph.GraphRunner(g, "fp32")
        for n in (1, 7):
            if any("3xTF32 tc" in k and marker in k for _, _, k in r.describe(n)):
                seen += 1
                against_float64(rng, r, g, n, 1e-5, case, fp16=False)
    assert seen >= 6, seen
    for g in (TG.resnet20(0), TG.resnet18(0)):
        x = rng.integers(0, 256, (7,) + g.input_shape, dtype=np.uint8)
        monkeypatch.setenv("CNNRT_CUDA_CLUSTER_SPLITK", "0")  # read when a batch size is planned
        base = cuda_graph.GraphRunner(g, "fp32")
        assert not any(marker in k for n in (1, 7) for _, _, k in base.describe(n))
        refs = {n: base.probabilities(x[:n]) for n in (1, 7)}
        monkeypatch.delenv("CNNRT_CUDA_CLUSTER_SPLITK")
        r = cuda_graph.GraphRunner(g, "fp32")
        for n in (1, 7):
            assert sum("3xTF32 tc" in k and marker in k for _, _, k in r.describe(n)) >= 4, (g.name, n)
            poison(r)
            check_fp32(r.probabilities(x[:n]), refs[n], f"{g.name} fp32 x{n}: 3xTF32 cluster vs SIMT")


def test_fp32_rgb_input_padded(rng):
    # fp32: an RGB image stored with 4 channels where the 3xTF32 halo conv then takes the stem
    # (7x7 stride 2 with a relu; 3x3 stride 1), at batch 7 and 300 with outputs poisoned, against
    # float64 within 1e-5 (whole nets: test_tf32x3_fp32_convs, ResNet-18 and ResNet-20 from uint8)
    _needs_mma()
    stem = TG._one("stem7", (23, 29, 3), lambda b, x: b.op("Relu", [b.conv(x, 24, 7, stride=2, pad=3)]))
    r3 = TG._one("stem3", (9, 11, 3), lambda b, x: b.conv(x, 16, 3))
    for g in (stem, r3):
        r = cuda_graph.GraphRunner(g, "fp32")
        assert "3 channels stored as 4" in r.program.plan(300).launches[0].label, g.name
        for n in (7, 300):
            against_float64(rng, r, g, n, 1e-5, g.name, fp16=False)


@pytest.mark.parametrize("rows", [2, 4, 8])
def test_depthwise_rows(rng, monkeypatch, rows):
    # CNNRT_CUDA_DW_ROWS=R (2 by default): the 8-channel depthwise conv with R output rows a thread, fp16
    # and fp32, at batch 1, 7 and 300 with outputs poisoned, against float64; MobileNetV2 (32x32)
    # against its SIMT plan
    monkeypatch.setenv("CNNRT_CUDA_DW_ROWS", str(rows))
    for case in ("dw8_s2_clip", "dw8_chain_dil_pads"):
        g = CASES[case]
        for precision in ("fp16", "fp32"):
            r = cuda_graph.GraphRunner(g, precision)
            assert any(" rows" in k for _, _, k in r.describe(7)), case
            for n in (1, 7, 300):
                against_float64(rng, r, g, n, 1e-2 if precision == "fp16" else 1e-5, case, fp16=precision == "fp16")
    if G.window_enabled():
        g = net("mobilenet_v2_32")
        net_against_simt(rng, g, cuda_graph.GraphRunner(g, "fp16"), 7, "rows")


def test_tf32_gemm_conv(rng, monkeypatch):
    # CNNRT_CUDA_TF32_GEMM (on by default): the 3xTF32 im2col conv for fp32; with the halo conv off every
    # MMA case with C % 4 == 0 takes it: at batch 1, 7 and 300 with outputs poisoned, against
    # float64 within issue 9's 1e-4; then ResNet-18 at 32 images against its SIMT-conv plan
    _needs_mma()
    g = TG.resnet18(0)
    x = rng.integers(0, 256, (32,) + g.input_shape, dtype=np.uint8)
    monkeypatch.setenv("CNNRT_CUDA_TF32_GEMM", "0")
    base = cuda_graph.GraphRunner(g, "fp32").probabilities(x)  # the 3xTF32 halo and the SIMT convs
    monkeypatch.setenv("CNNRT_CUDA_TF32_GEMM", "1")
    r = cuda_graph.GraphRunner(g, "fp32")
    assert sum("3xTF32 tc" in k for _, _, k in r.describe(32)) >= 4
    poison(r)
    check_fp32(r.probabilities(x), base, "resnet18 fp32, 3xTF32 im2col convs against the SIMT ones")
    monkeypatch.setenv("CNNRT_CUDA_TF32X3", "0")
    assert _cases_on_kernel(rng, "fp32", "3xTF32 tc", 1e-4) >= 5
