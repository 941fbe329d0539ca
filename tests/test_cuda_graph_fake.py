"""cuda_graph.GraphRunner's own logic on the CPU, through a fake CuPy (cnnrt.testing.fake_cupy):
binding of arguments to device addresses, pinned staging, CUDA-graph capture and replay, chunks
over two lanes, the host fallback, the lock and the pattern registry. The kernels are emulated in
NumPy, so this checks the executor, not the CUDA code (tests/test_cuda_graph.py does on a GPU)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from cnnrt.ir.graph import run_reference
from cnnrt.testing import fake_cupy
from cnnrt.testing import graphs as TG


@pytest.fixture
def cuda(monkeypatch):
    fake_cupy.install(monkeypatch)
    from cnnrt.backends import cuda as cuda_backend

    return cuda_backend


scaled = TG.scaled  # every caller here passes uint8 images


def rel_err(out, ref):
    return np.abs(out - ref).max() / np.abs(ref).max()


def poison(r):
    """Every lane's arena filled with 0xFF (NaN in fp16 and fp32): what a run does not write shows."""
    for lane in r.lanes:
        if lane.arena is not None:
            lane.arena.fill(255)


def lenet_case(rng, seed: int, n: int, kind: str):
    """(graph, n fresh images as uint8 or scaled float32, the float64 reference's probabilities)."""
    g = TG.lenet5(seed)
    x = rng.integers(0, 256, (n,) + g.input_shape, dtype=np.uint8)
    ref = run_reference(g, {"images": scaled(g, x)})["probabilities"]
    return g, (scaled(g, x).astype(np.float32) if kind == "f32" else x), ref


@pytest.mark.parametrize("name", ["awkward_ops", "with_host_op", "awkward_convs"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_runner_on_the_fake(cuda, rng, name, precision):
    from cnnrt.backends.cuda_graph import GraphRunner

    g = TG.COVERAGE[name](1)
    r = cuda.prepare(g, precision)
    assert isinstance(r, GraphRunner)
    for n in (1, 5, 1):  # the second batch-1 call replays the captured graph with new data
        x = rng.integers(0, 256, (n,) + g.input_shape, dtype=np.uint8)
        poison(r)
        out = r.probabilities(x)
        ref = run_reference(g, {"images": scaled(g, x)})[g.outputs[0]].reshape(n, -1)
        assert np.isfinite(out).all()
        assert rel_err(out, ref) < (1e-5 if precision == "fp32" else 3e-2)
    graphs = sum(len(l.graphs) for l in r.lanes)
    assert graphs == (0 if name == "with_host_op" else 2)  # host steps: no capture


def test_chunks_lanes_and_threads(cuda, rng):
    from cnnrt.backends.cuda_graph import GraphRunner

    g = TG.lenet5(2)
    r = GraphRunner(g, "fp32", max_chunk=16)
    x = rng.integers(0, 256, (71,) + g.input_shape, dtype=np.uint8)  # 4 full chunks and a tail of 7
    out = r.probabilities(x)
    assert len(r.lanes) == 2
    ref = run_reference(g, {"images": scaled(g, x)})["probabilities"]
    assert rel_err(out, ref) < 1e-5
    results, errors = {}, []

    def work(i):
        try:
            results[i] = r.probabilities(x[i * 10:i * 10 + 3 + i])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        assert rel_err(results[i], ref[i * 10:i * 10 + 3 + i]) < 1e-5


def test_float_input_and_run(cuda, rng):
    g = TG.single_op_cases()["conv_mul_nc"]
    r = cuda.prepare(g, "fp32")
    x = rng.standard_normal((3,) + g.input_shape).astype(np.float32)
    out = r.run({"images": x})["y"]
    assert rel_err(out, run_reference(g, {"images": x.astype(np.float64)})["y"]) < 1e-5


def test_dense_large_batch_uses_cublas(cuda, rng):
    g = TG.single_op_cases()["dense"]
    r = cuda.prepare(g, "fp16")
    x = rng.standard_normal((50,) + g.input_shape).astype(np.float32)
    assert any("cuBLAS" in k for _, _, k in r.describe(50))
    out = r.run({"images": x})["y"]
    ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=True)["y"]
    assert rel_err(out, ref) < 1e-2


def test_deep_mnist_pattern_is_registered(cuda, monkeypatch):
    from cnnrt.backends import cuda_graph

    class Fused:
        def __init__(self, model, precision, **kw):
            self.model = model

    monkeypatch.setattr(cuda, "FusedRunner", Fused)
    r = cuda.prepare(TG.deep_mnist(0), "fp16")
    assert isinstance(r, Fused) and r.graph.name == "deep_mnist" and len(r.model.layers) == 7
    assert isinstance(cuda.prepare(TG.deep_mnist(0), "fp32"), cuda_graph.GraphRunner)


@pytest.mark.parametrize("case", ["mma_c3_s2_relu", "mma_c16_add_relu", "mma_pointwise_clip", "mma_chain"])
def test_tensor_core_convs_on_the_fake(cuda, rng, case, monkeypatch):
    # the runner binds the tensor-core conv's fp16 packed weights; CNNRT_CUDA_NO_MMA=1 falls back to SIMT
    from cnnrt.backends.cuda_graph import GraphRunner

    g = TG.mma_conv_cases()[case]
    x = rng.standard_normal((3,) + g.input_shape).astype(np.float32)
    ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=True)["y"]
    for env, want in ((None, True), ("1", False)):
        if env:
            monkeypatch.setenv("CNNRT_CUDA_NO_MMA", env)
        r = GraphRunner(g, "fp16")
        assert any("tensor-core" in k for _, _, k in r.describe(3)) == want
        out = r.run({"images": x})["y"]
        assert np.isfinite(out).all() and rel_err(out, ref) < 3e-3, case


