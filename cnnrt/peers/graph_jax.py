"""Any cnnrt graph as a JAX function with the graph's own weights (for benchmarks), NHWC like the
graph itself: convolutions are lax.conv_general_dilated with ("NHWC", "OHWI", "NHWC"). fp32 uses
Precision.HIGHEST (no TF32), as cnnrt's fp32 path. jax is imported inside the functions."""
from __future__ import annotations

import math

import numpy as np

from ..ir import ops as O
from ..ir.graph import Graph


def to_jax(graph: Graph, dtype: str = "float32"):
    """fn(x) for (N, H, W, C) uint8 pixels (preprocessed as the graph says) or float values -> first output."""
    import jax.numpy as jnp
    from jax import lax

    from ..ir.passes import optimize

    g = optimize(graph)
    dt = jnp.dtype(dtype)
    prec = lax.Precision.HIGHEST if dt == jnp.float32 else lax.Precision.DEFAULT
    params = {k: jnp.asarray(v, dt) if v.dtype.kind == "f" else jnp.asarray(v) for k, v in g.params.items()}
    pp = g.preprocess
    c = g.input_shape[-1]
    mean = jnp.asarray(np.broadcast_to(np.asarray(pp["mean"] if pp.get("mean") is not None else 0.0, np.float32)
                                       .reshape(-1), (c,)), dt)
    std = jnp.asarray(np.broadcast_to(np.asarray(pp["std"] if pp.get("std") is not None else 1.0, np.float32)
                                      .reshape(-1), (c,)), dt)
    scale = float(pp.get("scale", 1.0))

    def fn(x):
        if x.dtype == jnp.uint8:
            x = (x.astype(dt) * scale - mean) / std
        else:
            x = x.astype(dt)
        env = dict(params)
        env[g.input_name] = x
        for n in g.nodes:
            outs = _run(n, [env[t] for t in n.inputs], jnp, lax, prec)
            for t, v in zip(n.outputs, outs):
                env[t] = v
        return env[g.outputs[0]]

    return fn


def _pool(x, a, kind, jnp, lax):
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = a["kernel_shape"], a["strides"], a["dilations"], a["pads"]
    n, h, w, c = x.shape
    ceil = bool(a.get("ceil_mode", 0))
    ho = O.pool_out(h, kh, sh, dh, pt, pb, ceil)
    wo = O.pool_out(w, kw, sw, dw, pl, pr, ceil)
    eh = max((ho - 1) * sh + (kh - 1) * dh + 1 - (h + pt + pb), 0)
    ew = max((wo - 1) * sw + (kw - 1) * dw + 1 - (w + pl + pr), 0)
    win, st, dil = (1, kh, kw, 1), (1, sh, sw, 1), (1, dh, dw, 1)
    padding = ((0, 0), (pt, pb + eh), (pl, pr + ew), (0, 0))
    if kind == "max":
        return lax.reduce_window(x, -jnp.inf, lax.max, win, st, padding, window_dilation=dil)
    s = lax.reduce_window(x, 0.0, lax.add, win, st, padding, window_dilation=dil)
    ones = jnp.ones((1, h, w, 1), x.dtype)
    if a.get("count_include_pad", 0):
        ones = jnp.pad(ones, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=1.0)
        cnt = lax.reduce_window(ones, 0.0, lax.add, win, st, ((0, 0), (0, eh), (0, ew), (0, 0)), window_dilation=dil)
    else:
        cnt = lax.reduce_window(ones, 0.0, lax.add, win, st, padding, window_dilation=dil)
    return s / jnp.maximum(cnt, 1)


