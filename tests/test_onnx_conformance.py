"""ONNX's own conformance tests (onnx.backend.test) run through cnnrt: from_onnx, then cnnrt runs it.

Selected: the node tests of every op cnnrt's IR covers (INCLUDE), the real-model tests of the
`onnx` wheel (light AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet,
VGG-19, ZFNet-512: weights as ConstantOfShape nodes, outputs stored in the wheel), and the
PyTorch-exported op models and simple models of the wheel. Skipped: only what is out of scope
(SKIP, each with its reason). CUDA-device variants are dropped (this backend is the CPU one).

How the harness feeds cnnrt:
- rank-4 float inputs enter NHWC: feeds are transposed by the importer's recorded input_perm and
  outputs transposed back by output_perm (graph.meta["onnx"]);
- integer inputs (shape, axes, pads, indices, starts...) and rank-0 inputs are bound as
  constants before import, as exporters write them: cnnrt computes on floating-point tensors
  and folds integer arithmetic at import;
- cnnrt computes in float32; an output is cast to the element type the model declares;
- a test whose outputs would all be computed at import by onnx.reference (nothing of cnnrt
  runs) fails rather than pass: such tests must be in SKIP.

`python benchmarks/onnx_conformance.py` runs this file and writes docs/onnx-conformance.{json,md}.
"""
from __future__ import annotations

import re
import unittest

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import onnx.backend.base  # noqa: E402
import onnx.backend.test  # noqa: E402

from cnnrt.errors import FormatError  # noqa: E402
from cnnrt.importers.onnx import from_onnx  # noqa: E402
from cnnrt.ir import run_reference  # noqa: E402


def _run(graph, feeds):
    """Run an imported graph on cnnrt's NumPy backend in float32 (its generic graph runner, which
    any graph that is not a classic layer chain gets)."""
    from cnnrt.backends.numpy_graph import GraphRunner

    return GraphRunner(graph, "fp32").run(feeds)


# ---------------------------------------------------------------- selection

# node tests: one pattern per op of the IR (names as onnx/backend/test/case/node writes them)
INCLUDE_NODE = [
    r"^test_(basic_)?conv_", r"^test_conv_with", r"^test_maxpool_", r"^test_averagepool_", r"^test_globalaveragepool",
    r"^test_globalmaxpool", r"^test_batchnorm_", r"^test_gemm_", r"^test_matmul_", r"^test_flatten_",
    r"^test_reshape_", r"^test_transpose_", r"^test_concat_", r"^test_(add|sub|mul|div)(_|$)", r"^test_relu",
    r"^test_leakyrelu", r"^test_clip", r"^test_sigmoid", r"^test_hardsigmoid", r"^test_hardswish", r"^test_tanh",
    r"^test_gelu", r"^test_softmax_", r"^test_logsoftmax_", r"^test_identity", r"^test_dropout", r"^test_constant_pad",
    r"^test_pad", r"^test_shape", r"^test_size", r"^test_gather_[0-9n]", r"^test_unsqueeze", r"^test_squeeze",
    r"^test_split_", r"^test_slice", r"^test_reduce_", r"^test_constant(_|$)", r"^test_constantofshape",
    r"^test_lrn", r"^test_prelu", r"^test_sum_", r"^test_mean_", r"^test_max_", r"^test_min_",
    r"^test_pow", r"^test_exp", r"^test_log(_|$)", r"^test_sqrt", r"^test_neg", r"^test_abs", r"^test_erf",
    r"^test_elu", r"^test_softplus", r"^test_reciprocal",
    # in the list above but out of scope in these variants (SKIP says why)
    r"^test_training_dropout", r"^test_(edge|reflect|wrap)_pad",
]

# out of scope: pattern -> reason (a test matching several takes the first)
SKIP = {
    # element types
    r"^(?!test_pow_types_float32_)\w*_(u?int(8|16|32|64)|bool|string|bfloat16|float8\w*|uint4|int4|float4\w*)"
    r"(_|$|expanded)":
        "integer, bool, string or 8/4-bit tensors at run time (cnnrt computes in floating point; integers are folded at import)",
    # dimensions
    r"^test_(averagepool|maxpool|globalaveragepool|globalmaxpool)_(1d|3d)": "1-D and 3-D pooling (2-D image models only)",
    r"^test_(conv|averagepool|maxpool)_.*(1d|3d)": "1-D and 3-D convolution and pooling",
    r"^test_(AvgPool|MaxPool|Conv)(1d|3d)": "1-D and 3-D convolution and pooling",
    # features
    r"^test_maxpool_with_argmax": "MaxPool's Indices output",
    r"^test_training_dropout": "Dropout in training mode (inference only)",
    r"^test_batchnorm_.*training": "BatchNormalization in training mode (inference only)",
    r"^test_(edge|reflect|wrap)_pad|^test_ReflectionPad2d|^test_ReplicationPad2d":
        "Pad modes other than constant",
    r"^test_identity_(sequence|opt)|^test_split_to_sequence|^test_sequence_": "sequence and optional types",
    r"^test_(ConvTranspose2d|operator_convtranspose)": "ConvTranspose is not in the IR",
    r"^test_(SELU|operator_selu)": "op not in the IR (Selu)",
    r"^test_Embedding": "integer tensors at run time (Embedding's indices are the model's input)",
    r"^test_(gradient_of|strnorm|shrink|sign_model|expand_)": "op not in the IR (Gradient, StringNormalizer, "
                                                              "Shrink, Sign, Expand)",
    r"^test_(clip|leakyrelu|prelu|elu)\w*_expanded": "the function expansion compares and selects on run-time tensors "
                                                     "(Less, Where: not in the IR)",
    r"^test_operator_(add_broadcast|add_size1_right_broadcast|add_size1_singleton_broadcast|addconstant)":
        "float64 test data outside float32's range (uninitialized memory: 1e-310, 1e198); cnnrt computes in float32",
    r"^test_operator_symbolic_override": "op not in the IR (InstanceNormalization)",
    r"^test_operator_repeat": "op not in the IR (Tile)",
    r"^test_operator_non_float_params": "integer tensors at run time",
    r"^test_operator_maxpool": "1-D and 3-D convolution and pooling",
    r"^test_operator_pad": "Pad modes other than constant",
    r"^test_constant_cpu|^test_constantofshape_": "no run-time input: the whole model is a constant",
}

