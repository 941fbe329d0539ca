"""The graph IR: a DAG of named tensors and nodes, shapes inferred and checked when it is built.

A Graph holds its nodes in topological order, its constant tensors (`params`: weights, float32
or int64), its inputs with their shapes (dim 0 of a batched input is the batch: it may differ at
run time; the stored shape has the size the importer saw, usually 1) and its outputs. Ops are
defined in `ops.py`; this module knows nothing of any op beyond the registry.

Image-classifier metadata rides along: `preprocess` (how uint8 pixels become the input: scale,
then optional per-channel mean and std) and `labels` (class names).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import FormatError
from . import ops as O

MAX_ELEMENTS = 1 << 62  # a tensor shape whose size does not fit int64 arithmetic is damage, not a model


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)

    def __post_init__(self):
        self.inputs, self.outputs = list(self.inputs), list(self.outputs)


@dataclass
class Graph:
    nodes: list[Node]
    inputs: dict[str, tuple]  # name -> shape (dim 0: batch when `batched`)
    outputs: list[str]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "model"
    meta: dict = field(default_factory=dict)  # free-form provenance
    preprocess: dict = field(default_factory=lambda: {"scale": 1.0 / 255.0})  # scale, mean?, std?
    labels: list[str] | None = None
    batched: bool = True  # dim 0 of every input is a batch axis
    input_dtypes: dict = field(default_factory=dict)  # name -> 'float32' (default) or 'int64'

    def __post_init__(self):
        self.inputs = {k: tuple(int(d) for d in v) for k, v in self.inputs.items()}
        self.validate()

    # ---------------------------------------------------------------- checks and shapes
    def validate(self) -> None:
        """Attributes filled with defaults, params checked, nodes sorted, every shape inferred."""
        where = f"model {self.name!r}"
        if not self.inputs:
            raise FormatError(f"{where}: has no input")
        if not self.outputs:
            raise FormatError(f"{where}: has no output")
        for k, shape in self.inputs.items():
            if math.prod(v for v in shape if v) >= MAX_ELEMENTS:
                raise FormatError(f"{where}: input {k!r} has shape {shape}, too large for any tensor")
        # an array already checked (the same object, under the same name) is not scanned again:
        # the optimizer validates after every pass, and a net's weights are megabytes
        checked = self.__dict__.setdefault("_checked_params", {})
        for k in [k for k in checked if k not in self.params]:
            del checked[k]
        for k, v in list(self.params.items()):
            if checked.get(k) is v:
                continue
            if not isinstance(v, np.ndarray):
                v = np.asarray(v)
            if v.dtype.kind == "f" and v.dtype != np.float32:
                v = v.astype(np.float32)
            elif v.dtype.kind in "iub" and v.dtype != np.int64:
                v = v.astype(np.int64)
            elif v.dtype.kind not in "fiub":
                raise FormatError(f"{where}: constant {k!r} has unsupported dtype {v.dtype}")
            if v.dtype.kind == "f":
                bad = ~np.isfinite(v)
                if bad.any():
                    idx = tuple(int(i) for i in np.argwhere(bad)[0])
                    raise FormatError(f"{where}: tensor {k!r} holds {int(bad.sum())} NaN or Inf values "
                                      f"(first at index {idx})")
            self.params[k] = v
            checked[k] = v
        unknown = sorted({n.op for n in self.nodes if n.op not in O.OPS})
        if unknown:
            names = [f"{n.name} ({n.op})" for n in self.nodes if n.op not in O.OPS]
            raise FormatError(f"{where}: unsupported ops {', '.join(unknown)}; nodes: {', '.join(names)}")
        self.nodes = self._toposort()
        self.shapes = self.infer_shapes()

    def _toposort(self) -> list[Node]:
        where = f"model {self.name!r}"
        have = set(self.inputs) | set(self.params)
        producer: dict[str, Node] = {}
        names = set()
        for n in self.nodes:
            if n.name in names:
                raise FormatError(f"{where}: duplicate node name {n.name!r}")
            names.add(n.name)
            for t in n.outputs:
                if t in have or t in producer:
                    raise FormatError(f"{where}: tensor {t!r} is produced twice")
                producer[t] = n
        # in rounds: a round takes every node whose inputs earlier rounds produced, in the stored
        # order (a node's round is one past its latest producer's); one pass over the edges
        level: dict[int, int] = {}
        waiting = {}  # node index -> inputs not yet produced
        readers: dict[str, list[int]] = {}
        frontier = []
        for i, n in enumerate(self.nodes):
            need = {t for t in n.inputs if t not in have}
            waiting[i] = len(need)
            for t in need:
                readers.setdefault(t, []).append(i)
            if not need:
                level[i] = 0
                frontier.append(i)
        done = set(have)
        while frontier:
            i = frontier.pop()
            for t in self.nodes[i].outputs:
                done.add(t)
                for j in readers.get(t, ()):
                    level[j] = max(level.get(j, 0), level[i] + 1)
                    waiting[j] -= 1
                    if waiting[j] == 0:
                        frontier.append(j)
        if len(level) < len(self.nodes) or any(waiting.values()):
            n = next(n for i, n in enumerate(self.nodes) if waiting[i])
            missing = [t for t in n.inputs if t not in done and t not in producer]
            if missing:
                raise FormatError(f"{where}: node {n.name!r} ({n.op}) reads {missing[0]!r}, which nothing produces")
            raise FormatError(f"{where}: the graph has a cycle through node {n.name!r}")
        order = [self.nodes[i] for i in sorted(range(len(self.nodes)), key=lambda i: (level[i], i))]
        for t in self.outputs:
            if t not in done:
                raise FormatError(f"{where}: output {t!r} is not produced by any node")
        return order

    def infer_shapes(self, inputs: dict[str, tuple] | None = None) -> dict[str, tuple]:
        """Every tensor's shape, for the stored input shapes or the given ones."""
        shapes = {k: tuple(v.shape) for k, v in self.params.items()}
        shapes.update(inputs or self.inputs)
        for n in self.nodes:
            d = O.OPS[n.op]
            lo, hi = d.n_inputs
            if not lo <= len(n.inputs) <= hi:
                raise FormatError(f"model {self.name!r}, node {n.name!r} ({n.op}): takes {lo} to {hi} inputs, "
                                  f"got {len(n.inputs)}")
            unknown = set(n.attrs) - set(d.attrs)
            if unknown:
                raise FormatError(f"model {self.name!r}, node {n.name!r} ({n.op}): unknown attributes {sorted(unknown)}")
            n.attrs = {**d.attrs, **n.attrs}
            try:
                outs = d.shape([shapes[t] for t in n.inputs], n.attrs)
            except O.OpError as e:
                raise FormatError(f"model {self.name!r}, node {n.name!r} ({n.op}): {e}") from None
            except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError) as e:
                raise FormatError(f"model {self.name!r}, node {n.name!r} ({n.op}): bad attributes "
                                  f"{n.attrs} ({type(e).__name__}: {e})") from None
            if d.n_outputs != -1 and len(n.outputs) != d.n_outputs or len(outs) != len(n.outputs):
                raise FormatError(f"model {self.name!r}, node {n.name!r} ({n.op}): gives {len(outs)} outputs, "
                                  f"names {len(n.outputs)}")
            for t, s in zip(n.outputs, outs):
                try:
                    s = tuple(int(v) for v in s)
                except (TypeError, ValueError, OverflowError):
                    s = (-1,)
                if any(v < 0 for v in s) or math.prod(v for v in s if v) >= MAX_ELEMENTS:
                    raise FormatError(f"model {self.name!r}, node {n.name!r} ({n.op}): output shape {s} is invalid")
                shapes[t] = s
        return shapes

    # ---------------------------------------------------------------- classifier view
    @property
    def input_name(self) -> str:
        return next(iter(self.inputs))

    @property
    def input_shape(self) -> tuple:
        """One item's shape: (H, W, C) for an image model."""
        s = self.inputs[self.input_name]
        return s[1:] if self.batched else s

    @property
    def input_scale(self) -> float:
        return float(self.preprocess.get("scale", 1.0))

    @property
    def num_classes(self) -> int:
        return int(self.shapes[self.outputs[0]][-1])

    @property
    def ends_in_softmax(self) -> bool:
        return any(n.op == "Softmax" and self.outputs[0] in n.outputs for n in self.nodes)

    def producer(self, tensor: str) -> Node | None:
        for n in self.nodes:
            if tensor in n.outputs:
                return n
        return None

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def flops_per_image(self) -> int:
        """Multiply-adds count 2 FLOPs; per item of the batch."""
        total = 0
        for n in self.nodes:
            d = O.OPS[n.op]
            total += int(d.flops([self.shapes[t] for t in n.inputs], [self.shapes[t] for t in n.outputs], n.attrs))
        b = self.inputs[self.input_name][0] if self.batched else 1
        return total // max(b, 1) if self.batched and b > 1 else total

    def summary(self) -> str:
        pp = self.preprocess
        norm = "".join(f", {k} {pp[k]}" for k in ("mean", "std") if pp.get(k) is not None)
        lines = [f"{self.name}: input {self.input_shape} x {self.input_scale:.6g}{norm}"]
        for n in self.nodes:
            w = [t for t in n.inputs if t in self.params]
            attrs = {k: v for k, v in n.attrs.items() if v != O.OPS[n.op].attrs.get(k)}
            extra = " ".join(f"{k}={_fmt(v)}" for k, v in attrs.items())
            if w:
                extra = ("weights " + ",".join("x".join(map(str, self.params[t].shape)) for t in w) + " " + extra).strip()
            lines.append(f"  {n.name:<24} {n.op:<18} {extra[:60]:<60} -> {self.shapes[n.outputs[0]]}")
        nparams = sum(int(p.size) for p in self.params.values())
        lines.append(f"  {len(self.nodes)} nodes, {nparams:,} parameters, {self.flops_per_image() / 1e6:.1f} MFLOP per image")
        return "\n".join(lines)

    def copy(self) -> "Graph":
        return Graph([Node(n.op, n.name, n.inputs, n.outputs, dict(n.attrs)) for n in self.nodes], dict(self.inputs),
                     list(self.outputs), dict(self.params), self.name, dict(self.meta), dict(self.preprocess),
                     list(self.labels) if self.labels else None, self.batched, dict(self.input_dtypes))


def _fmt(v):
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def run_reference(g: Graph, feeds: dict[str, np.ndarray], dtype=np.float64, fp16_storage: bool = False,
                  keep: bool = False) -> dict[str, np.ndarray]:
    """Run every node with its NumPy definition, computing float tensors in `dtype`.

    fp16_storage rounds the weights, the inputs and every node's output to float16 (as a
    half-precision pipeline stores them) while arithmetic stays in `dtype`.
    """
    def q(a):
        if a.dtype.kind != "f":
            return a
        a = a.astype(dtype, copy=False)
        return a.astype(np.float16).astype(dtype) if fp16_storage else a

    env = {k: q(v) for k, v in g.params.items()}
    env.update({k: q(np.asarray(v)) for k, v in feeds.items()})
    for n in g.nodes:
        outs = O.OPS[n.op].run([env[t] for t in n.inputs], n.attrs)
        for t, v in zip(n.outputs, outs):
            env[t] = q(np.asarray(v))
    return env if keep else {t: env[t] for t in g.outputs}
