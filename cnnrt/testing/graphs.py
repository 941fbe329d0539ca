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