def test_large_inputs_go_in_pieces(cuda, rng, monkeypatch):
    # a large pageable input runs as PIPELINE_PIECES chunks over the two lanes (the host copy of one
    # overlaps the GPU's work on the other); an explicit batch size is kept; results are unchanged
    from cnnrt.backends import cuda_graph
    from cnnrt.backends.cuda_graph import GraphRunner

    g = TG.lenet5(3)
    r = GraphRunner(g, "fp32")
    x = rng.integers(0, 256, (40,) + g.input_shape, dtype=np.uint8)
    ref = run_reference(g, {"images": scaled(g, x)})["probabilities"]
    out = r.probabilities(x)
    assert r.batch_size_used == 40 and len(r.lanes) == 1  # 31 KB: one chunk
    monkeypatch.setattr(cuda_graph, "PIPELINE_BYTES", 1000)
    out4 = r.probabilities(x)
    assert r.batch_size_used == 10 and len(r.lanes) == 2
    r.probabilities(x, batch_size=40)
    assert r.batch_size_used == 40
    for o in (out, out4):
        assert rel_err(o, ref) < 1e-5


@pytest.mark.parametrize("kind", ["u8", "f32"])
def test_large_inputs_copied_in_by_the_streams(cuda, rng, monkeypatch, kind):
    # a large input (DIRECT_BYTES and up) is copied in by each lane's stream from the caller's array,
    # its graphs are the compute alone, and the outputs gather in one pinned buffer: chunks of 7 over
    # two lanes (a tail of 5), the whole input in DIRECT_PIECES, and a second call replaying the
    # captured graphs all agree with the reference; CNNRT_CUDA_DIRECT=0 takes the staged path
    from cnnrt.backends import cuda_graph
    from cnnrt.backends.cuda_graph import GraphRunner

    g, x, ref = lenet_case(rng, 4, 40, kind)
    r = GraphRunner(g, "fp32")
    pageable = x
    x = cuda.pinned_empty(x.shape, x.dtype)  # only pinned inputs take this path
    x[...] = pageable
    monkeypatch.setattr(cuda_graph, "DIRECT_BYTES", 1000)
    monkeypatch.setattr(cuda_graph, "PIPELINE_BYTES", 1000)
    seen = []
    monkeypatch.setattr(GraphRunner, "_graph", lambda self, li, plan, copies=True, _f=GraphRunner._graph:
                        seen.append((li, plan.n, copies)) or _f(self, li, plan, copies))
    for bs in (7, None, 7):
        seen.clear()
        poison(r)
        out = r.probabilities(x, batch_size=bs)
        assert rel_err(out, ref) < 1e-5, bs
        want = [(i % 2, 7, False) for i in range(5)] + [(1, 5, False)] if bs else [(i % 2, 20, False) for i in range(2)]
        assert seen == want and r.batch_size_used == (bs or 20)
    assert sorted(k for l in r.lanes for k in l.graphs) == sorted(
        [(7, kind, False)] * 2 + [(20, kind, False)] * 2 + [(5, kind, False)])
    # not direct: staged into the runner's pinned buffer on host threads (graphs without copies), or
    # with CNNRT_CUDA_STAGE=0 through each lane's pinned buffer (graphs with the copies)
    for env, stage, arr, copies in (("0", "1", x, False), ("", "1", pageable, False), ("", "0", pageable, True),
                                    ("all", "1", pageable, False)):
        monkeypatch.setenv("CNNRT_CUDA_DIRECT", env)
        monkeypatch.setenv("CNNRT_CUDA_STAGE", stage)
        r._stager = None
        seen.clear()
        assert rel_err(r.probabilities(arr, batch_size=7), ref) < 1e-5
        assert {c for _, _, c in seen} == {copies}, (env, stage)
        assert (r._stager is not None) == (env != "all" and stage == "1"), (env, stage)


