"""The graph IR: shape inference and its errors, the bundle v2 round trip, the chain bridge, passes.

Op semantics are checked against outside references elsewhere (ONNX's conformance tests, ONNX
Runtime, Keras, TensorFlow); here, the graph machinery around them.
"""
import json

import numpy as np
import pytest

from cnnrt.errors import FormatError
from cnnrt.formats import load_model, save_bundle
from cnnrt.ir import Graph, Node, run_reference
from cnnrt.ir.chain import as_chain, match, to_graph
from cnnrt.ir.passes import optimize


def small_resnet(rng, c=6):
    p = {
        "w1": rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.3,
        "w2": rng.standard_normal((c, 3, 3, c)).astype(np.float32) * 0.3,
        "b2": rng.standard_normal(c).astype(np.float32) * 0.1,
        "s": (rng.random(c) + 0.5).astype(np.float32), "bb": rng.standard_normal(c).astype(np.float32),
        "m": rng.standard_normal(c).astype(np.float32) * 0.1, "v": (rng.random(c) + 0.5).astype(np.float32),
        "wd": rng.standard_normal((5, c)).astype(np.float32), "bd": rng.standard_normal(5).astype(np.float32),
    }
    nodes = [
        Node("Conv", "c1", ["x", "w1"], ["y1"], {"pads": (1, 1, 1, 1)}),
        Node("BatchNormalization", "bn", ["y1", "s", "bb", "m", "v"], ["y2"]),
        Node("Relu", "r1", ["y2"], ["y3"]),
        Node("Conv", "c2", ["y3", "w2", "b2"], ["y4"], {"pads": (1, 1, 1, 1)}),
        Node("Add", "add", ["y4", "y3"], ["y5"]),
        Node("Relu", "r2", ["y5"], ["y6"]),
        Node("GlobalAveragePool", "gap", ["y6"], ["y7"]),
        Node("Flatten", "flat", ["y7"], ["y8"]),
        Node("Dense", "fc", ["y8", "wd", "bd"], ["logits"]),
        Node("Softmax", "sm", ["logits"], ["probs"]),
    ]
    return Graph(nodes, {"x": (1, 8, 8, 3)}, ["probs"], p, name="small_resnet")


def test_shapes_inferred(rng):
    g = small_resnet(rng)
    assert g.shapes["y4"] == (1, 8, 8, 6) and g.shapes["y7"] == (1, 1, 1, 6) and g.shapes["probs"] == (1, 5)
    assert g.input_shape == (8, 8, 3) and g.num_classes == 5
    assert g.infer_shapes({"x": (7, 10, 12, 3)})["y4"] == (7, 10, 12, 6)


def test_bad_graphs_are_clear_errors(rng):
    g = small_resnet(rng)
    with pytest.raises(FormatError, match=r"node 'c2' \(Conv\): input channels 6 do not match weights \(6, 3, 3, 5\)"):
        Graph(g.nodes, g.inputs, g.outputs, {**g.params, "w2": np.zeros((6, 3, 3, 5), np.float32)})
    with pytest.raises(FormatError, match="unsupported ops Frobnicate, Zap; nodes: f1 \\(Frobnicate\\), z \\(Zap\\)"):
        Graph([Node("Frobnicate", "f1", ["x"], ["y"]), Node("Zap", "z", ["y"], ["o"])], {"x": (1, 2)}, ["o"])
    with pytest.raises(FormatError, match="reads 'nope', which nothing produces"):
        Graph([Node("Relu", "r", ["nope"], ["o"])], {"x": (1, 2)}, ["o"])
    with pytest.raises(FormatError, match="cycle"):
        Graph([Node("Add", "a", ["x", "b"], ["a"]), Node("Relu", "r", ["a"], ["b"])], {"x": (1, 2)}, ["b"])
    with pytest.raises(FormatError, match="NaN or Inf"):
        Graph(g.nodes, g.inputs, g.outputs, {**g.params, "bd": np.full(5, np.nan, np.float32)})
    with pytest.raises(FormatError, match="unknown attributes \\['colour'\\]"):
        Graph([Node("Relu", "r", ["x"], ["o"], {"colour": 1})], {"x": (1, 2)}, ["o"])


