"""from_onnx on hand-built models: what exporters write (shape chains, NHWC-flatten dense, opset
variants, a batch fixed to 1), checked against ONNX Runtime on fresh inputs; and every bad input
a clear FormatError naming the file."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cnnrt.errors import FormatError  # noqa: E402
from cnnrt.importers.onnx import from_onnx  # noqa: E402
from cnnrt.ir import run_reference  # noqa: E402


def _run(graph, feeds):
    """Run an imported graph on cnnrt's NumPy backend in float32 (its generic graph runner, which
    any graph that is not a classic layer chain gets)."""
    from cnnrt.backends.numpy_graph import GraphRunner

    return GraphRunner(graph, "fp32").run(feeds)


def _model(nodes, inputs, outputs, inits=(), opset=17, name="g"):
    g = helper.make_graph(nodes, name, inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    if any(not o.type.tensor_type.HasField("shape") for o in m.graph.output):  # let ONNX fill in the output shapes
        try:
            inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(m).graph.output}
        except onnx.shape_inference.InferenceError:
            return m
        for o in m.graph.output:
            o.CopyFrom(inferred[o.name])
    return m


def _vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def _init(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def _ort(m, feeds):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _cnnrt(g, feeds):
    """Feeds in ONNX layout in, outputs in ONNX layout out (through the importer's recorded perms)."""
    meta = g.meta["onnx"]
    res = _run(g, {k: v.transpose(meta["input_perm"][k]) for k, v in feeds.items()})
    return [res[t].transpose(np.argsort(meta["output_perm"][t])) for t in g.outputs]


def _close(a, b, tol=1e-5):
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= tol * max(np.abs(b).max(), 1e-6), np.abs(a - b).max()


# ---------------------------------------------------------------- what exporters write

def _conv_flatten_gemm(batch_dim, flatten_by_shape_chain, rng):
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
    b = rng.standard_normal(4).astype(np.float32)
    fc = rng.standard_normal((5, 4 * 6 * 6)).astype(np.float32) * 0.1
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"], name="relu")]
    inits = [_init("w", w), _init("b", b), _init("fc", fc), _init("fcb", rng.standard_normal(5).astype(np.float32))]
    if flatten_by_shape_chain:  # torch.flatten as the TorchScript exporter writes x.view(x.size(0), -1)
        nodes += [helper.make_node("Shape", ["r"], ["s"], name="shape"),
                  helper.make_node("Constant", [], ["zero"], name="c0", value=_init("z", np.array(0, np.int64))),
                  helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
                  helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"], name="unsq"),
                  helper.make_node("Concat", ["n1", "minus1"], ["tgt"], name="cat", axis=0),
                  helper.make_node("Reshape", ["r", "tgt"], ["f"], name="reshape")]
        inits += [_init("ax0", np.array([0], np.int64)), _init("minus1", np.array([-1], np.int64))]
    else:
        nodes.append(helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1))
    nodes.append(helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1))
    return _model(nodes, [_vi("x", [batch_dim, 3, 8, 8])], [_vi("y", [batch_dim, 5])], inits)


@pytest.mark.parametrize("chain", [False, True], ids=["Flatten", "Shape-Gather-Concat-Reshape"])
def test_nhwc_flatten_into_gemm_permutes_weights_not_data(chain, rng):
    m = _conv_flatten_gemm("N", chain, rng)
    g = from_onnx(m)
    ops = [n.op for n in g.nodes]
    assert ops == ["Conv", "Relu", "Flatten", "Dense"], ops  # shape chain folded, no Transpose at run time
    assert g.batched and g.inputs["x"] == (1, 8, 8, 3)
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)  # batch 3 through a graph stored with batch 1
    _close(_cnnrt(g, {"x": x})[0], _ort(m, {"x": x})[0])
    assert g.meta["onnx"]["folded"].get("Shape") == (1 if chain else None)


def test_batch_fixed_to_one_by_the_exporter_is_the_batch_axis(rng):
    m = _conv_flatten_gemm(1, True, rng)
    g = from_onnx(m)
    assert g.batched and g.inputs["x"][0] == 1
    reshape_targets = [n.attrs["shape"] for n in g.nodes if n.op == "Reshape"]
    assert all(t[0] == 0 for t in reshape_targets)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    ours = _cnnrt(g, {"x": x})[0]
    ref = np.concatenate([_ort(m, {"x": x[i:i + 1]})[0] for i in range(4)])
    _close(ours, ref)


