"""Rewrites run when a model loads: each a named pattern, a check that says why it does not apply,
and a rewrite (onnxscript's rewriter and ONNX Runtime's optimizer levels are the models).

`optimize(g)` runs them all: identities dropped, constant subgraphs folded, BatchNormalization
folded into the Conv or Dense before it. They never change what the graph computes, beyond
float rounding of the folded weights.
"""
from __future__ import annotations

import numpy as np

from . import ops as O
from .graph import Graph, Node


def _rename(g: Graph, old: str, new: str) -> None:
    for n in g.nodes:
        n.inputs = [new if t == old else t for t in n.inputs]
    g.outputs = [new if t == old else t for t in g.outputs]


def drop_identities(g: Graph) -> int:
    """Identity nodes whose output is not a graph output: readers take the input instead."""
    count = 0
    for n in list(g.nodes):
        if n.op == "Identity" and n.outputs[0] not in g.outputs:
            g.nodes.remove(n)
            _rename(g, n.outputs[0], n.inputs[0])
            count += 1
    return count


def fold_constants(g: Graph) -> int:
    """Nodes whose inputs are all constants become constants (computed in float32/int64)."""
    count = 0
    for n in list(g.nodes):
        if n.inputs and all(t in g.params for t in n.inputs) and not any(t in g.outputs for t in n.outputs):
            outs = O.OPS[n.op].run([g.params[t] for t in n.inputs], n.attrs)
            for t, v in zip(n.outputs, outs):
                v = np.asarray(v)
                g.params[t] = v.astype(np.float32) if v.dtype.kind == "f" else v.astype(np.int64)
            g.nodes.remove(n)
            count += 1
    return count


def why_not_fold_bn(g: Graph, bn: Node) -> str | None:
    """None if `bn` folds into the node before it, else the reason it does not."""
    if not all(t in g.params for t in bn.inputs[1:]):
        return "statistics are not constants"
    prev = g.producer(bn.inputs[0])
    if prev is None or prev.op not in ("Conv", "Dense"):
        return "not preceded by Conv or Dense"
    if len(g.consumers(prev.outputs[0])) != 1 or prev.outputs[0] in g.outputs:
        return f"{prev.name}'s output has other readers"
    if not all(t in g.params for t in prev.inputs[1:]):
        return f"{prev.name}'s weights are not constants"
    if sum(1 for n in g.nodes for t in n.inputs if t == prev.inputs[1]) != 1:
        return f"{prev.name}'s weights are shared"
    rank = len(g.shapes[bn.inputs[0]])
    if int(bn.attrs["axis"]) % rank != rank - 1:
        return "normalises an axis other than the channels"
    return None


def fold_batchnorm(g: Graph) -> int:
    """Conv/Dense then BatchNormalization -> one Conv/Dense with scaled weights and shifted bias."""
    count = 0
    for bn in [n for n in g.nodes if n.op == "BatchNormalization"]:
        if why_not_fold_bn(g, bn) is not None:
            continue
        prev = g.producer(bn.inputs[0])
        s, b, m, v = (g.params[t].astype(np.float64) for t in bn.inputs[1:])
        k = s / np.sqrt(v + float(bn.attrs["epsilon"]))
        w = g.params[prev.inputs[1]].astype(np.float64)
        bias = g.params[prev.inputs[2]].astype(np.float64) if len(prev.inputs) > 2 else np.zeros(w.shape[0])
        wname, bname = prev.inputs[1], f"{prev.name}.bias" if len(prev.inputs) < 3 else prev.inputs[2]
        g.params[wname] = (w * k.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        g.params[bname] = ((bias - m) * k + b).astype(np.float32)
        prev.inputs = [prev.inputs[0], wname, bname]
        g.nodes.remove(bn)
        _rename(g, bn.outputs[0], prev.outputs[0])
        if bn.outputs[0] in g.outputs:  # keep the graph's output name
            pass
        count += 1
    return count


def drop_unused(g: Graph) -> int:
    """Nodes and constants nothing reads (and that are no graph output)."""
    count = 0
    changed = True
    while changed:
        changed = False
        used = set(g.outputs) | {t for n in g.nodes for t in n.inputs}
        for n in list(g.nodes):
            if not any(t in used for t in n.outputs):
                g.nodes.remove(n)
                count += 1
                changed = True
    used = {t for n in g.nodes for t in n.inputs}
    for k in [k for k in g.params if k not in used and k not in g.outputs]:
        del g.params[k]
    return count


PASSES = (drop_identities, fold_constants, fold_batchnorm, drop_unused)


def optimize(g: Graph) -> Graph:
    """A rewritten copy of `g`; the record of what ran goes in its meta['passes']."""
    g = g.copy()
    done = {}
    for p in PASSES:
        k = p(g)
        g.validate()
        if k:
            done[p.__name__] = k
    if done:
        g.meta = {**g.meta, "passes": {**g.meta.get("passes", {}), **done}}
    return g
