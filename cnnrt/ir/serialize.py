"""A graph as JSON (bundle version 2's description) and back; the tensors travel separately.

The JSON holds everything but the constants: inputs with shapes, outputs, nodes (op, name,
inputs, outputs, attributes), preprocessing, labels and provenance. `from_json` trusts nothing:
every field is type-checked and the graph is validated (shapes inferred) before it is returned.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import FormatError
from .graph import Graph, Node
from .ops import OPS

LAYOUT = "NHWC"


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    return v


def to_json(g: Graph) -> dict:
    return {
        "graph": {
            "inputs": [{"name": k, "shape": list(s), "dtype": g.input_dtypes.get(k, "float32")} for k, s in g.inputs.items()],
            "outputs": list(g.outputs),
            "batched": g.batched,
            "layout": LAYOUT,
            "nodes": [{"op": n.op, "name": n.name, "inputs": n.inputs, "outputs": n.outputs,
                       "attrs": {k: _plain(v) for k, v in n.attrs.items() if v != OPS[n.op].attrs.get(k)}}
                      for n in g.nodes],
        },
        "preprocess": {k: _plain(v) for k, v in g.preprocess.items() if v is not None},
        "labels": g.labels,
    }


def _attr(v):
    if isinstance(v, list):
        return tuple(_attr(x) for x in v)
    if v in ("inf", "-inf"):
        return float(v)
    return v


def _need(d, key, typ, where):
    if not isinstance(d, dict) or key not in d:
        raise FormatError(f"{where}: missing {key!r}")
    v = d[key]
    if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
        raise FormatError(f"{where}: {key!r} must be {getattr(typ, '__name__', typ)}, got {type(v).__name__}")
    return v


def _number(v, what, where, positive=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or positive and v <= 0:
        raise FormatError(f"{where}: {what} must be a {'positive ' if positive else ''}number, got {v!r}")
    return float(v)


def from_json(desc: dict, params: dict[str, np.ndarray], where: str, name: str = "model", meta=None) -> Graph:
    gj = _need(desc, "graph", dict, where)
    layout = gj.get("layout", LAYOUT)
    if layout != LAYOUT:
        raise FormatError(f"{where}: graph layout {layout!r} is not supported (cnnrt stores {LAYOUT})")
    inputs, dtypes = {}, {}
    for i, d in enumerate(_need(gj, "inputs", list, where)):
        iname = _need(d, "name", str, f"{where}: input {i}")
        shape = _need(d, "shape", list, f"{where}: input {iname!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
            raise FormatError(f"{where}: input {iname!r} shape must be positive integers, got {shape}")
        inputs[iname] = tuple(shape)
        dt = d.get("dtype", "float32")
        if dt not in ("float32", "int64"):
            raise FormatError(f"{where}: input {iname!r} dtype must be float32 or int64, got {dt!r}")
        dtypes[iname] = dt
    outputs = _need(gj, "outputs", list, where)
    if not all(isinstance(t, str) for t in outputs):
        raise FormatError(f"{where}: outputs must be tensor names")
    nodes = []
    for i, d in enumerate(_need(gj, "nodes", list, where)):
        w = f"{where}: node {i}"
        op = _need(d, "op", str, w)
        nname = _need(d, "name", str, w)
        ins, outs = _need(d, "inputs", list, w), _need(d, "outputs", list, w)
        attrs = d.get("attrs", {})
        if not isinstance(attrs, dict) or not all(isinstance(t, str) for t in ins + outs):
            raise FormatError(f"{w} ({nname!r}): inputs/outputs must be names and attrs an object")
        nodes.append(Node(op, nname, ins, outs, {k: _attr(v) for k, v in attrs.items()}))
    pre = desc.get("preprocess", {"scale": 1.0})
    if not isinstance(pre, dict):
        raise FormatError(f"{where}: 'preprocess' must be an object")
    preprocess = {"scale": _number(pre.get("scale", 1.0), "preprocess scale", where, positive=True)}
    for k in ("mean", "std"):
        if pre.get(k) is not None:
            v = pre[k]
            vals = v if isinstance(v, list) else [v]
            if not vals:
                raise FormatError(f"{where}: preprocess {k} is empty")
            preprocess[k] = [_number(x, f"preprocess {k}", where, positive=(k == "std")) for x in vals]
    labels = desc.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise FormatError(f"{where}: 'labels' must be a list of strings")
    batched = gj.get("batched", True)
    if not isinstance(batched, bool):
        raise FormatError(f"{where}: 'batched' must be true or false")
    known = set(params) | set(inputs) | {t for n in nodes for t in n.outputs}
    for n in nodes:
        for t in n.inputs:
            if t not in known:
                raise FormatError(f"{where}: tensor {t!r} is missing (read by node {n.name!r})")
    used = {t for n in nodes for t in n.inputs} | set(outputs)
    extra = sorted(set(params) - used)
    if extra:
        raise FormatError(f"{where}: tensors {extra[:5]} are not used by any node")
    try:
        g = Graph(nodes, inputs, outputs, dict(params), name=name, meta=meta or {}, preprocess=preprocess,
                  labels=labels, batched=batched, input_dtypes=dtypes)
    except FormatError as e:
        raise FormatError(f"{where}: {e}") from None
    if labels is not None and len(g.outputs) and len(labels) != g.num_classes:
        raise FormatError(f"{where}: {len(labels)} labels for {g.num_classes} classes")
    return g
