"""The CPU graph planner and its kernels against the float64 reference (cnnrt.ir.run_reference),
on fresh random inputs: every kernel and fused pattern, odd shapes, batch 1 and odd batches,
one and two threads, fp32 and fp16 storage."""
import numpy as np
import pytest

from cnnrt.backends import graph_kernels as K
from cnnrt.backends import native as N
from cnnrt.backends.numpy_graph import GraphRunner
from cnnrt.ir.graph import Graph, Node, run_reference
from cnnrt.testing import cpu_graphs as graphs
from cnnrt.testing.cpu_graphs import Builder


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(params=[False, True], ids=["numpy", "native"])
def native(request, monkeypatch):
    """The NumPy kernels alone, then with the compiled ones (skipped where none can be built)."""
    if request.param and N.lib() is None:
        pytest.skip(f"no compiled kernels: {N.why()}")
    monkeypatch.setattr(K, "NATIVE", request.param)
    return request.param


def expect(kernel, native):
    """The kernel a layer gets: the compiled one where it exists, with native on."""
    if not native:
        return kernel
    for a, b in (("numpy.conv.im2col", "native.conv.direct"), ("numpy.conv.pointwise", "native.conv.direct"), ("numpy.conv.winograd", "native.conv.winograd"),
                 ("numpy.conv.depthwise", "native.conv.depthwise"), ("numpy.maxpool", "native.maxpool"),
                 ("numpy.avgpool", "native.avgpool"), ("numpy.dense", "native.dense")):
        if kernel.startswith(a):
            if "winograd" in a:  # the compiled Winograd picks its own tile (test_compiled_winograd)
                return "native.conv.winograd" if K.NATIVE_WINOGRAD != "0" else "native.conv.direct"
            return b if K.DIRECT != "none" or "depthwise" in b or "pool" in b else kernel
    return kernel


def check(g, n, threads, rng, tol=1e-5, kernels=(), chunk=None):
    """Run g through the planner and the float64 reference; the named kernels must be in use."""
    x = rng.standard_normal((n, *g.input_shape)).astype(np.float32)
    ref = run_reference(g, {g.input_name: x.astype(np.float64)}, np.float64)
    r = GraphRunner(g, "fp32", threads=threads, chunk=chunk)
    used = {k for _, _, k in r.describe()}
    for k in kernels:
        assert any(u.startswith(k) for u in used), f"{k} not used: {sorted(used)}"
    if any(u.startswith("native.conv.winograd.f4x4") for u in used):
        # F(4x4)'s transforms (coefficients up to 8) round about 10 times more than direct
        # convolution: over 120 random two-conv blocks its worst was 1.0e-5 (F(2x2) 7e-7, direct
        # 2e-6); a wrong transform errs by O(1)
        tol = max(tol, 5e-5)
    out = r.run({g.input_name: x})
    for t in g.outputs:
        assert out[t].shape == ref[t].shape
        assert out[t].dtype == np.float32
        assert rel_err(out[t], ref[t]) < tol, (t, rel_err(out[t], ref[t]))
    r.close()
    return r


CONVS = {
    # name: (input HWC, conv kwargs, expected kernel)
    "pointwise": ((9, 7, 12), dict(o=10, k=1, pad=0), "numpy.conv.pointwise"),
    "pointwise-stride2": ((9, 7, 12), dict(o=6, k=1, stride=2, pad=0), "numpy.conv.im2col"),
    "3x3-stride2-asym": ((11, 10, 5), dict(o=7, k=3, stride=2, pad=(0, 1, 2, 1)), "numpy.conv.im2col"),
    "5x5-dilated": ((13, 12, 3), dict(o=9, k=5, dilation=2, pad=(3, 4, 4, 3)), "numpy.conv.im2col"),
    "1x3-rect": ((6, 9, 4), dict(o=5, k=(1, 3), pad=(0, 1, 0, 1)), "numpy.conv.im2col"),
    "7x7-stride2-rgb": ((21, 19, 3), dict(o=11, k=7, stride=2, pad=3), "numpy.conv.im2col"),
    "winograd-f4": ((16, 18, 9), dict(o=13, k=3), "numpy.conv.winograd.f4x4"),
    "winograd-f4-asym": ((17, 16, 8), dict(o=8, k=3, pad=(2, 0, 0, 2)), "numpy.conv.winograd.f4x4"),
    "winograd-f2": ((7, 7, 24), dict(o=10, k=3), "numpy.conv.winograd.f2x2"),
    "depthwise": ((10, 9, 13), dict(o=13, k=3, group=13), "numpy.conv.depthwise"),
    "depthwise-stride2": ((11, 12, 13), dict(o=13, k=3, stride=2, group=13, pad=(1, 1, 0, 0)), "numpy.conv.depthwise"),
    "depthwise-5x5-dilated": ((12, 12, 6), dict(o=6, k=5, group=6, dilation=2), "numpy.conv.depthwise"),
    "depthwise-3x3-dilated": ((12, 11, 20), dict(o=20, k=3, group=20, dilation=2), "numpy.conv.depthwise"),
    "depthwise-3x3-40": ((7, 9, 40), dict(o=40, k=3, group=40, stride=2, pad=(1, 0, 1, 1)), "numpy.conv.depthwise"),
    "grouped": ((8, 9, 12), dict(o=9, k=3, group=3), "numpy.conv.grouped"),
    "depthwise-multiplier": ((8, 7, 5), dict(o=10, k=3, group=5, stride=2), "numpy.conv.grouped"),
    "valid-no-pad": ((9, 9, 6), dict(o=4, k=3, pad=0), "numpy.conv.im2col"),
    "wide-64": ((6, 7, 10), dict(o=64, k=3, stride=2), "numpy.conv.im2col"),  # four vectors per channel block
    "odd-40": ((5, 5, 17), dict(o=40, k=1, pad=0), "numpy.conv.pointwise"),  # a partial block
    # the compiled direct kernel's two border paths: few channels gather a border pixel's kernel row,
    # many channels (64 and more) take the per-tap path where a block touches the padding
    # first layers: few channels, small windows, asymmetric padding, strides
    "tiny-3x3-rgb": ((10, 9, 3), dict(o=20, k=3, pad=(1, 2, 0, 1)), "numpy.conv.im2col"),
    "tiny-5x5-gray-stride2": ((13, 12, 1), dict(o=33, k=5, stride=2, pad=2), "numpy.conv.im2col"),
    "border-gather-7x7": ((9, 11, 48), dict(o=20, k=7, pad=(3, 2, 1, 3)), "numpy.conv.im2col"),
    "border-per-tap-72": ((7, 10, 72), dict(o=36, k=3, pad=(1, 2, 0, 1)), "numpy.conv.winograd.f2x2"),
}