def _run(n, ins, jnp, lax, prec):
    import jax

    a, op = n.attrs, n.op
    if op == "Conv":
        pt, pl, pb, pr = a["pads"]
        y = lax.conv_general_dilated(ins[0], ins[1], tuple(a["strides"]), ((pt, pb), (pl, pr)),
                                     rhs_dilation=tuple(a["dilations"]), dimension_numbers=("NHWC", "OHWI", "NHWC"),
                                     feature_group_count=int(a["group"]), precision=prec)
        return [y + ins[2] if len(ins) > 2 else y]
    if op == "MaxPool":
        return [_pool(ins[0], a, "max", jnp, lax)]
    if op == "AveragePool":
        return [_pool(ins[0], a, "avg", jnp, lax)]
    if op == "GlobalAveragePool":
        return [ins[0].mean(axis=tuple(range(1, ins[0].ndim - 1)), keepdims=True)]
    if op == "GlobalMaxPool":
        return [ins[0].max(axis=tuple(range(1, ins[0].ndim - 1)), keepdims=True)]
    if op == "Dense":
        y = jnp.matmul(ins[0], ins[1].T, precision=prec)
        return [y + ins[2] if len(ins) > 2 else y]
    if op == "MatMul":
        return [jnp.matmul(ins[0], ins[1], precision=prec)]
    if op == "BatchNormalization":
        x, s, b, m, v = ins
        return [(x - m) / jnp.sqrt(v + a["epsilon"]) * s + b]
    binary = {"Add": jnp.add, "Sub": jnp.subtract, "Mul": jnp.multiply, "Div": jnp.divide, "Max": jnp.maximum,
              "Min": jnp.minimum, "Pow": jnp.power}
    if op in binary:
        return [binary[op](ins[0], ins[1])]
    x = ins[0]
    nn = jax.nn
    unary = {
        "Relu": lambda: nn.relu(x), "LeakyRelu": lambda: jnp.where(x >= 0, x, x * a["alpha"]),
        "Clip": lambda: jnp.clip(x, None if math.isinf(a["min"]) else a["min"], None if math.isinf(a["max"]) else a["max"]),
        "Sigmoid": lambda: nn.sigmoid(x), "HardSigmoid": lambda: jnp.clip(x * a["alpha"] + a["beta"], 0, 1),
        "HardSwish": lambda: x * jnp.clip(x / 6 + 0.5, 0, 1), "Tanh": lambda: jnp.tanh(x), "Exp": lambda: jnp.exp(x),
        "Sqrt": lambda: jnp.sqrt(x), "Neg": lambda: -x, "Abs": lambda: jnp.abs(x), "Erf": lambda: jax.scipy.special.erf(x),
        "Elu": lambda: nn.elu(x, a["alpha"]), "Softplus": lambda: nn.softplus(x),
        "Gelu": lambda: nn.gelu(x, approximate=a["approximate"] != "none"),
        "Softmax": lambda: nn.softmax(x, axis=int(a["axis"])), "LogSoftmax": lambda: nn.log_softmax(x, axis=int(a["axis"])),
        "Identity": lambda: x,
        "Flatten": lambda: x.reshape(O.OPS["Flatten"].shape([tuple(x.shape)], a)[0]),
        "Reshape": lambda: x.reshape(O.reshape_target(tuple(x.shape), a["shape"], a["allowzero"])),
        "Squeeze": lambda: x.reshape(O.OPS["Squeeze"].shape([tuple(x.shape)], a)[0]),
        "Unsqueeze": lambda: x.reshape(O.OPS["Unsqueeze"].shape([tuple(x.shape)], a)[0]),
        "Transpose": lambda: jnp.transpose(x, a["perm"]),
        "Slice": lambda: x[O.slice_indices(tuple(x.shape), a)],
        "ReduceMean": lambda: x.mean(axis=_axes(a, x), keepdims=bool(a["keepdims"])),
        "ReduceSum": lambda: x.sum(axis=_axes(a, x), keepdims=bool(a["keepdims"])),
        "ReduceMax": lambda: x.max(axis=_axes(a, x), keepdims=bool(a["keepdims"])),
        "ReduceMin": lambda: x.min(axis=_axes(a, x), keepdims=bool(a["keepdims"])),
    }
    if op in unary:
        return [unary[op]()]
    if op == "Concat":
        return [jnp.concatenate(ins, axis=int(a["axis"]))]
    if op == "Split":
        idx = np.cumsum(a["split"])[:-1]
        return list(jnp.split(x, idx, axis=int(a["axis"])))
    if op == "Pad":
        r = x.ndim
        p = [int(v) for v in a["pads"]]
        if min(p) < 0:
            raise NotImplementedError("negative pads in the JAX peer")
        return [jnp.pad(x, [(p[d], p[d + r]) for d in range(r)], constant_values=float(a["value"]))]
    raise NotImplementedError(f"op {op} in the JAX peer")


def _axes(a, x):
    return tuple(int(v) % x.ndim for v in a["axes"]) if a["axes"] is not None else None
