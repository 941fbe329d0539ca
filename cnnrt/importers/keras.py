"""Keras models -> cnnrt Graph. Needs the extra `cnnrt[tensorflow]` (Keras 3, imported lazily).

Sequential and Functional models (nested ones are inlined), and `.keras`/`.h5` files read with
`keras.saving.load_model(safe_mode=True)` (no Lambda code, nothing unpickled). Keras computes in
NHWC like the engine, so tensors keep their layout; only the kernels move: Conv2D (KH, KW, I/g, O)
-> (O, KH, KW, I/g), DepthwiseConv2D (KH, KW, C, M) -> (C*M, KH, KW, 1) with group C, Dense
(I, O) -> (O, I). SAME padding becomes explicit pads with TensorFlow's rule (the odd pixel after);
average pools never count the pads. BatchNormalization becomes the IR's op and the passes fold
it into the convolution before it. A Rescaling layer that reads the model's input is folded into
the graph's preprocessing (see preprocess.py); anywhere else it is a Mul and an Add.

Each Keras layer is found by its exact class (a user's subclass of Conv2D may compute anything),
and every layer or setting that cannot be converted is collected, so one FormatError names them
all.
"""
from __future__ import annotations

import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

from ..errors import FormatError
from ..ir.graph import Graph, Node
from . import preprocess as pp

# layers that are the identity at inference
_IDENTITY = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
             "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity")


# what TensorFlow's import writes to stderr whatever TF_CPP_MIN_LOG_LEVEL says: abseil's notice
# before its logging is set up, and INFO lines logged then (such as "oneDNN custom operations are on")
_TF_STARTUP_NOISE = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written "
                               rb"to STDERR|I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] .*)$")


def _quiet_import_keras():
    """`import keras` with file descriptor 2 caught: TensorFlow's startup INFO lines are dropped,
    anything else it wrote is written back (all of it, if the import fails)."""
    import tempfile  # noqa: PLC0415

    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable file descriptor 2: nothing to keep quiet
        import keras  # noqa: PLC0415
        return keras
    ok = False
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import keras  # noqa: PLC0415
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().splitlines(keepends=True)
            kept = b"".join(ln for ln in lines if not (ok and _TF_STARTUP_NOISE.match(ln.rstrip(b"\r\n"))))
            if kept:
                sys.stderr.flush()
                os.write(2, kept)
    return keras


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported, or it has no effect
    if "keras" in sys.modules:
        return sys.modules["keras"]
    try:
        return _quiet_import_keras()
    except ImportError:
        return None


def _np(v) -> np.ndarray:
    """A Keras variable (or a plain number or list) as float32."""
    if hasattr(v, "numpy"):
        v = v.numpy()
    return np.asarray(v, dtype=np.float32)