def test_batchnorm_folds_without_changing_the_function(rng):
    g = small_resnet(rng)
    f = optimize(g)
    assert "BatchNormalization" not in [n.op for n in f.nodes] and f.meta["passes"]["fold_batchnorm"] == 1
    x = rng.standard_normal((3, 8, 8, 3))
    a, b = run_reference(g, {"x": x})["probs"], run_reference(f, {"x": x})["probs"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bundle_v2_round_trip(tmp_path, rng):
    g = small_resnet(rng)
    g.preprocess = {"scale": 0.5, "mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 3.0]}
    g.labels = list("abcde")
    g.meta = {"trained_with": "nothing"}
    save_bundle(g, tmp_path / "g.safetensors")
    h = load_model(tmp_path / "g.safetensors")
    assert [(n.op, n.inputs, n.outputs) for n in h.nodes] == [(n.op, n.inputs, n.outputs) for n in g.nodes]
    assert h.preprocess == g.preprocess and h.labels == g.labels and h.meta == g.meta and h.name == g.name
    x = rng.standard_normal((2, 8, 8, 3))
    np.testing.assert_array_equal(run_reference(g, {"x": x})["probs"], run_reference(h, {"x": x})["probs"])


def _rewrite(tmp_path, g, edit):
    from safetensors import safe_open
    from safetensors.numpy import save_file
    save_bundle(g, tmp_path / "ok.safetensors")
    with safe_open(str(tmp_path / "ok.safetensors"), "np") as f:
        desc, tensors = json.loads(f.metadata()["cnnrt"]), {k: f.get_tensor(k) for k in f.keys()}
    edit(desc, tensors)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"cnnrt": json.dumps(desc)})
    return tmp_path / "bad.safetensors"


@pytest.mark.parametrize("edit,message", [
    (lambda d, t: d["graph"].update(layout="NCHW"), "layout 'NCHW' is not supported"),
    (lambda d, t: d.update(format="other"), r'unknown format "other"'),
    (lambda d, t: d["preprocess"].update(scale="abc"), "preprocess scale must be a positive number, got 'abc'"),
    (lambda d, t: d["graph"]["nodes"][0]["attrs"].update(pads="2x2"), r"node 'c1' \(Conv\): .*pads"),
    (lambda d, t: t.pop("wd"), "tensor 'wd' is missing"),
    (lambda d, t: t.update(extra=np.zeros(2, np.float32)), r"tensors \['extra'\] are not used"),
    (lambda d, t: d["graph"]["inputs"][0].update(shape=[1, 8, -8, 3]), "shape must be positive integers"),
    (lambda d, t: d["graph"]["nodes"][3].update(op="Conv3D"), "unsupported ops Conv3D"),
    (lambda d, t: d.update(labels=["a"]), "1 labels for 5 classes"),
])
def test_bundle_v2_bad_descriptions(tmp_path, rng, edit, message):
    bad = _rewrite(tmp_path, small_resnet(rng), edit)
    with pytest.raises(FormatError, match=message) as e:
        load_model(bad)
    assert str(bad) in str(e.value)


def test_chain_bridge_round_trip(random_model, rng):
    g = to_graph(random_model)
    m = match(g)
    assert m is not None and [layer.kind for layer in m.layers] == [layer.kind for layer in random_model.layers]
    x = rng.random((4, 28, 28, 1))
    from cnnrt.backends import reference
    np.testing.assert_allclose(run_reference(g, {"images": x})["probabilities"], reference.forward(random_model, x),
                               rtol=1e-12, atol=1e-12)
    assert match(small_resnet(rng)) is None
    with pytest.raises(Exception, match="supports only layer-chain models"):
        as_chain(small_resnet(rng), "the test")


def test_numpy_backend_runs_any_graph(rng):
    from cnnrt import backends
    g = small_resnet(rng)
    r = backends.prepare(g, "numpy", "fp32")
    x = (rng.random((5, 8, 8, 3)) * 255).astype(np.uint8)
    want = run_reference(g, {"x": x.astype(np.float64) / 255})["probs"]
    np.testing.assert_allclose(r.probabilities(x), want, rtol=1e-4, atol=1e-6)
