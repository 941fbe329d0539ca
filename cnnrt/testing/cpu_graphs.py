"""Graphs built directly in the IR, with random weights from a seed: for tests, labs and benchmarks.

The architectures follow the zoo's exported ONNX files (cnnrt/testing/zoo/*.onnx, BatchNorm already
folded into the convolutions as PyTorch's exporter writes them): He et al.'s CIFAR ResNet-20,
torchvision's MobileNetV2 and ResNet-18. Weights are He-normal draws (residual branches scaled
down) and biases small normal draws, so activations stay in a sane range through the depth and the
logits are not dominated by one class. `batch_norm=True` keeps explicit BatchNormalization nodes
(bias-free convolutions then BN, as a framework model is before folding).

Every builder returns a `cnnrt.ir.Graph` with input 'images' (1, H, W, C) and output 'logits'.
"""
from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node


class Builder:
    """A small graph writer: each method adds one node (and its weights) and returns its output."""

    def __init__(self, shape, seed: int = 0, batch_norm: bool = False):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Node] = []
        self.params: dict[str, np.ndarray] = {}
        self.shapes = {"images": (1, *shape)}
        self.batch_norm = batch_norm
        self.count = 0

    def _name(self, base):
        self.count += 1
        return f"{base}{self.count}"

    def _add(self, op, ins, attrs=None, name=None, out_shape=None):
        name = name or self._name(op.lower())
        self.nodes.append(Node(op, name, ins, [name], attrs or {}))
        if out_shape is not None:
            self.shapes[name] = out_shape
        return name

    def param(self, name, array):
        self.params[name] = np.asarray(array, dtype=np.float32)
        return name

    def conv(self, x, o, k, stride=1, pad=None, group=1, dilation=1, act=None, gain=1.0, bias=True):
        n, h, w, c = self.shapes[x]
        kh, kw = (k, k) if isinstance(k, int) else k
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
        if pad is None:
            pad = ((kh - 1) * dh // 2, (kw - 1) * dw // 2, (kh - 1) * dh // 2, (kw - 1) * dw // 2)
        elif isinstance(pad, int):
            pad = (pad,) * 4
        name = self._name("conv")
        fan_in = kh * kw * (c // group)
        self.param(f"{name}.weight", self.rng.standard_normal((o, kh, kw, c // group)) * gain * np.sqrt(2.0 / fan_in))
        ins = [x, f"{name}.weight"]
        if bias and not self.batch_norm:
            ins.append(self.param(f"{name}.bias", self.rng.standard_normal(o) * 0.1))
        ho = (h + pad[0] + pad[2] - (kh - 1) * dh - 1) // sh + 1
        wo = (w + pad[1] + pad[3] - (kw - 1) * dw - 1) // sw + 1
        y = self._add("Conv", ins, {"strides": (sh, sw), "pads": tuple(pad), "dilations": (dh, dw), "group": group},
                      name, (n, ho, wo, o))
        if self.batch_norm:
            y = self.bn(y)
        return self.act(y, act)

    def bn(self, x):
        c = self.shapes[x][-1]
        name = self._name("bn")
        r = self.rng
        ins = [x] + [self.param(f"{name}.{k}", v) for k, v in (
            ("scale", r.uniform(0.75, 1.25, c)), ("bias", r.standard_normal(c) * 0.1),
            ("mean", r.standard_normal(c) * 0.1), ("var", r.uniform(0.75, 1.25, c)))]
        return self._add("BatchNormalization", ins, {"epsilon": 1e-5}, name, self.shapes[x])

    def act(self, x, act):
        if act is None:
            return x
        if act == "relu":
            return self._add("Relu", [x], out_shape=self.shapes[x])
        if act == "relu6":
            return self._add("Clip", [x], {"min": 0.0, "max": 6.0}, out_shape=self.shapes[x])
        if act == "hardswish":
            return self._add("HardSwish", [x], out_shape=self.shapes[x])
        if act == "sigmoid":
            return self._add("Sigmoid", [x], out_shape=self.shapes[x])
        if act == "leaky":
            return self._add("LeakyRelu", [x], {"alpha": 0.1}, out_shape=self.shapes[x])
        raise ValueError(act)

    def add(self, a, b, act=None):
        return self.act(self._add("Add", [a, b], out_shape=self.shapes[a]), act)

    def maxpool(self, x, k, stride, pad=0, ceil=0):
        n, h, w, c = self.shapes[x]
        pad = (pad,) * 4 if isinstance(pad, int) else tuple(pad)
        from ..ir.ops import pool_out
        ho, wo = pool_out(h, k, stride, 1, pad[0], pad[2], ceil), pool_out(w, k, stride, 1, pad[1], pad[3], ceil)
        return self._add("MaxPool", [x], {"kernel_shape": (k, k), "strides": (stride, stride), "pads": pad,
                                          "ceil_mode": ceil}, out_shape=(n, ho, wo, c))

    def avgpool(self, x, k, stride, pad=0, ceil=0, count_include_pad=0):
        n, h, w, c = self.shapes[x]
        pad = (pad,) * 4 if isinstance(pad, int) else tuple(pad)
        from ..ir.ops import pool_out
        ho, wo = pool_out(h, k, stride, 1, pad[0], pad[2], ceil), pool_out(w, k, stride, 1, pad[1], pad[3], ceil)
        return self._add("AveragePool", [x], {"kernel_shape": (k, k), "strides": (stride, stride), "pads": pad,
                                              "ceil_mode": ceil, "count_include_pad": count_include_pad},
                         out_shape=(n, ho, wo, c))

    def head(self, x, classes, flatten_op="Flatten"):
        """GlobalAveragePool, Flatten, Dense -> 'logits'."""
        n, _, _, c = self.shapes[x]
        g = self._add("GlobalAveragePool", [x], out_shape=(n, 1, 1, c))
        if flatten_op == "Flatten":
            f = self._add("Flatten", [g], {"axis": 1}, out_shape=(n, c))
        else:
            f = self._add("Reshape", [g], {"shape": (0, -1)}, out_shape=(n, c))
        return self.dense(f, classes, name="logits")

    def dense(self, x, o, act=None, name=None):
        i = self.shapes[x][-1]
        wname = self._name("fc")
        w = self.param(f"{wname}.weight", self.rng.standard_normal((o, i)) / np.sqrt(i))
        b = self.param(f"{wname}.bias", self.rng.standard_normal(o) * 0.1)
        y = self._add("Dense", [x, w, b], name=name, out_shape=(self.shapes[x][0], o))
        return self.act(y, act)

    def graph(self, out, name, preprocess=None) -> Graph:
        g = Graph(self.nodes, {"images": self.shapes["images"]}, [out], self.params, name=name,
                  meta={"source": "cnnrt.testing.graphs", "random": True},
                  preprocess=preprocess or {"scale": 1.0 / 255.0})
        return g


def resnet20(seed: int = 0, classes: int = 10, batch_norm: bool = False) -> Graph:
    """CIFAR ResNet-20 (3 stages of 3 basic blocks, 16/32/64 channels, 1x1 projection shortcuts)."""
    b = Builder((32, 32, 3), seed, batch_norm)
    x = b.conv("images", 16, 3, act="relu")
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            s = stride if i == 0 else 1
            y = b.conv(x, cout, 3, s, act="relu")
            y = b.conv(y, cout, 3, 1, gain=0.5)
            sc = x if s == 1 and cin == cout else b.conv(x, cout, 1, s, pad=0)
            x = b.add(y, sc, act="relu")
            cin = cout
    return b.graph(b.head(x, classes), "resnet20", {"scale": 1.0 / 255.0, "mean": [0.49, 0.48, 0.45],
                                                   "std": [0.25, 0.24, 0.26]})


MBV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2(seed: int = 0, size: int = 96, classes: int = 1000, batch_norm: bool = False) -> Graph:
    """torchvision's MobileNetV2 (width 1.0): inverted residuals with depthwise 3x3 convolutions, ReLU6."""
    b = Builder((size, size, 3), seed, batch_norm)
    x = b.conv("images", 32, 3, 2, act="relu6")
    cin = 32
    for t, c, n, s in MBV2:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x if t == 1 else b.conv(x, hidden, 1, act="relu6")
            y = b.conv(y, hidden, 3, stride, group=hidden, act="relu6")
            y = b.conv(y, c, 1, gain=0.5)
            x = b.add(x, y) if stride == 1 and cin == c else y
            cin = c
    x = b.conv(x, 1280, 1, act="relu6")
    return b.graph(b.head(x, classes), f"mobilenet_v2_{size}")


def resnet18(seed: int = 0, size: int = 224, classes: int = 1000, batch_norm: bool = False) -> Graph:
    """torchvision's ResNet-18: 7x7/2 stem, 3x3/2 max-pool, 4 stages of 2 basic blocks, 64..512 channels."""
    b = Builder((size, size, 3), seed, batch_norm)
    x = b.conv("images", 64, 7, 2, pad=3, act="relu")
    x = b.maxpool(x, 3, 2, 1)
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for i in range(2):
            s = stride if i == 0 else 1
            y = b.conv(x, cout, 3, s, act="relu")
            y = b.conv(y, cout, 3, 1, gain=0.5)
            sc = x if s == 1 and cin == cout else b.conv(x, cout, 1, s, pad=0)
            x = b.add(y, sc, act="relu")
            cin = cout
    return b.graph(b.head(x, classes), "resnet18")


def deep_mnist(seed: int = 0) -> Graph:
    """The article's Deep MNIST net (a layer chain: the staged engine runs it) with random weights."""
    from ..ir.chain import to_graph
    from ..model import deep_mnist as chain

    rng = np.random.default_rng(seed)
    shapes = {"conv1.weight": (32, 5, 5, 1), "conv1.bias": (32,), "conv2.weight": (64, 5, 5, 32), "conv2.bias": (64,),
              "fc1.weight": (1024, 3136), "fc1.bias": (1024,), "fc2.weight": (10, 1024), "fc2.bias": (10,)}
    params = {k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in shapes.items()}
    return to_graph(chain(params, name="deep_mnist_random"))


BUILDERS = {"resnet20": resnet20, "mobilenet_v2_96": mobilenet_v2, "resnet18": resnet18, "deep_mnist": deep_mnist}


def build(name: str, seed: int = 0, **kw) -> Graph:
    if name not in BUILDERS:
        raise KeyError(f"unknown test graph {name!r} (known: {', '.join(BUILDERS)})")
    return BUILDERS[name](seed, **kw)