def test_softmax_before_opset_13_flattens_from_its_axis(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    for opset, axis in ((11, 1), (11, 2), (13, 1)):
        m = _model([helper.make_node("Softmax", ["x"], ["y"], axis=axis)], [_vi("x", [2, 3, 4, 5])],
                   [_vi("y", [2, 3, 4, 5])], opset=opset)
        _close(_cnnrt(from_onnx(m), {"x": x})[0], _ort(m, {"x": x})[0])


def test_channel_shuffle_and_reductions_stay_nhwc(rng):
    """ShuffleNet's channel shuffle and a mean over H, W: done in NHWC, one Transpose (of the shuffle)."""
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["a"]),
             helper.make_node("Transpose", ["a"], ["b"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["b", "s2"], ["c"]),
             helper.make_node("Conv", ["c", "w"], ["d"], kernel_shape=[1, 1]),
             helper.make_node("ReduceMean", ["d", "axes"], ["y"], keepdims=0)]
    inits = [_init("s1", np.array([1, 2, 4, 5, 6], np.int64)), _init("s2", np.array([1, 8, 5, 6], np.int64)),
             _init("w", rng.standard_normal((3, 8, 1, 1)).astype(np.float32)), _init("axes", np.array([2, 3], np.int64))]
    m = _model(nodes, [_vi("x", [1, 8, 5, 6])], [_vi("y", [1, 3])], inits, opset=18)
    g = from_onnx(m)
    assert [n.op for n in g.nodes].count("Transpose") == 1
    x = rng.standard_normal((1, 8, 5, 6)).astype(np.float32)
    _close(_cnnrt(g, {"x": x})[0], _ort(m, {"x": x})[0])


def test_opset_variants_of_clip_pad_split_slice_squeeze(rng):
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32) * 4
    for opset in (9, 11, 13, 18):
        if opset < 11:
            nodes = [helper.make_node("Clip", ["x"], ["a"], min=-1.0, max=2.0),
                     helper.make_node("Pad", ["a"], ["b"], pads=[0, 0, 1, 2, 0, 0, 2, 1], value=0.5),
                     helper.make_node("Split", ["b"], ["c", "d"], axis=1, split=[1, 3]),
                     helper.make_node("Slice", ["d"], ["e"], starts=[1, 0], ends=[100, -1], axes=[2, 3]),
                     helper.make_node("Squeeze", ["c"], ["f"], axes=[1])]
            inits = []
        else:
            nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["a"]),
                     helper.make_node("Pad", ["a", "pads", "val"], ["b"]),
                     helper.make_node("Split", ["b", "split"] if opset >= 13 else ["b"], ["c", "d"], axis=1,
                                      **({} if opset >= 13 else {"split": [1, 3]})),
                     helper.make_node("Slice", ["d", "st", "en", "ax"], ["e"]),
                     helper.make_node("Squeeze", ["c", "sq"] if opset >= 13 else ["c"], ["f"],
                                      **({} if opset >= 13 else {"axes": [1]}))]
            inits = [_init("lo", np.float32(-1)), _init("hi", np.float32(2)),
                     _init("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)), _init("val", np.float32(0.5)),
                     _init("split", np.array([1, 3], np.int64)), _init("st", np.array([1, 0], np.int64)),
                     _init("en", np.array([100, -1], np.int64)), _init("ax", np.array([2, 3], np.int64)),
                     _init("sq", np.array([1], np.int64))]
        m = _model(nodes, [_vi("x", [1, 4, 6, 6])], [_vi("e", None), _vi("f", None)], inits, opset=opset)
        ours, ref = _cnnrt(from_onnx(m), {"x": x}), _ort(m, {"x": x})
        for a, b in zip(ours, ref):
            _close(a, b)


def test_gemm_alpha_beta_transposes_fold_into_dense(rng):
    a = rng.standard_normal((3, 6)).astype(np.float32)
    bm = rng.standard_normal((6, 4)).astype(np.float32)
    c = rng.standard_normal((1, 4)).astype(np.float32)
    m = _model([helper.make_node("Gemm", ["a", "bT", "c"], ["y"], alpha=0.5, beta=2.0, transB=1)],
               [_vi("a", [3, 6])], [_vi("y", [3, 4])], [_init("bT", bm.T.copy()), _init("c", c)])
    g = from_onnx(m)
    assert [n.op for n in g.nodes] == ["Dense"]
    _close(_cnnrt(g, {"a": a})[0], _ort(m, {"a": a})[0])


def test_auto_pad_same_and_ceil_mode_pools(rng):
    x = rng.standard_normal((1, 3, 9, 10)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], auto_pad="SAME_LOWER", strides=[2, 2]),
             helper.make_node("MaxPool", ["x"], ["b"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
             helper.make_node("AveragePool", ["x"], ["c"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1,
                              pads=[1, 0, 0, 1], count_include_pad=1)]
    m = _model(nodes, [_vi("x", [1, 3, 9, 10])], [_vi("a", None), _vi("b", None), _vi("c", None)], [_init("w", w)])
    for o, r in zip(_cnnrt(from_onnx(m), {"x": x}), _ort(m, {"x": x})):
        _close(o, r)


# ---------------------------------------------------------------- bad input

def test_every_unsupported_op_is_listed_at_once_with_its_node(tmp_path):
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["a"], name="up1"),
             helper.make_node("Relu", ["a"], ["b"], name="ok"),
             helper.make_node("NonZero", ["b"], ["c"], name="nz"),
             helper.make_node("FusedConv", ["x"], ["d"], name="fused", domain="com.microsoft")]
    m = _model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("c", None), _vi("d", None)],
               [_init("scales", np.array([1, 1, 2, 2], np.float32))])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    p = tmp_path / "bad_ops.onnx"
    onnx.save(m, p)
    with pytest.raises(FormatError) as e:
        from_onnx(p)
    msg = str(e.value)
    assert str(p) in msg and "unsupported ONNX ops" in msg
    for part in ("up1 (Resize)", "nz (NonZero)", "fused (com.microsoft.FusedConv"):
        assert part in msg


