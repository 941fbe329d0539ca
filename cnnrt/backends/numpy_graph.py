"""The CPU backend's generic path: any graph, node by node, in float32.

Graphs that are a classic layer chain (Deep MNIST and its kind) go to the staged engine in
numpy_backend.py with its fused, threaded kernels; everything else runs here, each node through
a kernel registered for its op in `KERNELS` or, failing that, through its NumPy definition in
cnnrt.ir.ops (evaluated in float32). `describe()` says which node ran on which.

fp16 storage rounds the weights, the input and every node's output to float16, with float32
arithmetic, as `cnnrt.ir.run_reference(..., fp16_storage=True)` does.
"""
from __future__ import annotations

import numpy as np

from ..ir import ops as O
from ..ir.graph import Graph
from .base import Runner, check_images

F32 = np.float32
KERNELS: dict = {}  # op name -> function(inputs, attrs) -> outputs, faster than the definition


def kernel(name):
    def wrap(fn):
        KERNELS[name] = fn
        return fn
    return wrap


@kernel("Conv")
def _conv(ins, a):
    """im2col per group and one GEMM: the definition's arithmetic in a different order."""
    x, w = ins[0], ins[1]
    (sh, sw), (dh, dw), pads, g = a["strides"], a["dilations"], a["pads"], int(a["group"])
    n, h, wd, c = x.shape
    o, kh, kw, cg = w.shape
    ho = O.pool_out(h, kh, sh, dh, pads[0], pads[2], False)
    wo = O.pool_out(wd, kw, sw, dw, pads[1], pads[3], False)
    xp = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3]), (0, 0))) if any(pads) else x
    if kh == kw == 1 and sh == sw == 1 and g == 1:
        out = xp.reshape(-1, c) @ w.reshape(o, c).T
        out = out.reshape(n, ho, wo, o)
    elif g == c and cg == 1:  # depthwise: one multiply-add per tap over all channels
        m = o // g
        out = np.zeros((n, ho, wo, o), dtype=x.dtype)
        wt = w.reshape(g, m, kh, kw).transpose(2, 3, 0, 1)  # (kh, kw, g, m)
        for i in range(kh):
            for j in range(kw):
                v = xp[:, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw, :]
                if m == 1:
                    out += v * wt[i, j, :, 0]
                else:
                    out += (v[..., None] * wt[i, j]).reshape(n, ho, wo, o)
    else:
        cols = np.empty((n, ho, wo, kh, kw, c), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, :, i, j, :] = xp[:, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw, :]
        if g == 1:
            out = cols.reshape(n * ho * wo, kh * kw * c) @ w.reshape(o, -1).T
            out = out.reshape(n, ho, wo, o)
        else:
            og = o // g
            cols = cols.reshape(n * ho * wo, kh * kw, g, cg)
            wg = w.reshape(g, og, kh * kw, cg)
            out = np.empty((n * ho * wo, g, og), dtype=x.dtype)
            for k in range(g):
                out[:, k, :] = cols[:, :, k, :].reshape(len(cols), -1) @ wg[k].reshape(og, -1).T
            out = out.reshape(n, ho, wo, o)
    if len(ins) > 2:
        out += ins[2]
    return [out]


class GraphRunner(Runner):
    """Any graph on the CPU. `run(feeds)` for general graphs; `probabilities` for classifiers."""

    backend = "numpy"
    default_batch_size = 256

    def __init__(self, graph: Graph, precision: str):
        super().__init__(graph, precision)
        self.graph = graph
        self.fp16 = precision == "fp16"
        self.params = {k: self._q(v) for k, v in graph.params.items()}
        pp = graph.preprocess
        c = graph.input_shape[-1] if graph.input_shape else 1
        self.mean = np.asarray(pp["mean"], F32) if pp.get("mean") is not None else None
        self.std = np.asarray(pp["std"], F32) if pp.get("std") is not None else None
        for v, k in ((self.mean, "mean"), (self.std, "std")):
            if v is not None and v.size not in (1, c):
                from ..errors import FormatError
                raise FormatError(f"model {graph.name!r}: preprocess {k} has {v.size} values for {c} channels")

    def _q(self, a):
        if a.dtype.kind != "f":
            return a
        a = a.astype(F32, copy=False)
        return a.astype(np.float16).astype(F32) if self.fp16 else a

    def describe(self) -> list[tuple[str, str, str]]:
        """(node, op, kernel) for every node: what runs where."""
        return [(n.name, n.op, f"numpy.{n.op.lower()}" if n.op in KERNELS else "numpy.reference")
                for n in self.graph.nodes]

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        env = dict(self.params)
        for k, v in feeds.items():
            v = np.asarray(v)
            env[k] = self._q(v) if v.dtype.kind == "f" else v
        for n in self.graph.nodes:
            fn = KERNELS.get(n.op) or O.OPS[n.op].run
            outs = fn([env[t] for t in n.inputs], n.attrs)
            for t, v in zip(n.outputs, outs):
                v = np.asarray(v)
                env[t] = self._q(v) if v.dtype.kind == "f" else v
        return {t: env[t] for t in self.graph.outputs}

    def prepare_input(self, x: np.ndarray) -> np.ndarray:
        """uint8 pixels: scaled, then normalised by the model's mean and std; float: as given."""
        if x.dtype != np.uint8:
            return x.astype(F32, copy=False)
        a = x.astype(F32) * F32(self.graph.input_scale)
        if self.mean is not None:
            a -= self.mean
        if self.std is not None:
            a /= self.std
        return a

    def _forward(self, x: np.ndarray) -> np.ndarray:
        out = self.run({self.graph.input_name: self.prepare_input(x)})[self.graph.outputs[0]]
        return out.reshape(len(x), -1)

    def probabilities(self, x, batch_size=None, progress=None):
        x = check_images(x, self.graph)
        return super().probabilities(x, batch_size, progress)


def prepare(graph: Graph, precision: str = "fp32") -> Runner:
    return GraphRunner(graph, precision)