@pytest.mark.parametrize("kind", ["u8", "f32"])
def test_pageable_input_staged_in_pieces(cuda, rng, monkeypatch, kind):
    # a large pageable input: copied into the runner's pinned stage on host threads in pieces that
    # cut images in two, each piece's copy enqueued once it is there, in STAGE_CHUNKS chunks over
    # two lanes; a second, smaller call reuses the stage
    from cnnrt.backends import cuda_graph, cuda_staging
    from cnnrt.backends.cuda_graph import GraphRunner

    monkeypatch.setattr(cuda_graph, "DIRECT_BYTES", 1000)
    monkeypatch.setattr(cuda_staging, "PIECE_BYTES", 1000)
    monkeypatch.setenv("CNNRT_CUDA_STAGE_CHUNKS", "3")
    g, x, ref = lenet_case(rng, 5, 29, kind)
    r = GraphRunner(g, "fp32")
    poison(r)
    assert rel_err(r.probabilities(x), ref) < 1e-5
    assert r.batch_size_used == 10 and r._stager is not None and len(r.lanes) == 2
    size = r._stager.buffer.size
    assert rel_err(r.probabilities(x[:13]), ref[:13]) < 1e-5
    assert r._stager.buffer.size == size
    # an input larger than the stage's cap runs in windows of at most that many bytes
    monkeypatch.setattr(cuda_staging, "MAX_STAGE_BYTES", 7 * x[0].nbytes)
    r2 = GraphRunner(g, "fp32")
    assert rel_err(r2.probabilities(x), ref) < 1e-5
    assert r2._stager.buffer.size <= max(7 * x[0].nbytes, 1 << 12)


def test_every_tensor_core_tile_can_be_forced(cuda, rng, monkeypatch):
    # CNNRT_CUDA_MMA_TILES forces a tile even where the planner would not pick it (wider than the
    # output channels, a pipelined tile on the element gather); the plans stay right
    from cnnrt.backends import cuda_codegen as G
    from cnnrt.backends.cuda_graph import GraphRunner

    cases = TG.mma_conv_cases()
    for tile in G.MMA_TILES:
        monkeypatch.setenv("CNNRT_CUDA_MMA_TILES", tile)
        for case in ("mma_c3_s2_relu", "mma_wide_o130"):
            g = cases[case]
            r = GraphRunner(g, "fp16")
            assert any(tile in k for _, _, k in r.describe(5)), (tile, case)
            x = rng.standard_normal((5,) + g.input_shape).astype(np.float32)
            out = r.run({"images": x})["y"]
            ref = run_reference(g, {"images": x.astype(np.float64)}, fp16_storage=True)["y"]
            assert np.isfinite(out).all() and rel_err(out, ref) < 3e-3, (tile, case)


def test_cluster_splitk_on_the_fake_runner(cuda, rng, monkeypatch):
    # CNNRT_CUDA_CLUSTER_SPLITK (on by default) on the fake's sm_90: ResNet-20 at batch 1 binds and runs
    # its cluster split-K convs (one launch each, grid.z the cluster), captured and replayed
    from cnnrt.backends.cuda_graph import GraphRunner

    monkeypatch.setenv("CNNRT_CUDA_CLUSTER_SPLITK", "1")
    g = TG.resnet20(5)
    r = GraphRunner(g, "fp16")
    kinds = [k for _, _, k in r.describe(1)]
    assert sum("summed in a cluster" in k for k in kinds) >= 6, kinds
    for _ in range(2):  # the capture, then a replay on new data
        x = rng.integers(0, 256, (1,) + g.input_shape, dtype=np.uint8)
        out = r.probabilities(x)
        ref = run_reference(g, {"images": scaled(g, x)}, fp16_storage=True)[g.outputs[0]].reshape(1, -1)
        assert rel_err(out, ref) < 1e-2