_DEVICE = re.compile(r"_cuda$")


# ---------------------------------------------------------------- the backend

_FLOAT = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16}


class CnnrtRep(onnx.backend.base.BackendRep):
    def __init__(self, model):
        self.model = model
        inits = {t.name for t in model.graph.initializer}
        self.inputs = [vi for vi in model.graph.input if vi.name not in inits]
        self.graph = None if any(self._bind(vi, None) for vi in self.inputs) else from_onnx(model)

    @staticmethod
    def _bind(vi, value):
        """True for an input bound as a constant: integer/bool, or rank 0."""
        tt = vi.type.tensor_type
        if tt.elem_type not in _FLOAT:
            return True
        if value is not None:
            return np.ndim(value) == 0
        return tt.HasField("shape") and len(tt.shape.dim) == 0

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            inputs = [inputs[vi.name] for vi in self.inputs]
        feeds = dict(zip([vi.name for vi in self.inputs], inputs))
        graph = self.graph
        if graph is None:
            m = onnx.ModelProto()
            m.CopyFrom(self.model)
            bound = [vi.name for vi in self.inputs if self._bind(vi, feeds[vi.name])]
            for name in bound:
                m.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(feeds.pop(name)), name))
            keep = [vi for vi in m.graph.input if vi.name not in bound]
            del m.graph.input[:]
            m.graph.input.extend(keep)
            graph = from_onnx(m)
        meta = graph.meta["onnx"]
        if not graph.nodes and meta["folded_by_reference"]:
            raise AssertionError(f"every output was computed at import by onnx.reference "
                                 f"({', '.join(meta['folded_by_reference'])}): nothing of cnnrt ran")
        ir_feeds = {}
        for name, x in feeds.items():
            x = np.asarray(x)
            if x.dtype.kind == "f":
                x = x.astype(np.float32)
            ir_feeds[name] = x.transpose(meta["input_perm"][name])
        res = _run(graph, ir_feeds)
        outs = []
        for vi, name in zip(self.model.graph.output, graph.outputs):
            y = np.asarray(res[name]).transpose(np.argsort(meta["output_perm"][name]))
            want = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            outs.append(y.astype(want))
        return outs


class CnnrtBackend(onnx.backend.base.Backend):
    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        super().prepare(model, device, **kwargs)
        return CnnrtRep(model)

    @classmethod
    def supports_device(cls, device):
        return device == "CPU"

    @classmethod
    def run_node(cls, node, inputs, device="CPU", outputs_info=None, **kwargs):
        raise NotImplementedError("cnnrt runs whole models")


def _selected():
    bt = onnx.backend.test.BackendTest(CnnrtBackend, __name__)
    cases = bt.test_cases
    include = [re.compile(p) for p in INCLUDE_NODE]
    skip = [(re.compile(p), why) for p, why in SKIP.items()]
    out = {}
    for cname, case in cases.items():
        if cname not in ("OnnxBackendNodeModelTest", "OnnxBackendRealModelTest", "OnnxBackendPyTorchConvertedModelTest",
                         "OnnxBackendPyTorchOperatorModelTest", "OnnxBackendSimpleModelTest"):
            continue
        for attr in [a for a in dir(case) if a.startswith("test_")]:
            keep = not _DEVICE.search(attr) and (cname != "OnnxBackendNodeModelTest" or
                                                 any(p.search(attr) for p in include))
            if not keep:
                delattr(case, attr)
                continue
            for p, why in skip:
                if p.search(attr):
                    setattr(case, attr, unittest.skip(why)(getattr(case, attr)))
                    break
        out[cname] = case
    return out


@pytest.fixture(autouse=True)
def _onnx_home(tmp_path_factory, monkeypatch):
    # the real-model tests write their generated inputs under ONNX_HOME
    monkeypatch.setenv("ONNX_HOME", str(tmp_path_factory.getbasetemp() / "onnx_home"))


globals().update(_selected())

__all__ = ["CnnrtBackend", "FormatError"]