@pytest.mark.parametrize("o", [8, 13, 40, 48, 64, 96])
@pytest.mark.parametrize("hwc,pad", [((9, 11, 20), 1), ((6, 5, 9), (2, 0, 0, 2)), ((8, 8, 64), 0), ((16, 13, 24), 1)])
@pytest.mark.parametrize("n,threads", [(3, 2), (1, 2), (1, 1), (1, 5)])
@pytest.mark.parametrize("tile", ["2", "1"])
def test_compiled_winograd(rng, o, hwc, pad, n, threads, tile, monkeypatch):
    """3x3 stride-1 convolutions on the compiled Winograd, F(2x2, 3x3) for all (tile "2") and its
    default tile (F(4x4) where it fits, tile "1"): odd output sizes (tiles
    overhanging the output in both directions), channels that fill no vector, 1-4 vectors of output
    channels a block, asymmetric and no padding, strips of tiles across tile rows and images, a
    residual add and a clip in the epilogue, one image split over two threads, and over five (more
    threads than tile rows: the channel blocks are split too); against float64."""
    lib = N.lib()
    if lib is None:
        pytest.skip(f"no compiled kernels: {N.why()}")
    monkeypatch.setattr(K, "NATIVE_WINOGRAD", tile)
    b = Builder(hwc, seed=int(rng.integers(1 << 30)))
    y = b.conv("images", o, 3, pad=pad, act="relu")
    z = b.conv(y, o, 3, pad=1)
    z = b.add(z, y, act="relu6")
    g = b.graph(z, "wino")
    conv = [nd for nd in g.nodes if nd.op == "Conv"][-1]
    ho, wo = b.shapes[conv.name][1:3]
    # tile "1": F(4x4) where its tiles overhang the output by at most 35%
    m = 4 if ho >= 4 and wo >= 4 and -(-ho // 4) * -(-wo // 4) * 16 <= 1.35 * ho * wo else 2
    want = "f2x2" if tile == "2" else f"f{m}x{m}"
    r = check(g, n, threads, rng, kernels=["native.conv.winograd." + want])
    labels = [k for _, op, k in r.describe() if op == "Add"]
    assert labels and labels[0].startswith("native.conv.winograd." + want) and "+add" in labels[0], labels
    for st in r.plan.steps:  # more threads than bands of tile rows: each band's channel blocks shared out
        if st.kind == "native.winograd" and n * st.rows < threads and st.nb > 1:
            assert any(q[5] - q[4] < st.nb for q in st.parts(n, threads)), st.parts(n, threads)


@pytest.mark.parametrize("vectors", [3, 6, 9])
@pytest.mark.parametrize("k,stride", [(1, 1), (3, 2)])
@pytest.mark.parametrize("n,threads", [(3, 2), (1, 2), (1, 1)])
def test_direct_conv_of_three_vector_blocks(rng, vectors, k, stride, n, threads):
    """Output channels a multiple of three vectors but not of four (MobileNetV2's expanding layers:
    96 and 144 with 16-float vectors) take the three-vector block, partial pixel blocks and the
    border included, and match float64. With CNNRT_DIRECT_G3=0 they took two-vector blocks."""
    from cnnrt.backends import graph_kernels as gk

    lib = N.lib()
    if lib is None:
        pytest.skip(f"no compiled kernels: {N.why()}")
    o = vectors * lib.cnnrt_vector_width()
    b = Builder((7, 9, 24 if k == 1 else 5), seed=int(rng.integers(1 << 30)))
    y = b.conv("images", o, k, stride=stride, pad=k // 2, act="relu6")
    r = check(b.graph(y, "g3"), n, threads, rng, kernels=["native.conv.direct"])
    st = r.plan.steps[0]
    assert gk.DIRECT_G3 and st.kind == "native.direct" and st.groups == (4 if vectors % 4 == 0 else 3), st.groups


@pytest.mark.parametrize("name", sorted(CONVS))
@pytest.mark.parametrize("n,threads", [(1, 1), (5, 2), (1, 2)])
def test_conv_kernels(rng, name, n, threads, native):
    shape, kw, kernel = CONVS[name]
    b = Builder(shape, seed=int(rng.integers(1 << 30)))
    y = b.conv("images", **kw)
    check(b.graph(y, name), n, threads, rng, kernels=[expect(kernel, native)])


@pytest.mark.parametrize("act", ["relu", "relu6", "hardswish", "leaky", "sigmoid"])
@pytest.mark.parametrize("kind", ["pointwise", "im2col", "winograd", "depthwise"])
def test_conv_epilogues_with_residual(rng, act, kind, native):
    """Conv + bias + activation + residual Add + activation: one step."""
    b = Builder((12, 12, 8), seed=int(rng.integers(1 << 30)))
    x = b.conv("images", 8, 1, pad=0)
    kw = {"pointwise": dict(k=1, pad=0), "im2col": dict(k=5), "winograd": dict(k=3),
          "depthwise": dict(k=3, group=8)}[kind]
    y = b.conv(x, 8, act=act, **kw)
    z = b.add(y, x, act=act)
    r = check(b.graph(z, "epi"), 3, 2, rng)
    labels = {k for _, op, k in r.describe() if op == "Add"}
    assert len(labels) == 1 and "+add" in labels.pop()


@pytest.mark.parametrize("kind,k,stride,pad,ceil,incl", [
    ("max", 3, 2, 1, 0, 0), ("max", 2, 2, 0, 1, 0), ("max", 3, 1, (0, 1, 2, 0), 0, 0),
    ("avg", 3, 2, 1, 0, 0), ("avg", 3, 2, 1, 0, 1), ("avg", 2, 2, 0, 1, 0), ("avg", 3, 2, (1, 0, 0, 1), 1, 1),
])
@pytest.mark.parametrize("n,threads", [(1, 1), (3, 2)])
def test_pools(rng, kind, k, stride, pad, ceil, incl, n, threads, native):
    b = Builder((11, 10, 6), seed=int(rng.integers(1 << 30)))
    if kind == "max":
        y = b.maxpool("images", k, stride, pad, ceil)
    else:
        y = b.avgpool("images", k, stride, pad, ceil, incl)
    check(b.graph(y, "pool"), n, threads, rng, kernels=[expect(f"numpy.{kind}pool", native)])


def test_dilated_maxpool(rng, native):
    g = Graph([Node("MaxPool", "p", ["images"], ["y"], {"kernel_shape": (3, 2), "strides": (1, 2),
                                                          "dilations": (2, 1), "pads": (1, 0, 2, 1)})],
              {"images": (1, 9, 8, 3)}, ["y"])
    check(g, 2, 1, rng, kernels=[expect("numpy.maxpool", native)])


@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
@pytest.mark.parametrize("n,threads", [(1, 1), (7, 2)])
def test_gap_head(rng, flatten, n, threads):
    b = Builder((5, 6, 11), seed=int(rng.integers(1 << 30)))
    x = b.conv("images", 9, 3)
    # with the compiled kernels: the pool in C, the Dense a step of its own (both in programs)
    compiled = K.NATIVE and K.DENSE_BLOCK and N.lib() is not None
    kernels = ["native.gap+flatten", "native.dense+bias"] if compiled else ["numpy.gap+flatten+dense"]
    check(b.graph(b.head(x, 7, flatten), "head"), n, threads, rng, kernels=kernels)


def test_gap_alone_and_dense_with_activation(rng):
    b = Builder((4, 4, 5), seed=int(rng.integers(1 << 30)))
    gp = b._add("GlobalAveragePool", ["images"], out_shape=(1, 1, 1, 5))
    gap = "native.gap" if K.NATIVE and N.lib() is not None else "numpy.gap"
    r = check(b.graph(gp, "gap"), 3, 1, rng, kernels=[gap])
    assert r.run({"images": np.ones((2, 4, 4, 5), np.float32)})[gp].shape == (2, 1, 1, 5)
    b = Builder((4, 4, 5), seed=int(rng.integers(1 << 30)))
    f = b._add("Flatten", ["images"], {"axis": 1}, out_shape=(1, 80))
    y = b.dense(f, 6, act="relu")
    y = b.dense(y, 3)
    dense = "native.dense" if K.NATIVE and K.DENSE_BLOCK and N.lib() is not None else "numpy.dense"
    check(b.graph(y, "mlp"), 4, 2, rng, kernels=[dense + "+bias+relu"])


def test_eltwise_and_softmax(rng, native):
    b = Builder((6, 5, 4), seed=int(rng.integers(1 << 30)))
    a = b.conv("images", 4, 3)
    c = b.conv("images", 4, 1, pad=0)
    s = b.add(a, c, act="relu")  # both operands are read twice: no fusion into a conv
    m = b.act(b._add("Mul", [s, b.param("scale", rng.standard_normal(4))], out_shape=b.shapes[s]), "leaky")
    t = b.act(b.act(a, "sigmoid"), "relu")  # a has other readers: a step of its own
    u = b._add("Add", [t, m], out_shape=b.shapes[s])
    f = b._add("Flatten", [u], {"axis": 1}, out_shape=(1, 120))
    d = b.dense(f, 5)
    sm = b._add("Softmax", [d], {"axis": -1}, out_shape=(1, 5))
    g = b.graph(sm, "elt")
    g.nodes.append(Node("LogSoftmax", "ls", [d], ["logsm"], {"axis": 1}))
    g.outputs.append("logsm")
    g.validate()
    check(g, 3, 2, rng, kernels=[expect("numpy.conv.pointwise", native) + "+bias+add+relu", "numpy.add", "numpy.mul+leakyrelu",
                                 "numpy.activation+sigmoid+relu", "numpy.softmax", "numpy.logsoftmax"])


def test_graph_that_mixes_the_batch_runs_whole(rng):
    """Softmax over the batch axis: not batch-local, so no chunks and no fused kernels."""
    b = Builder((4, 4, 3), seed=int(rng.integers(1 << 30)))
    y = b.conv("images", 5, 3, act="relu")
    sm = b._add("Softmax", [y], {"axis": 0}, out_shape=b.shapes[y])
    g = b.graph(sm, "mix")
    r = check(g, 6, 2, rng)
    assert not r.plan.batch_local


@pytest.mark.parametrize("name,size,n,threads", [
    ("resnet20", None, 1, 1), ("resnet20", None, 3, 2),
    ("mobilenet_v2_96", 32, 1, 2), ("mobilenet_v2_96", 32, 3, 1),
    ("resnet18", 32, 2, 2),
])
def test_zoo_nets_match_float64(rng, name, size, n, threads, native):
    """Whole nets with BatchNorm nodes (folded by the planner's passes): logits within 1e-4 of the
    float64 reference, relative to the largest logit."""
    kw = {"batch_norm": True}
    if size:
        kw["size"] = size
    g = graphs.build(name, seed=int(rng.integers(1 << 30)), **kw)
    assert any(nd.op == "BatchNormalization" for nd in g.nodes)
    r = check(g, n, threads, rng, tol=1e-4)
    assert "BatchNormalization" not in {op for _, op, _ in r.describe()}


def test_chunks_rows_and_threads_agree(rng, native, monkeypatch):
    from cnnrt.backends import numpy_graph

    monkeypatch.setattr(numpy_graph, "MIN_SPLIT_WORK", 0)  # every spatial step of one image split over threads
    g = graphs.resnet20(seed=int(rng.integers(1 << 30)))
    x = rng.random((7, 32, 32, 3), dtype=np.float32)
    outs = [GraphRunner(g, "fp32", threads=t, chunk=c).run({"images": x})["logits"]
            for t, c in ((1, None), (2, 2), (3, 1), (2, 64))]
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=0, atol=1e-5 * np.abs(outs[0]).max())
    one = GraphRunner(g, "fp32", threads=2).run({"images": x[3:4]})["logits"]  # rows split over threads
    np.testing.assert_allclose(one[0], outs[0][3], rtol=0, atol=1e-5 * np.abs(outs[0]).max())


def test_uint8_images_are_scaled_and_normalised(rng):
    g = graphs.resnet20(seed=int(rng.integers(1 << 30)))  # preprocess: scale, mean, std
    x = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    pp = g.preprocess
    xf = (x.astype(np.float64) * pp["scale"] - np.array(pp["mean"])) / np.array(pp["std"])
    ref = run_reference(g, {"images": xf})["logits"]
    out = GraphRunner(g, "fp32", threads=2).probabilities(x)
    assert out.shape == (5, 10)
    assert rel_err(out, ref) < 1e-4


def test_fp16_storage_matches_the_reference_pipeline(rng):
    g = graphs.resnet20(seed=int(rng.integers(1 << 30)))
    x = rng.random((4, 32, 32, 3), dtype=np.float32)
    ref16 = run_reference(g, {"images": x}, np.float64, fp16_storage=True)["logits"]
    ref64 = run_reference(g, {"images": x.astype(np.float64)}, np.float64)["logits"]
    out = GraphRunner(g, "fp16", threads=2).run({"images": x})["logits"]
    # every output is a float16 value (the last node's output is rounded, as the reference does)
    np.testing.assert_array_equal(out, out.astype(np.float16).astype(np.float32))
    # Through 20 layers the half-precision pipeline is chaotic at the level of its last bit: the
    # reference itself evaluated in float32 instead of float64 lands as far from it (2e-4 to 8e-4
    # of the largest logit, seen) as float64 without rounding does. So: within a few float16 steps.
    assert rel_err(out, ref16) < 3e-3
    assert rel_err(out, ref64) < 5e-3
    assert (out.argmax(1) == ref16.argmax(1)).mean() >= 0.75


def test_describe_names_every_node_and_its_fused_kernel(rng, monkeypatch):
    monkeypatch.setattr(K, "NATIVE", False)
    g = graphs.mobilenet_v2(seed=0, size=32)
    r = GraphRunner(g, "fp32", threads=1)
    d = r.describe()
    assert [name for name, _, _ in d] == [nd.name for nd in r.plan.graph.nodes] or \
        sorted(name for name, _, _ in d) == sorted(nd.name for nd in r.plan.graph.nodes)
    kinds = {k for _, _, k in d}
    assert "numpy.conv.depthwise+bias+clip" in kinds
    assert "numpy.conv.pointwise+bias+add" in kinds
    assert "numpy.gap+flatten+dense+bias" in kinds
    assert not any(k == "numpy.reference" for k in kinds)


def test_unfused_ops_fall_back_to_their_definition(rng):
    """An op without a kernel (Erf) runs through its NumPy definition and says so."""
    b = Builder((3, 3, 2), seed=int(rng.integers(1 << 30)))
    e = b._add("Erf", ["images"], out_shape=b.shapes["images"])
    r = check(b.graph(e, "erf"), 2, 1, rng)
    assert r.describe() == [(b.nodes[0].name, "Erf", "numpy.reference")]


@pytest.mark.parametrize("threads", [2, 5])
def test_one_image_split_over_rows_and_channel_blocks(rng, native, monkeypatch, threads):
    """One image, a layer of two output rows and 70 channels: rows and (compiled) channel blocks
    are shared out to the threads; the result is the reference's."""
    from cnnrt.backends import numpy_graph

    monkeypatch.setattr(numpy_graph, "MIN_SPLIT_WORK", 0)
    b = Builder((4, 9, 6), seed=int(rng.integers(1 << 30)))
    y = b.conv("images", 70, 3, stride=2, pad=(0, 1, 0, 1), act="relu")
    z = b.conv(y, 70, 1, pad=0)
    z = b.add(z, y, act="relu6")
    r = check(b.graph(z, "split"), 1, threads, rng)
    if native:
        st = r.plan.steps[0]
        assert st.kind == "native.direct" and len(st.parts(1, threads)) > st.rows


@pytest.mark.parametrize("threads,chunk", [(1, 8), (2, 5)])
def test_big_dense_runs_on_whole_chunks(rng, native, threads, chunk, monkeypatch):
    """A Dense step with big weights (Deep MNIST's fc1, 12.8 MB) gets the rows of a whole chunk: the
    steps before it run per sub-chunk of `chunk` images into those rows. Odd image counts leave a
    partial sub-chunk and a partial chunk; results match the float64 reference either way."""
    from cnnrt.backends import numpy_graph

    monkeypatch.setattr(numpy_graph, "DENSE_ROWS", 24)  # (256 by default: fewer images to check)
    g = graphs.deep_mnist(seed=int(rng.integers(1 << 30)))
    r = check(g, 1, 1, rng, tol=1e-4)  # one image: no sub-chunks
    assert r.split is not None and r.rows == max(r.chunk, numpy_graph.DENSE_ROWS)
    head, tail, boundary = r.split
    assert [type(st).__name__ for st in tail][0] == "DenseStep" and len(boundary) == 1
    built = []  # with the compiled kernels, a chunk's sub-chunks run as one program (else in Python)
    real = GraphRunner._head_program
    monkeypatch.setattr(GraphRunner, "_head_program", lambda self, *a: built.append(real(self, *a)) or built[-1])
    check(g, 2 * numpy_graph.DENSE_ROWS + 3 * chunk + 1, threads, rng, tol=1e-4, chunk=chunk)
    assert all((b is not None) == native for b in built) and (len(built) > 0 or not native)


def test_big_dense_split_keeps_head_outputs(rng):
    """A graph output computed before the big Dense step (here the pooled features) comes back whole
    from the sub-chunked head."""
    b = Builder((12, 12, 3), seed=int(rng.integers(1 << 30)))
    x = b.conv("images", 32, 3, act="relu")
    p = b.maxpool(x, 2, 2)
    f = b._add("Flatten", [p], {"axis": 1}, out_shape=(1, 6 * 6 * 32))
    y = b.dense(f, 300, act="relu")
    y = b.dense(y, 10, name="logits")
    g = Graph(b.nodes, {"images": b.shapes["images"]}, [y, p], b.params, name="two_outputs")
    r = check(g, 37, 2, rng, tol=1e-4, chunk=4)
    assert r.split is not None and p in r.split[2]


@pytest.mark.parametrize("n", [1, 3, 40])
def test_big_dense_skips_zero_inputs(rng, n, monkeypatch):
    """A big Dense step behind ReLU multiplies only the weight rows of inputs that are non-zero in
    some image (most are zero here, as after ReLU and pooling in a trained net): the same logits
    as the float64 reference, and the GEMM really ran on the non-zero rows alone."""
    from cnnrt.backends import cpu_kernels

    b = Builder((8, 8, 40), seed=int(rng.integers(1 << 30)))
    a = b.act("images", "relu")
    f = b._add("Flatten", [a], {"axis": 1}, out_shape=(1, 2560))
    y = b.dense(f, 128, name="logits")  # 2560 x 128 floats: 1.3 MB
    g = b.graph(y, "sparse_mlp")
    x = rng.standard_normal((n, 8, 8, 40)).astype(np.float32)
    x[..., 10:] = -np.abs(x[..., 10:])  # three quarters of the inputs are zero after ReLU
    ref = run_reference(g, {"images": x.astype(np.float64)}, np.float64)["logits"]
    seen = []
    real = cpu_kernels.np.take
    monkeypatch.setattr(cpu_kernels.np, "take", lambda a, idx, **k: seen.append(len(idx)) or real(a, idx, **k))
    monkeypatch.setattr(K.DenseStep, "TASK_IMAGES", 0)  # (a few images go to the C kernel: tested below)
    monkeypatch.setattr(K, "DENSE_BLOCK", False)  # (more, with the C kernels, too)
    r = GraphRunner(g, "fp32", threads=1)
    assert ("logits", "Dense", "numpy.dense.skip-zero-inputs+bias") in r.describe()
    out = r.run({"images": x})["logits"]
    assert rel_err(out, ref) < 1e-5
    nonzero = int((x.reshape(n, -1) > 0).any(axis=0).sum())  # at most 640: 10 channels, 64 positions
    assert nonzero <= 640 and set(seen) == {nonzero}


@pytest.mark.parametrize("n,threads", [(1, 1), (1, 2), (1, 3), (2, 1), (3, 2), (4, 1), (5, 1), (7, 1), (13, 2),
                                       (70, 3)])
@pytest.mark.parametrize("case", ["flatten_relu_softmax", "odd_columns_residual_logsoftmax"])
def test_dense_of_a_few_images_in_programs(rng, n, threads, case, monkeypatch):
    """Dense steps of one to four images run in the programs on the C kernel (dense_block: output
    columns split over the threads in whole strips of the packed weights, inputs that are exactly
    zero skipped: graphs refuse non-finite weights, so a skipped term is an exact zero): a Flatten
    read in place, column counts that are not a multiple of the vector width or of the strip, a
    residual Add and ReLU in the epilogue; then Softmax or LogSoftmax, also in C (softmax_rows).
    More images go to the same kernel from Python (row counts that are not a multiple of its 4-row
    groups) and Softmax to NumPy. Against float64, on fresh inputs."""
    _native_or_skip()
    blocks = []
    real = K.DenseStep._run_block
    monkeypatch.setattr(K.DenseStep, "_run_block", lambda self, *a: blocks.append(real(self, *a)) or blocks[-1])
    b = Builder((6, 5, 7), seed=int(rng.integers(1 << 30)))
    a = b.act("images", "relu")
    f = b._add("Flatten", [a], {"axis": 1}, out_shape=(1, 6 * 5 * 7))
    if case == "flatten_relu_softmax":
        y = b.dense(f, 64, act="relu")
        y = b.dense(y, 10)
        y = b._add("Softmax", [y], {"axis": -1}, name="logits", out_shape=(1, 10))
    else:
        h = b.dense(f, 37)
        y = b.dense(h, 37)
        y = b.add(y, h, act="relu")
        y = b.dense(y, 3)
        y = b._add("LogSoftmax", [y], {"axis": 1}, name="logits", out_shape=(1, 3))
    g = b.graph(y, case)
    x = rng.standard_normal((n, *g.input_shape)).astype(np.float32)
    ref = run_reference(g, {"images": x.astype(np.float64)}, np.float64)["logits"]
    r = GraphRunner(g, "fp32", threads=threads)
    assert not any(op == "Flatten" and "reference" in k for _, op, k in r.describe())  # read in place
    out = r.run({"images": x})["logits"]
    assert rel_err(out, ref) < 1e-5
    # (this thread's programs: more images than one over several threads run in chunks on the pool's)
    progs = getattr(r._local, "programs", {})
    kinds = [t.kind for p in progs.values() for sg in p[1] if sg[0] == "c" for t in sg[1]]
    if n <= K.DenseStep.TASK_IMAGES and (threads == 1 or n == 1):
        assert 7 in kinds and 8 in kinds  # the C kernels ran the Dense and Softmax steps
    elif n > K.DenseStep.TASK_IMAGES:
        assert 7 not in kinds and 8 not in kinds
        assert blocks and all(blocks)  # dense_block from Python, on every chunk
    r.close()


def _native_or_skip():
    if K.native_lib() is None:
        pytest.skip(f"no compiled kernels here: {N.why()}")


@pytest.mark.parametrize("name,size,threads", [("resnet20", None, 2), ("resnet20", None, 3),
                                                ("mobilenet_v2_96", 32, 2), ("resnet18", 32, 4)])
def test_programs_match_the_python_steps_and_float64(rng, name, size, threads):
    """One image through compiled programs (each run of compiled steps in one C call, its parts on
    the C threads): bit for bit what the same steps give when Python runs them part by part, and
    within 1e-4 of the float64 reference."""
    _native_or_skip()
    g = graphs.build(name, seed=int(rng.integers(1 << 30)), **({"size": size} if size else {}))
    x = rng.standard_normal((1, *g.input_shape)).astype(np.float32)
    ref = run_reference(g, {"images": x.astype(np.float64)}, np.float64)["logits"]
    r = GraphRunner(g, "fp32", threads=threads)
    assert r.programs
    out = r.run({"images": x})["logits"]
    segs = r._local.programs[(1, threads)][1]
    assert sum(sg[3] for sg in segs if sg[0] == "c") >= 5  # the convolutions ran in programs
    plain = GraphRunner(g, "fp32", threads=threads)
    plain.programs = False
    np.testing.assert_array_equal(out, plain.run({"images": x})["logits"])
    assert rel_err(out, ref) < 1e-4
    again = r.run({"images": x})["logits"]  # the cached program, same buffers
    np.testing.assert_array_equal(again, out)


def test_programs_from_many_python_threads(rng):
    """Several Python threads calling runners with different thread counts at once: programs run one
    at a time on the shared C threads, each caller gets its own image's answer."""
    import threading

    _native_or_skip()
    g = graphs.resnet20(seed=int(rng.integers(1 << 30)))
    xs = rng.standard_normal((8, 1, *g.input_shape)).astype(np.float32)
    runners = [GraphRunner(g, "fp32", threads=t) for t in (2, 3)]
    want = [runners[0].run({"images": x})["logits"] for x in xs]
    got, errors = {}, []

    def call(k):
        try:
            for rep in range(5):
                got[k, rep] = runners[k % 2].run({"images": xs[k]})["logits"]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=call, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in ts)
    for (k, rep), v in got.items():
        np.testing.assert_allclose(v, want[k], rtol=0, atol=1e-5 * np.abs(want[k]).max())


