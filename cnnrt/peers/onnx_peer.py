"""ONNX Runtime peer: an ONNX graph written from our model with onnx.helper, run on the CPU.

A layer chain (Deep MNIST and its kind) is written by `to_onnx` below, as it always was; any other
graph by cnnrt.exporters.onnx (NHWC in and out, NCHW inside), so ONNX Runtime runs every graph.

The graph takes the same NHWC float32 input as cnnrt and transposes it to NCHW itself (so the cost
is timed); conv kernels go to OIHW, and the first Dense after a conv gets its inputs permuted from
NHWC to NCHW flatten order. Building the graph needs `onnx`; running it needs only `onnxruntime`,
which is all a deployed program (and the cold-start figure) imports.
"""
from __future__ import annotations

import os

from . import Peer, batched, check_supported, dense_weight_nchw, pads

OPSET = 17


def to_onnx(model) -> bytes:
    """The serialized ONNX model computing `model` (a cnnrt Model). Input 'images' (N, H, W, C)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from ..model import Conv2D, Dense, MaxPool2D, Softmax

    model = check_supported(model)
    nodes, inits = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    h, w, c = model.input_shape
    cur = "x_nchw"
    nodes.append(helper.make_node("Transpose", ["images"], [cur], perm=[0, 3, 1, 2]))
    flat = False
    for i, (layer, shape) in enumerate(zip(model.layers, model.shapes)):
        out = f"t{i}_{layer.name}"
        if isinstance(layer, Conv2D):
            o, kh, kw, _ = layer.weight.shape
            (pt, pb), (pl, pr) = pads(shape[0], kh, layer.stride, layer.padding), pads(shape[1], kw, layer.stride, layer.padding)
            wn = init(f"{layer.name}.weight", layer.weight.transpose(0, 3, 1, 2))
            bn = init(f"{layer.name}.bias", layer.bias)
            nodes.append(helper.make_node("Conv", [cur, wn, bn], [out], kernel_shape=[kh, kw],
                                          strides=[layer.stride] * 2, pads=[pt, pl, pb, pr]))
        elif isinstance(layer, MaxPool2D):
            k, s = layer.size, layer.stride
            (pt, pb), (pl, pr) = pads(shape[0], k, s, layer.padding), pads(shape[1], k, s, layer.padding)
            nodes.append(helper.make_node("MaxPool", [cur], [out], kernel_shape=[k, k], strides=[s, s],
                                          pads=[pt, pl, pb, pr]))
        elif isinstance(layer, Dense):
            if not flat and len(shape) != 1:
                nodes.append(helper.make_node("Flatten", [cur], [f"{out}_flat"], axis=1))
                cur = f"{out}_flat"
            flat = True
            wn = init(f"{layer.name}.weight", dense_weight_nchw(layer.weight, shape))
            bn = init(f"{layer.name}.bias", layer.bias)
            nodes.append(helper.make_node("Gemm", [cur, wn, bn], [out], transB=1))
        elif isinstance(layer, Softmax):
            nodes.append(helper.make_node("Softmax", [cur], [out], axis=-1))
        cur = out
        if getattr(layer, "activation", "none") == "relu":
            nodes.append(helper.make_node("Relu", [cur], [f"{out}_relu"]))
            cur = f"{out}_relu"
    nodes.append(helper.make_node("Identity", [cur], ["probabilities"]))
    graph = helper.make_graph(
        nodes, model.name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", h, w, c])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", model.num_classes])],
        inits)
    om = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cnnrt")
    om.ir_version = 8  # readable by every ONNX Runtime that supports opset 17
    return om.SerializeToString()


class OnnxRuntime(Peer):
    name = "onnxruntime"
    label = "ONNX Runtime CPU"
    modules = ("onnx", "onnxruntime")
    distributions = ("onnxruntime",)
    import_statement = "import onnxruntime"

    def _session(self, source):
        import onnxruntime as ort

        return ort.InferenceSession(source, providers=["CPUExecutionProvider"])

    chain_only = False

    def _infer(self, sess):
        name = sess.get_inputs()[0].name
        return batched(lambda xb: sess.run(None, {name: xb})[0])

    @staticmethod
    def serialized(model) -> bytes:
        """The ONNX bytes for a Model or a Graph (chains as before, other graphs by the exporter)."""
        from ..ir.chain import match
        from ..ir.graph import Graph

        if isinstance(model, Graph) and match(model) is None:
            from ..exporters.onnx import to_onnx as graph_to_onnx
            return graph_to_onnx(model).SerializeToString()
        return to_onnx(model)

    def prepare(self, model):
        return self._infer(self._session(self.serialized(model)))

    def export(self, model, bundle: str, workdir: str) -> str:
        path = os.path.join(workdir, f"{model.name}.onnx")
        with open(path, "wb") as f:
            f.write(self.serialized(model))
        return path

    def load(self, artifact: str):
        return self._infer(self._session(artifact))
