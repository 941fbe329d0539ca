"""Any cnnrt graph as a PyTorch module, with the graph's own weights (for benchmarks: the peer runs
exactly the net cnnrt runs, whatever its source).

Tensors stay NHWC as in the graph; a convolution or pool views its input as NCHW with
`permute(0, 3, 1, 2)`, which for an NHWC-contiguous tensor is PyTorch's channels_last layout
(no copy), and views the result back. BatchNormalization is folded first (ir.passes), as cnnrt
does. torch is imported inside the functions.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import ops as O
from ..ir.graph import Graph


def to_torch(graph: Graph, dtype=None, device=None):
    """An nn.Module: forward(x) takes (N, H, W, C) uint8 pixels (scaled and normalised as the
    graph's preprocess says) or float values (taken as scaled), returns the first output."""
    import torch
    import torch.nn.functional as F

    from ..ir.passes import optimize

    dtype = dtype or torch.float32
    g = optimize(graph)

    class GraphModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g = g
            self.t = {}
            for k, v in g.params.items():
                a = np.ascontiguousarray(v)
                if a.dtype.kind == "f":
                    t = torch.tensor(a, dtype=dtype, device=device)
                else:
                    t = torch.tensor(a, device=device)
                self.t[k] = t
            for n in g.nodes:  # conv weights as (O, I/group, KH, KW), channels_last like the activations
                if n.op == "Conv" and n.inputs[1] in g.params:
                    w = torch.tensor(np.ascontiguousarray(g.params[n.inputs[1]].transpose(0, 3, 1, 2)), dtype=dtype,
                                     device=device)
                    self.t[n.inputs[1] + ":oihw"] = w.contiguous(memory_format=torch.channels_last)
            pp = g.preprocess
            c = g.input_shape[-1]
            self.scale = float(pp.get("scale", 1.0))
            self.mean = torch.tensor(np.broadcast_to(np.asarray(pp["mean"] if pp.get("mean") is not None else 0.0,
                                                                np.float32).reshape(-1), (c,)).copy(), dtype=dtype,
                                     device=device)
            self.std = torch.tensor(np.broadcast_to(np.asarray(pp["std"] if pp.get("std") is not None else 1.0,
                                                               np.float32).reshape(-1), (c,)).copy(), dtype=dtype,
                                    device=device)

        def forward(self, x):
            if x.dtype == torch.uint8:
                x = (x.to(dtype) * self.scale - self.mean) / self.std
            else:
                x = x.to(dtype)
            env = dict(self.t)
            env[g.input_name] = x
            for n in g.nodes:
                outs = _run(n, [env[t] for t in n.inputs], env, torch, F)
                for t, v in zip(n.outputs, outs):
                    env[t] = v
            return env[g.outputs[0]]

    return GraphModule()


def _nchw(x):
    return x.permute(0, 3, 1, 2)


def _nhwc(x):
    return x.permute(0, 2, 3, 1)


def _pad_nchw(x, pads, value, F):
    pt, pl, pb, pr = pads
    return F.pad(x, (pl, pr, pt, pb), value=value) if any(pads) else x


def _run(n, ins, env, torch, F):
    a = n.attrs
    op = n.op
    if op == "Conv":
        w = env.get(n.inputs[1] + ":oihw")
        if w is None:
            w = ins[1].permute(0, 3, 1, 2)
        pt, pl, pb, pr = a["pads"]
        x = _nchw(ins[0])
        if (pt, pl) == (pb, pr):
            y = F.conv2d(x, w, ins[2] if len(ins) > 2 else None, tuple(a["strides"]), (pt, pl), tuple(a["dilations"]),
                         int(a["group"]))
        else:
            y = F.conv2d(_pad_nchw(x, a["pads"], 0.0, F), w, ins[2] if len(ins) > 2 else None, tuple(a["strides"]), 0,
                         tuple(a["dilations"]), int(a["group"]))
        return [_nhwc(y)]
    if op in ("MaxPool", "AveragePool"):
        k, s, d, pads = tuple(a["kernel_shape"]), tuple(a["strides"]), tuple(a["dilations"]), a["pads"]
        x = _nchw(ins[0])
        sym = pads[0] == pads[2] and pads[1] == pads[3] and pads[0] <= k[0] // 2 and pads[1] <= k[1] // 2
        if op == "MaxPool":
            if sym:
                y = F.max_pool2d(x, k, s, (pads[0], pads[1]), d, bool(a["ceil_mode"]))
            else:
                y = F.max_pool2d(_pad_nchw(x, pads, -math.inf, F), k, s, 0, d, bool(a["ceil_mode"]))
        else:
            if tuple(d) != (1, 1):
                raise NotImplementedError("dilated average pooling")
            if sym:
                y = F.avg_pool2d(x, k, s, (pads[0], pads[1]), bool(a["ceil_mode"]), bool(a["count_include_pad"]))
            else:
                raise NotImplementedError("asymmetric average-pool pads in the torch peer")
        return [_nhwc(y)]
    if op == "GlobalAveragePool":
        return [ins[0].mean(dim=tuple(range(1, ins[0].dim() - 1)), keepdim=True)]
    if op == "GlobalMaxPool":
        return [ins[0].amax(dim=tuple(range(1, ins[0].dim() - 1)), keepdim=True)]
    if op == "Dense":
        return [F.linear(ins[0], ins[1], ins[2] if len(ins) > 2 else None)]
    if op == "MatMul":
        return [torch.matmul(ins[0], ins[1])]
    if op == "BatchNormalization":
        x, s, b, m, v = ins
        return [(x - m) / torch.sqrt(v + a["epsilon"]) * s + b]
    binary = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Max": torch.maximum,
              "Min": torch.minimum, "Pow": torch.pow}
    if op in binary:
        return [binary[op](ins[0], ins[1])]
    x = ins[0]
    unary = {
        "Relu": lambda: F.relu(x), "LeakyRelu": lambda: F.leaky_relu(x, a["alpha"]),
        "Clip": lambda: torch.clamp(x, None if math.isinf(a["min"]) else a["min"], None if math.isinf(a["max"]) else a["max"]),
        "Sigmoid": lambda: torch.sigmoid(x), "HardSigmoid": lambda: torch.clamp(x * a["alpha"] + a["beta"], 0, 1),
        "HardSwish": lambda: F.hardswish(x), "Tanh": lambda: torch.tanh(x), "Exp": lambda: torch.exp(x),
        "Sqrt": lambda: torch.sqrt(x), "Neg": lambda: -x, "Abs": lambda: torch.abs(x), "Erf": lambda: torch.erf(x),
        "Elu": lambda: F.elu(x, a["alpha"]), "Softplus": lambda: F.softplus(x),
        "Gelu": lambda: F.gelu(x, approximate=a["approximate"]),
        "Softmax": lambda: torch.softmax(x, dim=int(a["axis"])), "LogSoftmax": lambda: torch.log_softmax(x, dim=int(a["axis"])),
        "Identity": lambda: x,
        "Flatten": lambda: x.reshape(O.OPS["Flatten"].shape([tuple(x.shape)], a)[0]),
        "Reshape": lambda: x.reshape(O.reshape_target(tuple(x.shape), a["shape"], a["allowzero"])),
        "Squeeze": lambda: x.reshape(O.OPS["Squeeze"].shape([tuple(x.shape)], a)[0]),
        "Unsqueeze": lambda: x.reshape(O.OPS["Unsqueeze"].shape([tuple(x.shape)], a)[0]),
        "Transpose": lambda: x.permute(*(a["perm"] if a["perm"] is not None else reversed(range(x.dim())))),
        "Slice": lambda: _slice(x, a, torch),
        "ReduceMean": lambda: x.mean(dim=_axes(a, x), keepdim=bool(a["keepdims"])),
        "ReduceSum": lambda: x.sum(dim=_axes(a, x), keepdim=bool(a["keepdims"])),
        "ReduceMax": lambda: x.amax(dim=_axes(a, x), keepdim=bool(a["keepdims"])),
        "ReduceMin": lambda: x.amin(dim=_axes(a, x), keepdim=bool(a["keepdims"])),
    }
    if op in unary:
        return [unary[op]()]
    if op == "Concat":
        return [torch.cat(ins, dim=int(a["axis"]))]
    if op == "Split":
        return list(torch.split(x, list(a["split"]), dim=int(a["axis"])))
    if op == "Pad":
        r = x.dim()
        p = [int(v) for v in a["pads"]]
        flat = []
        for d in reversed(range(r)):
            flat += [p[d], p[d + r]]
        return [F.pad(x, tuple(flat), value=float(a["value"]))]
    raise NotImplementedError(f"op {op} in the torch peer")


def _axes(a, x):
    return tuple(int(v) % x.dim() for v in a["axes"]) if a["axes"] is not None else tuple(range(x.dim()))


def _slice(x, a, torch):
    sl = O.slice_indices(tuple(x.shape), a)
    out = x
    for d, s in enumerate(sl):
        b, e, st = s.indices(x.shape[d])
        if st > 0:
            out = out.narrow(d, b, max(0, e - b))
            if st > 1:
                out = out[(slice(None),) * d + (slice(None, None, st),)]
        else:
            idx = torch.arange(b, e, st, device=x.device)
            out = out.index_select(d, idx)
    return out
