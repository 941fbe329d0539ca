"""Real architectures (torchvision's, exported by PyTorch) through from_onnx, against ONNX Runtime.

Each zoo model gets its weights regenerated from a seed (cnnrt.testing.zoo), runs in cnnrt at
float32 on a fresh random batch of 2, and must give ONNX Runtime's logits within 1e-4 of the
largest |logit| and the same argmax for every image.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from cnnrt.errors import FormatError  # noqa: E402
from cnnrt.importers.onnx import from_onnx  # noqa: E402
from cnnrt.ir import run_reference  # noqa: E402
from cnnrt.testing import zoo  # noqa: E402

BATCH = 2


def _run(graph, feeds):
    """Run an imported graph on cnnrt's NumPy backend in float32 (its generic graph runner, which
    any graph that is not a classic layer chain gets)."""
    from cnnrt.backends.numpy_graph import GraphRunner

    return GraphRunner(graph, "fp32").run(feeds)


def _ort(model, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_model_matches_onnxruntime(name, rng):
    model = zoo.load(name, seed=0)
    g = from_onnx(model)
    info = zoo.info(name)
    assert g.batched and g.inputs["input"][0] == 1, "the symbolic batch dimension is the batch axis"
    n, c, h, w = info["input"]
    assert g.input_shape == (h, w, c)
    x = rng.standard_normal((BATCH, c, h, w)).astype(np.float32)
    perm = g.meta["onnx"]["input_perm"]["input"]
    assert perm == [0, 2, 3, 1]
    ours = _run(g, {"input": x.transpose(perm)})[g.outputs[0]]
    (ref,) = _ort(model, {"input": x})
    assert ours.shape == ref.shape == (BATCH, ref.shape[1])
    err = np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max()
    assert err < 1e-4, f"{name}: max |logit error| {err:.2e} of the largest |logit|"
    assert (ours.argmax(1) == ref.argmax(1)).all()
    # the layout is settled at import: no Transpose runs except where a model shuffles channels
    transposes = [nd for nd in g.nodes if nd.op == "Transpose"]
    assert len(transposes) == (16 if name.startswith("shufflenet") else 0)


def test_stripped_zoo_file_is_refused_with_its_name():
    with pytest.raises(FormatError, match=r"resnet20\.onnx: initializer '\S+' has dims \[\d+(, \d+)*\] but holds no values"):
        from_onnx(zoo.path("resnet20"))


def test_zoo_weights_are_reproducible_and_seeded():
    import onnx.numpy_helper as nh

    a = {t.name: nh.to_array(t) for t in zoo.load("lenet5", seed=0).graph.initializer}
    b = {t.name: nh.to_array(t) for t in zoo.load("lenet5", seed=0).graph.initializer}
    c = {t.name: nh.to_array(t) for t in zoo.load("lenet5", seed=1).graph.initializer}
    big = [k for k, v in a.items() if v.size > 16]
    assert big and all(np.array_equal(a[k], b[k]) for k in a)
    assert all(not np.array_equal(a[k], c[k]) for k in big)