def same_pads(n: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow SAME: output ceil(n/s); the odd padding pixel goes after."""
    eff = (k - 1) * d + 1
    total = max((-(-n // s) - 1) * s + eff - n, 0)
    return total // 2, total - total // 2


class _Unsupported(Exception):
    """One layer (or one setting of it) that has no conversion."""


class _Builder:
    """Collects nodes and constants with unique names."""

    def __init__(self):
        self.nodes: list[Node] = []
        self.params: dict[str, np.ndarray] = {}
        self.names: set[str] = set()
        self.rescalings: list[tuple[str, list[Node], np.ndarray, np.ndarray]] = []

    def unique(self, name: str) -> str:
        base, k = name, 1
        while name in self.names or name in self.params:
            name = f"{base}_{k}"
            k += 1
        self.names.add(name)
        return name

    def const(self, name: str, value) -> str:
        name = self.unique(name)
        self.params[name] = np.ascontiguousarray(value, dtype=np.float32)
        return name

    def node(self, op: str, name: str, inputs: list[str], **attrs) -> str:
        name = self.unique(name)
        self.nodes.append(Node(op, name, inputs, [name], attrs))
        return name


# ---------------------------------------------------------------- activations

def _fn_name(fn) -> str:
    if fn is None:
        return "linear"
    if isinstance(fn, str):
        return fn
    return getattr(fn, "__name__", type(fn).__name__)


def _activation(b: _Builder, fn, x: str, name: str) -> str:
    """Append the nodes of a Keras activation function (by its name) after tensor x."""
    act = _fn_name(fn)
    if act == "linear":
        return x
    if act == "relu":
        return b.node("Relu", f"{name}.relu", [x])
    if act == "relu6":
        return b.node("Clip", f"{name}.relu6", [x], min=0.0, max=6.0)
    if act == "sigmoid":
        return b.node("Sigmoid", f"{name}.sigmoid", [x])
    if act == "hard_sigmoid":  # Keras 3: relu6(x + 3) / 6
        return b.node("HardSigmoid", f"{name}.hard_sigmoid", [x], alpha=1.0 / 6.0, beta=0.5)
    if act in ("hard_silu", "hard_swish"):
        return b.node("HardSwish", f"{name}.hard_swish", [x])
    if act in ("silu", "swish"):
        s = b.node("Sigmoid", f"{name}.sigmoid", [x])
        return b.node("Mul", f"{name}.swish", [x, s])
    if act == "tanh":
        return b.node("Tanh", f"{name}.tanh", [x])
    if act == "gelu":  # keras.activations.gelu(x, approximate=False)
        return b.node("Gelu", f"{name}.gelu", [x], approximate="none")
    if act == "softmax":
        return b.node("Softmax", f"{name}.softmax", [x], axis=-1)
    if act == "log_softmax":
        return b.node("LogSoftmax", f"{name}.log_softmax", [x], axis=-1)
    if act == "elu":
        return b.node("Elu", f"{name}.elu", [x], alpha=1.0)
    if act == "softplus":
        return b.node("Softplus", f"{name}.softplus", [x])
    if act == "exponential":
        return b.node("Exp", f"{name}.exp", [x])
    if act == "leaky_relu":  # keras.activations.leaky_relu's default slope
        return b.node("LeakyRelu", f"{name}.leaky_relu", [x], alpha=0.2)
    raise _Unsupported(f"activation {act!r}")


# ---------------------------------------------------------------- layers

def _channels_last(layer):
    fmt = getattr(layer, "data_format", "channels_last")
    if fmt not in (None, "channels_last"):
        raise _Unsupported(f"data_format {fmt!r} (only channels_last)")


def _spatial_in(shape, what):
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise _Unsupported(f"{what} needs an (N, H, W, C) input of known size, got {tuple(shape)}")
    return int(shape[1]), int(shape[2])


def _pads(layer, hw, kernel, strides, dilations=(1, 1)):
    padding = getattr(layer, "padding", "valid")
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        (pt, pb), (pl, pr) = (same_pads(hw[i], kernel[i], strides[i], dilations[i]) for i in range(2))
        return (pt, pl, pb, pr)
    raise _Unsupported(f"padding {padding!r}")


def _conv_common(layer, shape):
    _channels_last(layer)
    hw = _spatial_in(shape, type(layer).__name__)
    strides, dil = tuple(int(v) for v in layer.strides), tuple(int(v) for v in layer.dilation_rate)
    if max(strides) > 1 and max(dil) > 1:
        raise _Unsupported("strides and dilation both above 1 (Keras refuses these too)")
    return hw, strides, dil


def _bias(layer, b, name):
    return [b.const(f"{name}.bias", _np(layer.bias))] if getattr(layer, "use_bias", False) else []


def _conv2d(b, layer, ins, shapes, name):
    hw, strides, dil = _conv_common(layer, shapes[0])
    k = _np(layer.kernel)  # (KH, KW, I/g, O)
    attrs = dict(strides=strides, dilations=dil, pads=_pads(layer, hw, k.shape[:2], strides, dil),
                 group=int(getattr(layer, "groups", 1)))
    w = b.const(f"{name}.weight", k.transpose(3, 0, 1, 2))
    y = b.node("Conv", name, [ins[0], w, *_bias(layer, b, name)], **attrs)
    return _activation(b, layer.activation, y, name)


def _depthwise(b, layer, x, shape, name, kernel, bias=None):
    """(KH, KW, C, M) depthwise kernel -> Conv with group C; output channel c*M + m as in TF."""
    hw, strides, dil = _conv_common(layer, shape)
    kh, kw, c, m = kernel.shape
    w = b.const(f"{name}.weight", kernel.transpose(2, 3, 0, 1).reshape(c * m, kh, kw, 1))
    extra = [b.const(f"{name}.bias", bias)] if bias is not None else []
    return b.node("Conv", name, [x, w, *extra], strides=strides, dilations=dil,
                  pads=_pads(layer, hw, (kh, kw), strides, dil), group=c)


def _depthwise_conv2d(b, layer, ins, shapes, name):
    bias = _np(layer.bias) if layer.use_bias else None
    y = _depthwise(b, layer, ins[0], shapes[0], name, _np(layer.kernel), bias)
    return _activation(b, layer.activation, y, name)


def _separable_conv2d(b, layer, ins, shapes, name):
    d = _depthwise(b, layer, ins[0], shapes[0], f"{name}.depthwise", _np(layer.depthwise_kernel))
    pw = _np(layer.pointwise_kernel)  # (1, 1, C*M, O)
    w = b.const(f"{name}.pointwise.weight", pw.transpose(3, 0, 1, 2))
    y = b.node("Conv", name, [d, w, *_bias(layer, b, name)])
    return _activation(b, layer.activation, y, name)


def _dense(b, layer, ins, shapes, name):
    k = _np(layer.kernel)  # (I, O)
    if len(shapes[0]) == 2:
        w = b.const(f"{name}.weight", k.T)
        y = b.node("Dense", name, [ins[0], w, *_bias(layer, b, name)])
    else:  # Keras's Dense acts on the last axis of any rank
        y = b.node("MatMul", name, [ins[0], b.const(f"{name}.weight", k)])
        if layer.use_bias:
            y = b.node("Add", f"{name}.add_bias", [y, b.const(f"{name}.bias", _np(layer.bias))])
    return _activation(b, layer.activation, y, name)


def _batchnorm(b, layer, ins, shapes, name):
    axis = layer.axis
    if not isinstance(axis, int):
        axis = list(axis)
        if len(axis) != 1:
            raise _Unsupported(f"normalising over several axes {axis}")
        axis = axis[0]
    c = int(shapes[0][axis])
    gamma = _np(layer.gamma) if layer.scale else np.ones(c, np.float32)
    beta = _np(layer.beta) if layer.center else np.zeros(c, np.float32)
    stats = [b.const(f"{name}.{k}", v) for k, v in (("gamma", gamma), ("beta", beta),
                                                     ("mean", _np(layer.moving_mean)),
                                                     ("var", _np(layer.moving_variance)))]
    return b.node("BatchNormalization", name, [ins[0], *stats], epsilon=float(layer.epsilon), axis=int(axis))


def _pool(op):
    def convert(b, layer, ins, shapes, name):
        _channels_last(layer)
        hw = _spatial_in(shapes[0], type(layer).__name__)
        k = tuple(int(v) for v in layer.pool_size)
        s = tuple(int(v) for v in (layer.strides if layer.strides is not None else k))
        extra = {"count_include_pad": 0} if op == "AveragePool" else {}
        return b.node(op, name, [ins[0]], kernel_shape=k, strides=s, pads=_pads(layer, hw, k, s), **extra)
    return convert


def _global_pool(op):
    def convert(b, layer, ins, shapes, name):
        _channels_last(layer)
        _spatial_in(shapes[0], type(layer).__name__)
        y = b.node(op, name, [ins[0]])
        if not getattr(layer, "keepdims", False):
            y = b.node("Flatten", f"{name}.flatten", [y], axis=1)
        return y
    return convert


def _flatten(b, layer, ins, shapes, name):
    x, r = ins[0], len(shapes[0])
    if getattr(layer, "data_format", "channels_last") == "channels_first" and r > 2:
        x = b.node("Transpose", f"{name}.to_channels_last", [x], perm=(0, *range(2, r), 1))
    return b.node("Flatten", name, [x], axis=1)


def _reshape(b, layer, ins, shapes, name):
    return b.node("Reshape", name, [ins[0]], shape=(0, *(int(v) for v in layer.target_shape)))


def _permute(b, layer, ins, shapes, name):
    return b.node("Transpose", name, [ins[0]], perm=(0, *(int(v) for v in layer.dims)))


def _zero_padding(b, layer, ins, shapes, name):
    _channels_last(layer)
    (t, bo), (le, r) = layer.padding
    return b.node("Pad", name, [ins[0]], pads=(0, int(t), int(le), 0, 0, int(bo), int(r), 0))


def _cropping(b, layer, ins, shapes, name):
    _channels_last(layer)
    h, w = _spatial_in(shapes[0], "Cropping2D")
    (t, bo), (le, r) = layer.cropping
    return b.node("Slice", name, [ins[0]], starts=(int(t), int(le)), ends=(h - int(bo), w - int(r)), axes=(1, 2))


def _merge(op, average=False):
    def convert(b, layer, ins, shapes, name):
        if len(ins) < 2 and not average:
            raise _Unsupported("a merge of fewer than 2 tensors")
        y = ins[0]
        for i, t in enumerate(ins[1:]):
            y = b.node(op, name if i == len(ins) - 2 and not average else f"{name}.{i}", [y, t])
        if average:
            y = b.node("Mul", name, [y, b.const(f"{name}.inv_n", np.float32(1.0 / len(ins)))])
        return y
    return convert


def _subtract(b, layer, ins, shapes, name):
    if len(ins) != 2:
        raise _Unsupported(f"Subtract of {len(ins)} tensors")
    return b.node("Sub", name, ins)


def _concatenate(b, layer, ins, shapes, name):
    return b.node("Concat", name, ins, axis=int(layer.axis))


def _activation_layer(b, layer, ins, shapes, name):
    y = _activation(b, layer.activation, ins[0], name)
    return y if y != ins[0] else b.node("Identity", name, [y])


def _relu(b, layer, ins, shapes, name):
    mx, slope, th = layer.max_value, float(layer.negative_slope or 0.0), float(layer.threshold or 0.0)
    if th != 0:
        raise _Unsupported(f"threshold {th} (only 0)")
    if slope == 0:
        if mx is None:
            return b.node("Relu", name, [ins[0]])
        return b.node("Clip", name, [ins[0]], min=0.0, max=float(mx))
    y = b.node("LeakyRelu", name if mx is None else f"{name}.leaky", [ins[0]], alpha=slope)
    return y if mx is None else b.node("Clip", name, [y], max=float(mx))


def _leaky_relu(b, layer, ins, shapes, name):
    slope = getattr(layer, "negative_slope", None)
    slope = getattr(layer, "alpha", 0.3) if slope is None else slope
    return b.node("LeakyRelu", name, [ins[0]], alpha=float(slope))


def _softmax(b, layer, ins, shapes, name):
    axis = layer.axis
    if not isinstance(axis, int):
        axis = list(axis)
        if len(axis) != 1:
            raise _Unsupported(f"softmax over several axes {axis}")
        axis = axis[0]
    return b.node("Softmax", name, [ins[0]], axis=int(axis))


def _rescaling(b, layer, ins, shapes, name):
    scale = np.asarray(_np(layer.scale))
    offset = np.asarray(_np(layer.offset))
    first = len(b.nodes)
    y = b.node("Mul", name if not offset.any() else f"{name}.scale", [ins[0], b.const(f"{name}.scale_value", scale)])
    if offset.any():
        y = b.node("Add", name, [y, b.const(f"{name}.offset", offset)])
    b.rescalings.append((ins[0], b.nodes[first:], scale, offset))
    return y


LAYERS = {
    "Conv2D": _conv2d,
    "DepthwiseConv2D": _depthwise_conv2d,
    "SeparableConv2D": _separable_conv2d,
    "Dense": _dense,
    "BatchNormalization": _batchnorm,
    "MaxPooling2D": _pool("MaxPool"),
    "AveragePooling2D": _pool("AveragePool"),
    "GlobalAveragePooling2D": _global_pool("GlobalAveragePool"),
    "GlobalMaxPooling2D": _global_pool("GlobalMaxPool"),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Permute": _permute,
    "ZeroPadding2D": _zero_padding,
    "Cropping2D": _cropping,
    "Add": _merge("Add"),
    "Multiply": _merge("Mul"),
    "Maximum": _merge("Max"),
    "Minimum": _merge("Min"),
    "Average": _merge("Add", average=True),
    "Subtract": _subtract,
    "Concatenate": _concatenate,
    "Activation": _activation_layer,
    "ReLU": _relu,
    "LeakyReLU": _leaky_relu,
    "Softmax": _softmax,
    "Rescaling": _rescaling,
}


# ---------------------------------------------------------------- the model's graph

def _is_model(keras, obj) -> bool:
    return isinstance(obj, keras.Model)


def _check_graph_model(keras, m, where):
    from keras.src.models.functional import Functional  # noqa: PLC0415

    if not isinstance(m, (keras.Sequential, Functional)):
        raise FormatError(f"{where}: a subclassed Keras model ({type(m).__name__}) has no graph to read; "
                          f"build it with the Sequential or Functional API")
    try:
        ins, outs = list(m.inputs), list(m.outputs)
    except (AttributeError, ValueError):
        ins = outs = None
    if not ins or not outs:
        raise FormatError(f"{where}: the Keras model {m.name!r} is not built (give it a keras.Input or call it once)")
    return ins, outs


class _Converter:
    def __init__(self, keras, where):
        self.keras, self.where = keras, where
        self.b = _Builder()
        self.problems: list[str] = []

    def layer_class(self, layer) -> str | None:
        """The Keras layer class name if `layer` is exactly that Keras class, else None."""
        cls = type(layer).__name__
        own = getattr(self.keras.layers, cls, None)
        return cls if own is type(layer) else None

    def model(self, m, in_names: list[str], prefix: str) -> list[str]:
        """Emit a Sequential/Functional model whose inputs are the tensors `in_names`."""
        ins, outs = _check_graph_model(self.keras, m, self.where)
        if len(ins) != len(in_names):
            raise FormatError(f"{self.where}: model {m.name!r} takes {len(ins)} inputs, called with {len(in_names)}")
        env = {id(t): n for t, n in zip(ins, in_names)}
        # iterative depth-first walk from the outputs (deep nets would exceed Python's recursion)
        stack = [(t, False) for t in reversed(outs)]
        while stack:
            t, expanded = stack.pop()
            if id(t) in env:
                continue
            hist = getattr(t, "_keras_history", None)
            if hist is None:
                raise FormatError(f"{self.where}: a tensor of model {m.name!r} has no Keras history")
            op, node_index, _ = hist
            node = op._inbound_nodes[node_index]
            srcs = list(node.input_tensors)
            if not expanded:
                stack.append((t, True))
                stack.extend((u, False) for u in reversed(srcs) if id(u) not in env)
                continue
            missing = [u for u in srcs if id(u) not in env]
            if missing or not srcs:
                raise FormatError(f"{self.where}: layer {op.name!r} of model {m.name!r} reads a tensor that is "
                                  f"not computed from the model's inputs")
            outs_named = self.call(op, node, [env[id(u)] for u in srcs], [tuple(u.shape) for u in srcs], prefix)
            for u, n in zip(node.outputs, outs_named):
                env[id(u)] = n
        return [env[id(t)] for t in outs]

    def call(self, op, node, ins, shapes, prefix) -> list[str]:
        name = prefix + op.name
        n_out = len(node.outputs)
        if _is_model(self.keras, op):
            return self.model(op, ins, prefix=f"{name}/")
        cls = self.layer_class(op)
        if cls is None or not isinstance(op, self.keras.layers.Layer):
            kind = type(op).__name__ if isinstance(op, self.keras.layers.Layer) else f"keras operation {type(op).__name__}"
            self.problems.append(f"{name} ({kind}{', a custom class' if isinstance(op, self.keras.layers.Layer) else ''})")
            return [f"{name}:unconverted{i}" for i in range(n_out)]
        if cls in _IDENTITY:
            return ins[:1]
        if cls == "InputLayer":
            return ins[:1]
        fn = LAYERS.get(cls)
        if fn is None:
            self.problems.append(f"{name} ({cls})")
            return [f"{name}:unconverted{i}" for i in range(n_out)]
        try:
            return [fn(self.b, op, ins, shapes, name)]
        except _Unsupported as e:
            self.problems.append(f"{name} ({cls}: {e})")
            return [f"{name}:unconverted{i}" for i in range(n_out)]


def _fold_input_rescaling(b: _Builder, inputs: dict, outputs: list[str]):
    """(scale, offset) of a Rescaling that is the only reader of the model's only input, its nodes
    removed; None if there is none."""
    if len(inputs) != 1:
        return None
    x = next(iter(inputs))
    readers = [n for n in b.nodes if x in n.inputs]
    for src, nodes, scale, offset in b.rescalings:
        if src != x or len(readers) != 1 or readers[0] is not nodes[0] or x in outputs:
            continue
        c = inputs[x][-1]
        vals = []
        for v in (scale, offset):
            if v.size > 1 and (v.shape[-1] != c or v.size != c):
                break  # not one value per channel: stays a Mul/Add
            vals.append(v.reshape(-1))
        else:
            out = nodes[-1].outputs[0]
            for n in nodes:
                b.nodes.remove(n)
            for n in b.nodes:
                n.inputs = [x if t == out else t for t in n.inputs]
            outputs[:] = [x if t == out else t for t in outputs]
            return vals[0], vals[1]
    return None


def from_keras(km, name: str | None = None, input_scale: float | None = None, meta: dict | None = None, *,
               mean=None, std=None, optimize: bool = True) -> Graph:
    """A built Sequential or Functional Keras model as a Graph.

    input_scale, mean and std say how uint8 pixels become the Keras model's input
    (pixels * input_scale - mean) / std; input_scale defaults to 1/255, or to 1 when the model
    starts with a Rescaling layer (it then takes raw pixels).
    """
    keras = _keras()
    if keras is None:
        raise FormatError("reading Keras models needs Keras and TensorFlow: pip install 'cnnrt[tensorflow]'")
    mname = name or km.name
    where = f"Keras model {km.name!r}"
    ins, _ = _check_graph_model(keras, km, where)
    conv = _Converter(keras, where)
    inputs, in_names = {}, []
    for t in ins:
        hist = getattr(t, "_keras_history", None)
        iname = conv.b.unique(hist[0].name if hist is not None else "input")
        shape = tuple(t.shape)
        if any(d is None for d in shape[1:]):
            raise FormatError(f"{where}: input {iname!r} has shape {shape}; cnnrt needs every size but the batch "
                              f"known (build the model with e.g. keras.Input((224, 224, 3)))")
        inputs[iname] = (int(shape[0]) if shape[0] is not None else 1, *(int(d) for d in shape[1:]))
        in_names.append(iname)
    outputs = conv.model(km, in_names, prefix="")
    if conv.problems:
        raise FormatError(f"{where}: {len(conv.problems)} layer{'s' if len(conv.problems) > 1 else ''} cnnrt cannot "
                          f"convert: {'; '.join(conv.problems)}")
    b = conv.b
    affine = _fold_input_rescaling(b, inputs, outputs)
    # a graph output that is an input or repeated (Dropout, Identity) gets a node of its own
    seen = set()
    for i, t in enumerate(outputs):
        if t in inputs or t in seen:
            outputs[i] = b.node("Identity", f"output_{i}", [t])
        seen.add(outputs[i])
    if input_scale is None:
        input_scale = 1.0 if affine is not None else pp.DEFAULT_SCALE
    channels = inputs[in_names[0]][-1]
    pre = pp.compose(input_scale, mean, std, affine, channels=channels, where=where)
    info = {"importer": f"keras {keras.__version__}"}
    g = Graph(b.nodes, inputs, outputs, b.params, name=mname, meta={**info, **(meta or {})}, preprocess=pre)
    if optimize:
        from ..ir.passes import optimize as run_passes  # noqa: PLC0415
        g = run_passes(g)
    return g


def load_keras_file(path, **options) -> Graph:
    """A `.keras` or `.h5` file (safe mode: no Lambda layers, no unpickling) as a Graph."""
    path = Path(path)
    keras = _keras()
    if keras is None:
        raise FormatError(f"{path}: reading Keras files needs Keras and TensorFlow: pip install 'cnnrt[tensorflow]'")
    if not path.is_file():
        raise FormatError(f"{path}: no such Keras model file")
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        # (Keras itself says "File not found" here)
        raise FormatError(f"{path}: not a readable Keras model (a .keras file is a zip archive; this file is not one)")
    try:
        km = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - Keras raises anything from zipfile, h5py, json, its deserializer
        msg = " ".join(str(e).split())
        if len(msg) > 300:
            msg = msg[:300] + "..."
        raise FormatError(f"{path}: not a readable Keras model ({type(e).__name__}: {msg})") from None
    if not isinstance(km, keras.Model):
        raise FormatError(f"{path}: holds a {type(km).__name__}, not a Keras model")
    try:
        return from_keras(km, name=options.pop("name", None) or path.stem, **options)
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from None


__all__ = ["from_keras", "load_keras_file", "same_pads", "LAYERS"]