def test_programs_after_fork(rng):
    """A child forked after the C threads started has none of them: its first program starts its own."""
    import multiprocessing as mp

    _native_or_skip()
    g = graphs.resnet20(seed=int(rng.integers(1 << 30)))
    x = rng.standard_normal((1, *g.input_shape)).astype(np.float32)
    r = GraphRunner(g, "fp32", threads=2)
    want = r.run({"images": x})["logits"]  # the parent's C threads now exist
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_run, args=(g, x, q))
    p.start()
    got = q.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def _child_run(g, x, q):
    q.put(GraphRunner(g, "fp32", threads=2).run({"images": x})["logits"])


@pytest.mark.parametrize("threads", [1, 2])
def test_batches_stream_in_chunks_with_progress(rng, threads):
    """A batch goes through in even chunks of at most batch_size (the runner says how many it ran);
    a progress callback sees the chunks finish and changes nothing in the answer."""
    g = graphs.resnet20(seed=int(rng.integers(1 << 30)))
    x = rng.integers(0, 256, (23, 32, 32, 3), dtype=np.uint8)
    r = GraphRunner(g, "fp32", threads=threads)
    want = r.probabilities(x)
    assert r.rows == 16  # at most 16 images a chunk (numpy_graph.MAX_CHUNK): two of 12, on one thread or two
    assert r.batch_size_used == 12
    seen = []
    got = r.probabilities(x, batch_size=5, progress=seen.append)
    # at most 5 images per chunk: 5 chunks on one thread; on two, 6 (a multiple of the threads)
    chunks = 5 if threads == 1 else 6
    assert r.batch_size_used == -(-23 // chunks) and seen == sorted(seen) and seen[-1] == 23 and len(seen) == chunks
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    r.probabilities(x[:1], progress=seen.append)
    assert r.batch_size_used == 1 and seen[-1] == 1


@pytest.mark.parametrize("act", [None, "relu", "relu6", "hardswish", "leaky"])
@pytest.mark.parametrize("channels", [40, 32])
def test_depthwise_with_its_activation(rng, act, channels, native):
    """Depthwise 3x3 + bias + one activation (the compiled kernel keeps the usual ones in registers):
    full and partial channel blocks, borders, stride 2."""
    b = Builder((9, 10, channels), seed=int(rng.integers(1 << 30)))
    y = b.conv("images", channels, 3, group=channels, act=act)
    y = b.conv(y, channels, 3, stride=2, group=channels, act=act)
    check(b.graph(y, "dw"), 3, 2, rng, kernels=[expect("numpy.conv.depthwise", native)])


@pytest.mark.parametrize("channels", [20, 32])
def test_maxpool_2x2_stride_2_fast_path(rng, channels, native):
    """The common 2x2/2 max-pool (compiled: its own loop inside the map): odd map sizes (the last
    row and column dropped), channel counts with and without a partial vector."""
    b = Builder((9, 11, channels), seed=int(rng.integers(1 << 30)))
    y = b.maxpool("images", 2, 2)
    check(b.graph(y, "pool"), 3, 2, rng, kernels=[expect("numpy.maxpool", native)])
    check(b.graph(y, "pool"), 1, 1, rng, kernels=[expect("numpy.maxpool", native)])


@pytest.mark.parametrize("n,k,cols,skip", [(300, 700, 70, 1), (300, 700, 70, 0), (5, 3136, 129, 1), (1, 9, 3, 1)])
def test_dense_block_kernel_against_float64(rng, n, k, cols, skip):
    """The compiled Dense kernel called directly on ranges of rows and whole strips of columns:
    more 4-row groups than its lists' stack buffers hold (300 rows of 700 inputs), row counts and
    column counts that are no multiple of the group or the strip, inputs mostly exact zeros
    (skipped when asked), bias and ReLU in the epilogue; every output written (poisoned first)."""
    _native_or_skip()
    import ctypes

    lib = K.native_lib()
    x = rng.standard_normal((n, k)).astype(np.float32)
    x[rng.random((n, k)) < 0.8] = 0.0
    w = rng.standard_normal((k, cols)).astype(np.float32)
    b = rng.standard_normal(cols).astype(np.float32)
    step = K.DenseStep([], ["x"], "y", K.Epilogue([("act", K.ACTIVATIONS["Relu"]({}), "relu", "Relu", {})]), w.T, b)
    assert step.block and step.wp.ctypes.data % 64 == 0
    e = K.Epilogue.bind(step.epi_t, None, [x])
    y = np.full((n, cols), np.nan, np.float32)
    sw = step.strip
    for i0, i1 in ((0, n // 3), (n // 3, n)):  # two row ranges, two column ranges (whole strips)
        for c0, c1 in ((0, min(sw, cols)), (min(sw, cols), cols)):
            lib.dense_block(x.ctypes.data, step.geo.ctypes.data, step.wp.ctypes.data, y.ctypes.data, i0, i1, c0, c1,
                            skip, ctypes.byref(e))
    ref = np.maximum(x.astype(np.float64) @ w.astype(np.float64) + b, 0)
    assert np.isfinite(y).all()
    assert rel_err(y, ref) < 1e-5


def _split_graph(seed=0):
    """A channel split whose halves (views, not contiguous) feed compiled convs, one of them with
    the other half as its residual: ShuffleNet's pattern."""
    b = Builder((40, 38, 8), seed=seed)
    x = b.conv("images", 64, 3, act="relu")
    b.nodes.append(Node("Split", "split", [x], ["s1", "s2"], {"axis": 3, "split": (32, 32)}))
    b.shapes["s1"] = b.shapes["s2"] = b.shapes[x][:3] + (32,)
    y = b.conv("s2", 32, 3)
    z = b.add(y, "s1", act="relu")
    w = b.conv("s1", 32, 3, group=32, act="relu")  # the depthwise kernel on a view
    return b.graph(b._add("Concat", [z, w], {"axis": 3}, out_shape=b.shapes[z][:3] + (64,)), "split")


def test_a_copied_input_is_held_by_the_call_not_the_shared_cache(native):
    # the compiled conv copies a non-contiguous input (a split's view); the step's pointer cache is
    # shared by the threads that run it, so the copy must stay with the call that made it: another
    # thread's call may replace the cache entry while this one's kernel still reads the copy
    if not native:
        pytest.skip("the compiled kernels' argument handling")
    g = _split_graph()
    r = GraphRunner(g, "fp32", threads=1)
    steps = [st for st in r.plan.steps if getattr(st, "kind", "").startswith("native.") and hasattr(st, "_native_args")]
    assert steps
    for st in steps:
        whole = np.arange(40 * 38 * 64, dtype=np.float32).reshape(1, 40, 38, 64)
        v1, v2 = whole[..., 32:], (whole + 1)[..., 32:]  # views: not contiguous
        x1, xp1, _, keep1 = st._native_args([v1] * len(st.inputs))
        st._native_args([v2] * len(st.inputs))  # "another thread"'s call on the same step
        assert x1 is not v1 and np.array_equal(x1, v1) and xp1 == x1.ctypes.data
        assert not any(isinstance(c, tuple) and c and c[0] is x1 for c in st._pc.values())
    r.close()


def test_threads_on_split_views_agree_with_float64(rng, native):
    # two images on two threads, each chunk running the same steps at once on its own image, over
    # and over. (The race the test above pins down showed in ShuffleNet V2, test_zoo_onnx, in about
    # one run of 10 to 30; on this small graph its timing rarely lines up, so this is the plain
    # end-to-end check of split views on threads, not the race's detector.)
    g = _split_graph(int(rng.integers(1 << 30)))
    x = rng.standard_normal((2, *g.input_shape)).astype(np.float32)
    ref = run_reference(g, {g.input_name: x.astype(np.float64)}, np.float64)[g.outputs[0]]
    for _ in range(20):
        r = GraphRunner(g, "fp32", threads=2)
        for _ in range(3):
            out = r.run({g.input_name: x})[g.outputs[0]]
            assert rel_err(out, ref) < 1e-5
        r.close()
