"""Test graphs built with cnnrt.ir (random weights from a seed): the CUDA backend's zoo and
coverage nets. Each builder returns a Graph whose input is 'images' (1, H, W, C) and whose output
is 'probabilities' (softmax), unless it says otherwise.

The architectures follow their papers and torchvision (LeNet-5, ResNet-20 for CIFAR, ResNet-18,
MobileNetV2, MobileNetV3-small), in the engine's layout: NHWC, conv weights (O, KH, KW, I/group),
pads (top, left, bottom, right). BatchNormalization nodes stay in the graph (the backends fold
them); their statistics are random, as a trained net's are not the identity.
"""
from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class Builder:
    """Appends nodes and random parameters; tensor names are returned by every method."""

    def __init__(self, name: str, input_shape, rng: np.random.Generator, preprocess: dict | None = None):
        self.name, self.rng = name, rng
        self.nodes: list[Node] = []
        self.params: dict[str, np.ndarray] = {}
        self.input_shape = tuple(input_shape)
        self.preprocess = preprocess or {"scale": 1.0 / 255.0}
        self.count = 0
        self.channels = {"images": self.input_shape[-1]}

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def param(self, name: str, a: np.ndarray) -> str:
        self.params[name] = np.asarray(a, np.float32)
        return name

    def op(self, op: str, inputs, attrs=None, name=None, channels=None) -> str:
        name = name or self._name(op.lower())
        self.nodes.append(Node(op, name, list(inputs), [name], dict(attrs or {})))
        if channels is not None:
            self.channels[name] = channels
        elif inputs and inputs[0] in self.channels:
            self.channels[name] = self.channels[inputs[0]]
        return name

    def conv(self, x, o, k, stride=1, pad=None, dil=1, group=1, bias=True, gain=2.0) -> str:
        c = self.channels[x]
        kh, kw = (k, k) if isinstance(k, int) else k
        if pad is None:
            pad = ((kh - 1) * dil // 2, (kw - 1) * dil // 2, (kh - 1) * dil // 2, (kw - 1) * dil // 2)
        elif isinstance(pad, int):
            pad = (pad,) * 4
        name = self._name("conv")
        fan_in = kh * kw * c // group
        w = self.param(f"{name}.weight", self.rng.standard_normal((o, kh, kw, c // group)) * np.sqrt(gain / fan_in))
        ins = [x, w]
        if bias:
            ins.append(self.param(f"{name}.bias", self.rng.standard_normal(o) * 0.05))
        st = (stride, stride) if isinstance(stride, int) else tuple(stride)
        return self.op("Conv", ins, {"strides": st, "pads": tuple(pad), "dilations": (dil, dil), "group": group},
                       name=name, channels=o)

    def bn(self, x) -> str:
        c = self.channels[x]
        name = self._name("bn")
        r = self.rng
        ins = [x, self.param(f"{name}.scale", r.uniform(0.6, 1.4, c)), self.param(f"{name}.bias", r.normal(0, 0.1, c)),
               self.param(f"{name}.mean", r.normal(0, 0.1, c)), self.param(f"{name}.var", r.uniform(0.6, 1.4, c))]
        return self.op("BatchNormalization", ins, {"epsilon": 1e-5}, name=name)

    def act(self, x, kind: str) -> str:
        if kind == "relu":
            return self.op("Relu", [x])
        if kind == "relu6":
            return self.op("Clip", [x], {"min": 0.0, "max": 6.0})
        if kind == "hswish":
            return self.op("HardSwish", [x])
        if kind == "hsigmoid":
            return self.op("HardSigmoid", [x], {"alpha": 1.0 / 6.0, "beta": 0.5})
        if kind == "none":
            return x
        raise ValueError(kind)

    def conv_bn(self, x, o, k, stride=1, group=1, act="relu", pad=None, dil=1) -> str:
        return self.act(self.bn(self.conv(x, o, k, stride, pad=pad, group=group, dil=dil, bias=False)), act)

    def dense(self, x, o, k=None, gain=1.0) -> str:
        k = k or self.channels[x]
        name = self._name("fc")
        w = self.param(f"{name}.weight", self.rng.standard_normal((o, k)) * np.sqrt(gain / k))
        b = self.param(f"{name}.bias", self.rng.standard_normal(o) * 0.05)
        return self.op("Dense", [x, w, b], name=name, channels=o)

    def head(self, x, classes, hidden=(), hidden_act="relu") -> str:
        x = self.op("GlobalAveragePool", [x])
        x = self.op("Flatten", [x], {"axis": 1})
        for h in hidden:
            x = self.act(self.dense(x, h, gain=2.0), hidden_act)
        return self.dense(x, classes)

    def build(self, out: str, softmax: bool = True) -> Graph:
        if softmax:
            self.nodes.append(Node("Softmax", "softmax", [out], ["probabilities"], {"axis": -1}))
            out = "probabilities"
        return Graph(self.nodes, {"images": (1,) + self.input_shape}, [out], self.params, name=self.name,
                     preprocess=self.preprocess, meta={"source": "cnnrt.testing.graphs"})


def _rng(seed_or_rng) -> np.random.Generator:
    return seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)


def _imagenet(size):
    return {"scale": 1.0 / 255.0, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


# ------------------------------------------------------------------------------------ zoo

def lenet5(seed=0) -> Graph:
    """LeNet-5 as torchvision-era code writes it: 28x28x1, conv 5x5 (pad 2) 6, avg pool, conv 5x5 16,
    avg pool, dense 120, 84, 10."""
    b = Builder("lenet5", (28, 28, 1), _rng(seed))
    x = b.op("Relu", [b.conv("images", 6, 5, pad=2)])
    x = b.op("AveragePool", [x], {"kernel_shape": (2, 2), "strides": (2, 2)})
    x = b.op("Relu", [b.conv(x, 16, 5, pad=0)])
    x = b.op("AveragePool", [x], {"kernel_shape": (2, 2), "strides": (2, 2)})
    x = b.op("Flatten", [x], {"axis": 1}, channels=400)
    x = b.op("Relu", [b.dense(x, 120, gain=2.0)])
    x = b.op("Relu", [b.dense(x, 84, gain=2.0)])
    return b.build(b.dense(x, 10))


def _basic_block(b: Builder, x, o, stride):
    c = b.channels[x]
    y = b.conv_bn(x, o, 3, stride)
    y = b.conv_bn(y, o, 3, 1, act="none")
    sc = x if (stride == 1 and c == o) else b.conv_bn(x, o, 1, stride, act="none", pad=0)
    return b.op("Relu", [b.op("Add", [y, sc])])


def resnet20(seed=0, classes=10) -> Graph:
    """He et al.'s CIFAR ResNet-20: 3 stages of 3 basic blocks, 16/32/64 channels, 32x32x3 input."""
    b = Builder("resnet20", (32, 32, 3), _rng(seed),
                {"scale": 1 / 255.0, "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.243, 0.261]})
    x = b.conv_bn("images", 16, 3)
    for o, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            x = _basic_block(b, x, o, stride if i == 0 else 1)
    return b.build(b.head(x, classes))


def resnet18(seed=0, size=224, classes=1000) -> Graph:
    """torchvision's resnet18: 7x7/2 stem, 3x3/2 max pool, 4 stages of 2 basic blocks."""
    b = Builder("resnet18", (size, size, 3), _rng(seed), _imagenet(size))
    x = b.conv_bn("images", 64, 7, 2, pad=3)
    x = b.op("MaxPool", [x], {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)})
    for o, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for i in range(2):
            x = _basic_block(b, x, o, stride if i == 0 else 1)
    return b.build(b.head(x, classes))


def _div(v, d=8):
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


def mobilenet_v2(seed=0, size=96, classes=1000, width=1.0) -> Graph:
    """torchvision's mobilenet_v2: inverted residual blocks (expand 1x1, depthwise 3x3, project 1x1),
    ReLU6 as Clip(0, 6), residual Add where shapes allow, 1280-channel head."""
    b = Builder("mobilenet_v2", (size, size, 3), _rng(seed), _imagenet(size))
    x = b.conv_bn("images", _div(32 * width), 3, 2, act="relu6")
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        o = _div(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            cin = b.channels[x]
            hidden = cin * t
            y = b.conv_bn(x, hidden, 1, act="relu6", pad=0) if t != 1 else x
            y = b.conv_bn(y, hidden, 3, stride, group=hidden, act="relu6")
            y = b.conv_bn(y, o, 1, act="none", pad=0)
            x = b.op("Add", [x, y]) if (stride == 1 and cin == o) else y
    x = b.conv_bn(x, _div(1280 * max(1.0, width)), 1, act="relu6", pad=0)
    return b.build(b.head(x, classes))


def _se(b: Builder, x, squeeze):
    c = b.channels[x]
    s = b.op("GlobalAveragePool", [x])
    s = b.op("Relu", [b.conv(s, squeeze, 1, pad=0)])
    s = b.act(b.conv(s, c, 1, pad=0, gain=1.0), "hsigmoid")
    return b.op("Mul", [x, s])


def mobilenet_v3_small(seed=0, size=224, classes=1000) -> Graph:
    """torchvision's mobilenet_v3_small: bneck blocks with squeeze-and-excitation (HardSigmoid gate,
    a per-image per-channel Mul), ReLU and HardSwish, a 1024-wide HardSwish dense layer before the
    classifier."""
    b = Builder("mobilenet_v3_small", (size, size, 3), _rng(seed), _imagenet(size))
    x = b.conv_bn("images", 16, 3, 2, act="hswish")
    conf = [(3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1),
            (5, 96, 40, True, "hswish", 2), (5, 240, 40, True, "hswish", 1), (5, 240, 40, True, "hswish", 1),
            (5, 120, 48, True, "hswish", 1), (5, 144, 48, True, "hswish", 1), (5, 288, 96, True, "hswish", 2),
            (5, 576, 96, True, "hswish", 1), (5, 576, 96, True, "hswish", 1)]
    for k, exp, out, se, act, stride in conf:
        cin = b.channels[x]
        y = b.conv_bn(x, exp, 1, act=act, pad=0) if exp != cin else x
        y = b.conv_bn(y, exp, k, stride, group=exp, act=act)
        if se:
            y = _se(b, y, _div(exp // 4))
        y = b.conv_bn(y, out, 1, act="none", pad=0)
        x = b.op("Add", [x, y]) if (stride == 1 and cin == out) else y
    x = b.conv_bn(x, 576, 1, act="hswish", pad=0)
    return b.build(b.head(x, classes, hidden=(1024,), hidden_act="hswish"))


def deep_mnist(seed=0, scale=0.05) -> Graph:
    """The article's Deep MNIST net as a graph (the CUDA backend's fused Deep MNIST pattern)."""
    from ..ir.chain import to_graph
    from ..model import deep_mnist as build

    r = _rng(seed)
    shapes = {"conv1.weight": (32, 5, 5, 1), "conv1.bias": (32,), "conv2.weight": (64, 5, 5, 32), "conv2.bias": (64,),
              "fc1.weight": (1024, 3136), "fc1.bias": (1024,), "fc2.weight": (10, 1024), "fc2.bias": (10,)}
    return to_graph(build({k: (r.standard_normal(s) * scale).astype(np.float32) for k, s in shapes.items()},
                          name="deep_mnist"))


ZOO = {"deep_mnist": deep_mnist, "lenet5": lenet5, "resnet20": resnet20, "mobilenet_v2": mobilenet_v2,
       "resnet18": resnet18, "mobilenet_v3_small": mobilenet_v3_small}


# ------------------------------------------------------------------------------------ coverage nets

def awkward_convs(seed=0, size=(13, 11), c=5) -> Graph:
    """Convolutions of every kind the implicit GEMM must handle: 3 input channels, odd sizes,
    stride 2, dilation 2, asymmetric pads, groups, a depthwise multiplier of 2, 1x1 and 7x1."""
    b = Builder("awkward_convs", size + (3,), _rng(seed))
    x = b.op("Relu", [b.conv("images", 12, 3, stride=2, pad=(1, 0, 2, 1))])         # stride 2, asymmetric pads
    x = b.op("LeakyRelu", [b.conv(x, 10, 3, dil=2)], {"alpha": 0.1})                # dilation 2
    x = b.conv(x, 14, 3, group=2)                                                    # groups
    x = b.op("Sigmoid", [b.conv(x, 28, 3, group=14, stride=(2, 1))])                 # depthwise, multiplier 2
    y = b.conv(x, c, 1, pad=0)                                                        # pointwise, 5 channels
    y = b.op("Tanh", [b.conv(y, 9, (3, 1), pad=(1, 0, 1, 0))])
    z = b.op("Relu", [b.conv(x, 9, 5, pad=2, bias=False)])
    x = b.op("Add", [y, z])
    x = b.op("Mul", [x, b.param("scale", np.linspace(0.5, 1.5, 9))])
    return b.build(b.head(x, 7))


def awkward_ops(seed=0) -> Graph:
    """Pools with pads, ceil mode and both divisor rules, Concat, a channel shuffle (Reshape +
    Transpose), Slice, Pad, a reduction, an unfolded BatchNormalization after an Add, broadcasting
    binary ops, Gelu, HardSwish, a MatMul and a LogSoftmax."""
    b = Builder("awkward_ops", (15, 17, 4), _rng(seed), {"scale": 1 / 255.0, "mean": [0.5, 0.4, 0.3, 0.2],
                                                           "std": [0.2, 0.25, 0.3, 0.35]})
    a = b.op("Relu", [b.conv("images", 6, 3)])
    p1 = b.op("MaxPool", [a], {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 0), "ceil_mode": 1})
    p2 = b.op("AveragePool", [a], {"kernel_shape": (3, 2), "strides": (2, 2), "pads": (1, 0, 1, 1), "ceil_mode": 1,
                                   "count_include_pad": 1})
    p3 = b.op("AveragePool", [a], {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "ceil_mode": 1,
                                   "count_include_pad": 0})
    x = b.op("Concat", [p1, p2, p3], {"axis": 3}, channels=18)                       # (N, 8, 9, 18)
    n_h, n_w = 8, 9
    x = b.op("Reshape", [x], {"shape": (0, n_h, n_w, 3, 6)})
    x = b.op("Transpose", [x], {"perm": (0, 1, 2, 4, 3)})                             # channel shuffle
    x = b.op("Reshape", [x], {"shape": (0, n_h, n_w, 18)}, channels=18)
    x = b.op("Slice", [x], {"starts": (1, 0, 2), "ends": (8, 9, 18), "axes": (1, 2, 3), "steps": (1, 2, 1)},
             channels=16)                                                              # (N, 7, 5, 16)
    x = b.op("Pad", [x], {"pads": (0, 1, 0, 0, 0, 2, 1, 0), "value": 0.25})          # (N, 10, 6, 16)
    y = b.conv(x, 16, 3)
    x = b.op("Add", [x, y])
    x = b.bn(x)                                                                        # not foldable: after an Add
    x = b.op("Gelu", [x])
    s = b.op("ReduceMean", [x], {"axes": (1, 2), "keepdims": 1})                     # (N, 1, 1, 16)
    x = b.op("Sub", [x, s])
    x = b.op("HardSwish", [b.op("Div", [x, b.param("div", np.full((1, 1, 6, 1), 1.5))])])
    x = b.op("Max", [b.param("floor", np.float32(-0.2).reshape(1)), x])
    x = b.op("Flatten", [x], {"axis": 1}, channels=10 * 6 * 16)
    x = b.op("MatMul", [x, b.param("mm", b.rng.standard_normal((960, 12)) / np.sqrt(960))], channels=12)
    x = b.op("Tanh", [x])
    b.nodes.append(Node("LogSoftmax", "logsoftmax", [x], ["log_probabilities"], {"axis": 1}))
    return Graph(b.nodes, {"images": (1, 15, 17, 4)}, ["log_probabilities"], b.params, name="awkward_ops",
                 preprocess=b.preprocess)


def with_host_op(seed=0) -> Graph:
    """A graph with a node no GPU kernel covers (a MatMul of two activations): it runs on the host."""
    b = Builder("with_host_op", (6, 6, 2), _rng(seed))
    x = b.op("Relu", [b.conv("images", 4, 3)])
    f = b.op("Reshape", [x], {"shape": (0, 36, 4)})
    t = b.op("Transpose", [f], {"perm": (0, 2, 1)})
    m = b.op("MatMul", [t, f])                                                         # (N, 4, 4)
    m = b.op("Flatten", [m], {"axis": 1}, channels=16)
    return b.build(b.dense(m, 5))


COVERAGE = {"awkward_convs": awkward_convs, "awkward_ops": awkward_ops, "with_host_op": with_host_op}


# ------------------------------------------------------------------------------------ one op at a time

def logits(g: Graph) -> Graph:
    """g without its final Softmax: fp32 checks compare logits relative to their size. A random
    net's logits span hundreds (ResNet-18's reach 584), so where two classes nearly tie a tiny
    logit error moves the probabilities: on an H200 (2026-11-29) ResNet-18 fp32's logits were
    within 4.8e-5 of their size with either tf32 split, and that was 1.8e-4 of probability in a
    row at 0.41 against 0.59."""
    if not g.ends_in_softmax:
        return g
    h = g.copy()
    soft = next(n for n in h.nodes if n.op == "Softmax" and h.outputs[0] in n.outputs)
    h.nodes = [n for n in h.nodes if n is not soft]
    h.outputs = [soft.inputs[0]] + h.outputs[1:]
    h.name = g.name + "_logits"
    h.validate()
    return h


def scaled(g: Graph, x: np.ndarray) -> np.ndarray:
    """x as the graph's input in float64: uint8 images through the graph's preprocessing (scale,
    then mean and std where it has them), float inputs as they are: the references' input."""
    xf = x.astype(np.float64)
    if x.dtype == np.uint8:
        pp = g.preprocess
        xf = xf * pp["scale"]
        if pp.get("mean") is not None:
            xf = (xf - np.asarray(pp["mean"])) / np.asarray(pp["std"])
    return xf


def _one(name, shape, build, seed=0) -> Graph:
    """A graph of a few nodes on a float input 'images' (N, *shape) with output 'y'."""
    b = Builder(name, shape, _rng(seed))
    out = build(b, "images")
    b.nodes[-1].outputs = ["y"]
    return Graph(b.nodes, {"images": (1,) + tuple(shape)}, ["y"], b.params, name=name, preprocess={"scale": 1.0})


def single_op_cases() -> dict:
    """{case id: Graph}: every kernel family and fused pattern on awkward sizes (odd spatial sizes,
    channel counts that are not multiples of 8, stride 2, dilation, groups, asymmetric pads)."""
    c = {}

    def add(name, shape, fn):
        c[name] = _one(name, shape, fn)

    add("conv3x3", (7, 9, 5), lambda b, x: b.conv(x, 6, 3))
    add("conv3x3_s2_asym", (9, 8, 3), lambda b, x: b.conv(x, 7, 3, stride=2, pad=(0, 1, 2, 1)))
    add("conv_dilated", (11, 10, 4), lambda b, x: b.conv(x, 5, 3, dil=2, pad=(2, 1, 1, 2)))
    add("conv_s2_dilated", (12, 13, 6), lambda b, x: b.conv(x, 9, 3, stride=2, dil=3))
    add("conv_groups3", (6, 7, 6), lambda b, x: b.conv(x, 9, 3, group=3))
    add("conv_depthwise", (9, 7, 5), lambda b, x: b.conv(x, 5, 3, group=5))
    add("conv_depthwise_x2_s2", (10, 9, 5), lambda b, x: b.conv(x, 10, 5, stride=2, group=5))
    add("conv_1x1", (5, 6, 20), lambda b, x: b.conv(x, 17, 1, pad=0))
    add("conv_7x1_nobias", (9, 4, 3), lambda b, x: b.conv(x, 4, (7, 1), pad=(3, 0, 3, 0), bias=False))
    add("conv_wide", (6, 5, 70), lambda b, x: b.conv(x, 72, 3))
    add("conv_stem7x7", (23, 21, 3), lambda b, x: b.conv(x, 16, 7, stride=2, pad=3))
    add("conv_relu", (7, 7, 5), lambda b, x: b.op("Relu", [b.conv(x, 6, 3)]))
    add("conv_add_relu", (7, 6, 5), lambda b, x: b.op("Relu", [b.op("Add", [b.conv(x, 5, 3), x])]))
    add("conv_bn_clip", (8, 7, 3), lambda b, x: b.op("Clip", [b.bn(b.conv(x, 6, 3, bias=False))], {"min": 0.0, "max": 6.0}))
    add("conv_sub_swapped", (5, 5, 4), lambda b, x: b.op("Sub", [b.param("k", np.linspace(-1, 1, 3)), b.conv(x, 3, 3)]))
    add("conv_mul_nc", (6, 6, 4), lambda b, x: b.op(
        "Mul", [b.conv(x, 4, 3), b.op("Sigmoid", [b.op("GlobalAveragePool", [x])])]))
    # fp16 with C % 8 == 0: the 8-channels-a-thread depthwise and pool kernels (fp32 keeps the others)
    add("dw8_s2_clip", (9, 7, 16), lambda b, x: b.op("Clip", [b.conv(x, 16, 3, stride=2, group=16)],
                                                     {"min": 0.0, "max": 6.0}))
    add("dw8_chain_dil_pads", (11, 10, 24), lambda b, x: b.conv(b.op("Relu", [b.conv(x, 24, 5, dil=2, group=24)]), 24,
                                                                 (3, 2), pad=(2, 0, 1, 1), group=24))
    add("pool8_max_avg", (9, 11, 8), lambda b, x: b.op("AveragePool", [b.op("MaxPool", [x], {"kernel_shape": (3, 3),
                                                       "strides": (2, 2), "pads": (1, 1, 1, 1)})],
                                                       {"kernel_shape": (2, 3), "pads": (0, 1, 1, 0), "strides": (1, 2),
                                                        "count_include_pad": 0, "ceil_mode": 1}))
    add("dw_hswish", (9, 9, 6), lambda b, x: b.op("HardSwish", [b.conv(x, 6, 3, group=6)]))
    add("maxpool_3s2p1", (9, 10, 3), lambda b, x: b.op("MaxPool", [x], {"kernel_shape": (3, 3), "strides": (2, 2),
                                                                       "pads": (1, 1, 1, 1)}))
    add("maxpool_ceil_dil", (10, 11, 2), lambda b, x: b.op("MaxPool", [x], {"kernel_shape": (2, 3), "strides": (2, 2),
                                                                            "dilations": (2, 1), "ceil_mode": 1}))
    add("avgpool_incl_pad", (7, 8, 3), lambda b, x: b.op("AveragePool", [x], {
        "kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "count_include_pad": 1, "ceil_mode": 1}))
    add("avgpool_excl_pad", (7, 8, 3), lambda b, x: b.op("AveragePool", [x], {
        "kernel_shape": (3, 2), "strides": (2, 3), "pads": (1, 0, 1, 1), "count_include_pad": 0, "ceil_mode": 1}))
    add("gap", (5, 7, 9), lambda b, x: b.op("GlobalAveragePool", [x]))
    add("gmp_relu", (6, 3, 35), lambda b, x: b.op("Relu", [b.op("GlobalMaxPool", [x])]))
    for op, attrs in (("Relu", {}), ("LeakyRelu", {"alpha": 0.07}), ("Sigmoid", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
                      ("HardSwish", {}), ("Tanh", {}), ("Exp", {}), ("Neg", {}), ("Abs", {}), ("Erf", {}), ("Elu", {"alpha": 0.8}),
                      ("Softplus", {}), ("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Clip", {"min": -0.5, "max": 0.7})):
        add(f"unary_{op}_{'_'.join(map(str, attrs.values()))}".rstrip("_"), (3, 5, 7),
            lambda b, x, op=op, attrs=attrs: b.op(op, [x], attrs))
    add("sqrt_abs", (3, 4, 5), lambda b, x: b.op("Sqrt", [b.op("Abs", [x])]))
    add("add_chan_const", (4, 5, 6), lambda b, x: b.op("Add", [x, b.param("c", np.arange(6) * 0.1)]))
    add("sub_scalar_swapped", (4, 5, 6), lambda b, x: b.op("Sub", [b.param("s", np.full(1, 0.3)), x]))
    add("mul_two_branches", (4, 5, 6), lambda b, x: b.op("Mul", [b.op("Tanh", [x]), b.op("Sigmoid", [x])]))
    add("div_bcast_const", (4, 5, 6), lambda b, x: b.op("Div", [x, b.param("d", np.linspace(1, 2, 5).reshape(1, 5, 1))]))
    add("max_bcast_nc_first", (4, 5, 6), lambda b, x: b.op("Max", [b.op("GlobalAveragePool", [x]), x]))
    add("min_bcast_general", (4, 5, 6), lambda b, x: b.op("Min", [x, b.op("ReduceMean", [x], {"axes": (2,), "keepdims": 1})]))
    add("pow", (3, 4, 5), lambda b, x: b.op("Pow", [b.op("Sigmoid", [x]), b.param("p", np.full(1, 2.5))]))
    add("batchnorm_unfolded", (4, 6, 5), lambda b, x: b.bn(x))
    add("softmax_axis1", (5, 4, 3), lambda b, x: b.op("Softmax", [x], {"axis": 1}))
    add("logsoftmax_last", (2, 3, 37), lambda b, x: b.op("LogSoftmax", [x], {"axis": -1}))
    add("transpose", (3, 4, 5), lambda b, x: b.op("Transpose", [x], {"perm": (0, 3, 1, 2)}))
    add("concat_axis1", (3, 4, 5), lambda b, x: b.op("Concat", [x, b.op("Neg", [x]), x], {"axis": 1}))
    add("concat_channels", (3, 4, 5), lambda b, x: b.op("Concat", [x, b.op("Relu", [x])], {"axis": 3}))
    add("slice_neg_step", (6, 7, 5), lambda b, x: b.op("Slice", [x], {"starts": (5, 1), "ends": (0, 7), "axes": (1, 2),
                                                                    "steps": (-2, 3)}))

    def split(b, x):
        b.nodes.append(Node("Split", "split", [x], ["s1", "s2"], {"axis": 3, "split": (3, 4)}))
        return b.op("Concat", ["s2", "s1"], {"axis": 3})
    add("split", (6, 4, 7), split)
    add("pad", (4, 5, 3), lambda b, x: b.op("Pad", [x], {"pads": (0, 2, -1, 1, 0, 1, 2, 0), "value": -0.5}))
    add("reduce_sum_keep0", (4, 5, 6), lambda b, x: b.op("ReduceSum", [x], {"axes": (1, 2), "keepdims": 0}))
    add("reduce_max_c", (4, 5, 6), lambda b, x: b.op("ReduceMax", [x], {"axes": (3,), "keepdims": 1}))
    add("reduce_min_all", (2, 3, 4), lambda b, x: b.op("ReduceMin", [x], {"axes": (1, 2, 3), "keepdims": 0}))
    add("dense", (3, 3, 5), lambda b, x: b.op("Relu", [b.dense(b.op("Flatten", [x], {"axis": 1}, channels=45), 13)]))
    add("gap_dense", (5, 4, 11), lambda b, x: b.op("Tanh", [b.dense(b.op("Flatten", [b.op("GlobalAveragePool", [x])],
                                                                             {"axis": 1}), 9)]))
    # K % 8 == 0: fp16 weights read 16 bytes a lane; O = 1100 needs 2 outputs a warp on 132 SMs
    add("dense_k64_o300", (4, 4, 4), lambda b, x: b.dense(b.op("Flatten", [x], {"axis": 1}, channels=64), 300))
    add("gap_dense_k64_o1100", (3, 3, 64), lambda b, x: b.dense(b.op("Flatten", [b.op("GlobalAveragePool", [x])],
                                                                      {"axis": 1}), 1100))
    add("matmul_const", (3, 4, 6), lambda b, x: b.op("MatMul", [x, b.param("m", b.rng.standard_normal((6, 5)))]))
    return c


def mma_conv_cases() -> dict:
    """{case id: Graph}: convolutions (groups == 1) that the fp16 plans run on the tensor-core kernel,
    one per A-gather variant and awkward size: C = 3 or 5 (element gather), C % 8 == 0 (16-byte
    chunks), 1x1 (pointwise), K not a multiple of 32, O not a multiple of 8, stride 2, dilation,
    residual Add + Relu, and a chain whose middle tensor stays fp16."""
    c = {}

    def add(name, shape, fn):
        c[name] = _one(name, shape, fn)

    add("mma_c3_s2_relu", (13, 11, 3), lambda b, x: b.op("Relu", [b.conv(x, 20, 3, stride=2)]))
    add("mma_c5_dilated", (15, 9, 5), lambda b, x: b.conv(x, 9, (3, 2), stride=(1, 2), dil=2, pad=(2, 1, 2, 0)))
    add("mma_c16_add_relu", (9, 7, 16), lambda b, x: b.op("Relu", [b.op("Add", [b.conv(x, 16, 3), x])]))
    add("mma_c8_k72_s2_dil2", (10, 10, 8), lambda b, x: b.conv(x, 24, 3, stride=2, dil=2))
    add("mma_pointwise_clip", (7, 9, 24), lambda b, x: b.op("Clip", [b.conv(x, 40, 1, pad=0)], {"min": 0.0, "max": 6.0}))
    add("mma_1x1_s2", (9, 9, 40), lambda b, x: b.conv(x, 16, 1, stride=2, pad=0))
    add("mma_wide_o130", (8, 8, 64), lambda b, x: b.conv(x, 130, 3))
    add("mma_pointwise_o200_hswish", (6, 6, 96), lambda b, x: b.op("HardSwish", [b.conv(x, 200, 1, pad=0)]))
    # few output tiles and a long K at batch 1: split-K (cuda_plan.choose_splitk) with its reduction
    add("mma_splitk_7x7_add_relu", (7, 7, 128), lambda b, x: b.op("Relu", [b.op("Add", [b.conv(x, 128, 3), x])]))
    add("mma_splitk_c37_7x7", (5, 6, 37), lambda b, x: b.op("HardSwish", [b.conv(x, 40, 7, pad=3)]))
    # the halo conv (cuda_codegen.halo_conv_kernel): bands of 7 rows with a short last band, and
    # stride 2 with whole images per block
    add("mma_halo_bands_c8", (20, 33, 8), lambda b, x: b.op("Relu", [b.conv(x, 16, 3)]))
    add("mma_halo_c32_s2", (16, 15, 32), lambda b, x: b.op("Relu", [b.conv(x, 32, 3, stride=2)]))
    add("mma_chain", (11, 12, 3), lambda b, x: b.op("Tanh", [b.conv(b.op("Relu", [b.conv(x, 16, 3)]), 37, 3, stride=2)]))
    return c


def band_conv_cases() -> dict[str, Graph]:
    """Stride-1 convs with C % 16 == 0 (the wgmma band conv's), of awkward sizes: a residual add, O
    not a multiple of 16, dilation, a 1x1 conv, a 5x5 one whose K steps are not a multiple of a chunk."""
    builds = {
        "c16_add_relu": ((12, 10, 16), lambda b, x: b.op("Relu", [b.op("Add", [b.conv(x, 16, 3), x])])),
        "c32_o40": ((9, 11, 32), lambda b, x: b.conv(x, 40, 3)),
        "c64_o80_dil2": ((9, 9, 64), lambda b, x: b.op("Relu", [b.conv(x, 80, 3, pad=2, dil=2)])),
        "pointwise_o96": ((7, 5, 48), lambda b, x: b.op("Relu", [b.conv(x, 96, 1)])),
        "c16_5x5": ((6, 6, 16), lambda b, x: b.conv(x, 24, 5, pad=2)),
    }
    return {name: _one(name, *spec) for name, spec in builds.items()}


def s2d_stem_cases() -> dict[str, Graph]:
    """Stride-2 stems on 3 or 4 channels, which the space-to-depth stem (CNNRT_CUDA_S2D) takes:
    ResNet's 7x7 pad 3, odd image sizes with a 5x5, an even 6x6 kernel, a 7x7 with pad 2."""
    builds = {
        "r18_stem": ((32, 30, 3), lambda b, x: b.op("Relu", [b.conv(x, 64, 7, stride=2, pad=3)])),
        "odd_5x5": ((17, 13, 4), lambda b, x: b.conv(x, 24, 5, stride=2, pad=2)),
        "k6_pad2": ((16, 16, 3), lambda b, x: b.conv(x, 32, 6, stride=2, pad=2)),
        "7x7_pad2": ((20, 22, 3), lambda b, x: b.op("Relu", [b.conv(x, 40, 7, stride=2, pad=2)])),
    }
    return {name: _one(name, *spec) for name, spec in builds.items()}