def test_malformed_and_missing_files(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"\x08\x07this is not a protobuf\xff\xff\xff")
    with pytest.raises(FormatError, match=r"junk\.onnx: not a readable ONNX model"):
        from_onnx(p)
    with pytest.raises(FormatError, match=r"nowhere\.onnx: no such ONNX file"):
        from_onnx(tmp_path / "nowhere.onnx")


def test_dynamic_dimension_other_than_batch(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", ["N", 3, "H", 8])], [_vi("y", None)])
    p = tmp_path / "dyn.onnx"
    onnx.save(m, p)
    with pytest.raises(FormatError, match=r"dyn\.onnx: input 'x' has a dynamic dimension 2 \('H'\)"):
        from_onnx(p)


def test_shape_computed_at_run_time_is_refused(tmp_path):
    nodes = [helper.make_node("Cast", ["s"], ["si"], to=TensorProto.INT64, name="cast"),
             helper.make_node("Reshape", ["x", "si"], ["y"], name="reshape")]
    m = _model(nodes, [_vi("x", ["N", 6]), _vi("s", ["N", 2])], [_vi("y", None)])
    with pytest.raises(FormatError, match=r"'cast' \(Cast\): a cast of a run-time tensor to INT64 is not supported"):
        from_onnx(m)


@pytest.mark.parametrize("node,inp,why", [
    (helper.make_node("Pad", ["x", "p"], ["y"], name="pad", mode="reflect"), [1, 2, 4, 4], "pad mode 'reflect'"),
    (helper.make_node("Conv", ["x", "w1"], ["y"], name="conv1d"), [1, 2, 8], "1-D convolution is not supported"),
    (helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], auto_pad="SAME"), [1, 2, 4, 4],
     "auto_pad 'SAME' is not one of"),
    (helper.make_node("BatchNormalization", ["x", "s", "s", "s", "s"], ["y"], name="bn", training_mode=1),
     [1, 2, 4, 4], "training mode"),
])
def test_unsupported_attribute_values_name_file_and_node(node, inp, why, tmp_path):
    inits = [_init("p", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), _init("w1", np.ones((2, 2, 3), np.float32)),
             _init("s", np.ones(2, np.float32))]
    m = _model([node], [_vi("x", inp)], [_vi("y", None)], inits)
    p = tmp_path / "attr.onnx"
    onnx.save(m, p)
    with pytest.raises(FormatError) as e:
        from_onnx(p)
    assert str(p) in str(e.value) and f"'{node.name}' ({node.op_type})" in str(e.value) and why in str(e.value)


def test_opsets_out_of_range():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [1, 3])], [_vi("y", None)], opset=5)
    with pytest.raises(FormatError, match="opset 5 is older than 6"):
        from_onnx(m)
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    with pytest.raises(FormatError, match="is newer than"):
        from_onnx(m)


def test_constant_softmax_before_opset_13_keeps_its_semantics():
    """onnx.reference folds with opset-13 semantics; a constant Softmax at opset 11 must not be folded by it."""
    c = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 10
    m = _model([helper.make_node("Softmax", ["c"], ["s"], axis=1), helper.make_node("Add", ["x", "s"], ["y"])],
               [_vi("x", [2, 3, 4])], [_vi("y", [2, 3, 4])], [_init("c", c)], opset=11)
    x = np.zeros((2, 3, 4), np.float32)
    _close(_cnnrt(from_onnx(m), {"x": x})[0], _ort(m, {"x": x})[0])
