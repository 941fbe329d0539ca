"""Graph -> ONNX: any cnnrt graph as an ONNX model (so ONNX Runtime can run it beside cnnrt).

The IR is NHWC with (O, KH, KW, I/group) convolution weights; ONNX's spatial ops are NCHW. Each
activation tensor carries a layout as it is written: rank-4 tensors made by spatial ops (Conv,
pools, BatchNormalization) are NCHW in the ONNX graph, and layout-free ops (unary, binary between
two same-layout tensors) keep what they get. Any other op reads its inputs in the IR's own NHWC
layout, with a Transpose inserted where a tensor is NCHW, and writes NHWC; graph inputs and outputs
are NHWC as in cnnrt, so the ONNX model takes exactly cnnrt's input and gives its output.

Only correctness matters here (tests run the export through ONNX Runtime against the float64
reference); the transposes it adds are the ones a hand-written NCHW model would not need only at
the input, the output and around reshapes of 4-D tensors.
"""
from __future__ import annotations

import numpy as np

from ..errors import CnnrtError
from ..ir.graph import Graph

OPSET = 17
NCHW = (0, 3, 1, 2)  # NHWC -> NCHW
NHWC = (0, 2, 3, 1)  # NCHW -> NHWC

SPATIAL = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization"}
LAYOUT_FREE_UNARY = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Exp", "Sqrt",
                     "Neg", "Abs", "Erf", "Elu", "Softplus", "Identity", "Gelu"}
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"}


def to_onnx(g: Graph, batch: str | int = "N"):
    """An onnx.ModelProto computing `g` (inputs and outputs in the IR's own layout)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    layout = {}  # activation tensor -> "nhwc" | "nchw" (as stored in the ONNX graph)
    names = {}  # IR tensor -> ONNX tensor name holding it in its layout
    counter = [0]

    def fresh(base):
        counter[0] += 1
        return f"{base}__{counter[0]}"

    def const(name, array, dtype=np.float32):
        t = fresh(name)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(array, dtype=dtype)), t))
        return t

    def is_param(t):
        return t in g.params

    def as_layout(t, want):
        """The ONNX name of IR tensor t in layout `want` (a Transpose added when needed)."""
        have = layout.get(t, "nhwc")
        if have == want or len(g.shapes[t]) != 4:
            return names[t]
        key = (t, want)
        if key not in names:
            out = fresh(f"{t}_{want}")
            nodes.append(helper.make_node("Transpose", [names[t]], [out], perm=list(NCHW if want == "nchw" else NHWC)))
            names[key] = out
        return names[key]

    def param_in(t):
        if (t, "param") not in names:
            v = g.params[t]
            names[(t, "param")] = const(t, v, np.int64 if v.dtype.kind in "iu" else np.float32)
        return names[(t, "param")]

    def plain(t):
        """Input t as the IR stores it (NHWC)."""
        return param_in(t) if is_param(t) else as_layout(t, "nhwc")

    for name, shape in g.inputs.items():
        names[name] = name
        layout[name] = "nhwc"

    for n in g.nodes:
        a = n.attrs
        out = n.outputs[0]
        onnx_out = fresh(out)
        op = n.op
        if op == "Conv":
            o, kh, kw, cg = g.params[n.inputs[1]].shape if is_param(n.inputs[1]) else g.shapes[n.inputs[1]]
            if not is_param(n.inputs[1]):
                raise CnnrtError(f"export: node {n.name!r} has computed convolution weights (not supported)")
            w = const(n.inputs[1], g.params[n.inputs[1]].transpose(0, 3, 1, 2))
            ins = [as_layout(n.inputs[0], "nchw"), w] + ([plain(n.inputs[2])] if len(n.inputs) > 2 else [])
            pt, pl, pb, pr = a["pads"]
            nodes.append(helper.make_node("Conv", ins, [onnx_out], kernel_shape=[kh, kw], strides=list(a["strides"]),
                                          dilations=list(a["dilations"]), pads=[pt, pl, pb, pr], group=int(a["group"])))
            layout[out] = "nchw"
        elif op in ("MaxPool", "AveragePool"):
            pt, pl, pb, pr = a["pads"]
            kw_ = dict(kernel_shape=list(a["kernel_shape"]), strides=list(a["strides"]), pads=[pt, pl, pb, pr],
                       ceil_mode=int(a["ceil_mode"]))
            if tuple(a["dilations"]) != (1, 1):
                kw_["dilations"] = list(a["dilations"])
            if op == "AveragePool":
                kw_["count_include_pad"] = int(a["count_include_pad"])
            nodes.append(helper.make_node(op, [as_layout(n.inputs[0], "nchw")], [onnx_out], **kw_))
            layout[out] = "nchw"
        elif op in ("GlobalAveragePool", "GlobalMaxPool"):
            if len(g.shapes[n.inputs[0]]) != 4:
                raise CnnrtError(f"export: node {n.name!r}: only 2-D global pools are supported")
            nodes.append(helper.make_node(op, [as_layout(n.inputs[0], "nchw")], [onnx_out]))
            layout[out] = "nchw"
        elif op == "BatchNormalization":
            rank = len(g.shapes[n.inputs[0]])
            if rank == 4 and int(a["axis"]) % 4 == 3:
                x = as_layout(n.inputs[0], "nchw")
                layout[out] = "nchw"
            elif rank == 2 and int(a["axis"]) % 2 == 1:
                x = plain(n.inputs[0])
            else:
                raise CnnrtError(f"export: node {n.name!r}: BatchNormalization over axis {a['axis']} of rank {rank}")
            nodes.append(helper.make_node(op, [x] + [plain(t) for t in n.inputs[1:]], [onnx_out],
                                          epsilon=float(a["epsilon"])))
        elif op in LAYOUT_FREE_UNARY:
            x = n.inputs[0]
            src = names[x] if not is_param(x) else param_in(x)
            layout[out] = layout.get(x, "nhwc")
            if op == "Clip":
                nodes.append(helper.make_node("Clip", [src, const("min", a["min"]), const("max", a["max"])], [onnx_out]))
            elif op == "Gelu":  # (opset 20 has Gelu; spelled out for opset 17)
                if a["approximate"] == "none":
                    t1 = fresh("gelu")
                    nodes.append(helper.make_node("Div", [src, const("sqrt2", np.sqrt(2.0))], [t1]))
                    t2 = fresh("gelu")
                    nodes.append(helper.make_node("Erf", [t1], [t2]))
                    t3 = fresh("gelu")
                    nodes.append(helper.make_node("Add", [t2, const("one", 1.0)], [t3]))
                    t4 = fresh("gelu")
                    nodes.append(helper.make_node("Mul", [src, t3], [t4]))
                    nodes.append(helper.make_node("Mul", [t4, const("half", 0.5)], [onnx_out]))
                else:
                    c = np.sqrt(2 / np.pi)
                    t = [fresh("gelu") for _ in range(6)]
                    nodes += [helper.make_node("Mul", [src, src], [t[0]]),
                              helper.make_node("Mul", [t[0], src], [t[1]]),
                              helper.make_node("Mul", [t[1], const("k", 0.044715)], [t[2]]),
                              helper.make_node("Add", [src, t[2]], [t[3]]),
                              helper.make_node("Mul", [t[3], const("c", c)], [t[4]]),
                              helper.make_node("Tanh", [t[4]], [t[5]])]
                    t6, t7 = fresh("gelu"), fresh("gelu")
                    nodes += [helper.make_node("Add", [t[5], const("one", 1.0)], [t6]),
                              helper.make_node("Mul", [src, t6], [t7]),
                              helper.make_node("Mul", [t7, const("half", 0.5)], [onnx_out])]
            else:
                attrs = {k: v for k, v in a.items() if k in ("alpha", "beta")}
                nodes.append(helper.make_node(op, [src], [onnx_out], **attrs))
        elif op in BINARY:
            x, y = n.inputs
            lx = layout.get(x, "nhwc") if not is_param(x) else None
            ly = layout.get(y, "nhwc") if not is_param(y) else None
            rank_out = len(g.shapes[out])
            if rank_out == 4 and "nchw" in (lx, ly) and all(l in (None, "nchw") or len(g.shapes[t]) == 4
                                                            for l, t in ((lx, x), (ly, y))):
                ins = []
                for t in (x, y):
                    if is_param(t):
                        v = g.params[t]
                        if v.dtype.kind == "f":
                            v = v.reshape((1,) * (4 - v.ndim) + v.shape).transpose(NCHW)
                        ins.append(const(t, v, v.dtype))
                    elif len(g.shapes[t]) == 4:
                        ins.append(as_layout(t, "nchw"))
                    else:
                        ins = None
                        break
                if ins is not None:
                    nodes.append(helper.make_node(op, ins, [onnx_out]))
                    layout[out] = "nchw"
                    names[out] = onnx_out
                    continue
            nodes.append(helper.make_node(op, [plain(x), plain(y)], [onnx_out]))
        elif op == "Dense":
            nodes.append(helper.make_node("Gemm", [plain(t) for t in n.inputs], [onnx_out], transB=1))
        elif op == "Flatten":
            nodes.append(helper.make_node("Flatten", [plain(n.inputs[0])], [onnx_out], axis=int(a["axis"])))
        elif op == "Reshape":
            nodes.append(helper.make_node("Reshape", [plain(n.inputs[0]), const("shape", a["shape"], np.int64)],
                                          [onnx_out], allowzero=int(a["allowzero"])))
        elif op == "Transpose":
            kw_ = {"perm": list(a["perm"])} if a["perm"] is not None else {}
            nodes.append(helper.make_node("Transpose", [plain(n.inputs[0])], [onnx_out], **kw_))
        elif op in ("Softmax", "LogSoftmax", "Concat", "Split"):
            kw_ = {"axis": int(a["axis"])}
            ins = [plain(t) for t in n.inputs]
            if op == "Split":
                ins.append(const("split", a["split"], np.int64))
                outs = [fresh(t) for t in n.outputs]
                nodes.append(helper.make_node(op, ins, outs, **kw_))
                for t, o_ in zip(n.outputs, outs):
                    names[t] = o_
                continue
            nodes.append(helper.make_node(op, ins, [onnx_out], **kw_))
        elif op == "MatMul":
            nodes.append(helper.make_node(op, [plain(t) for t in n.inputs], [onnx_out]))
        elif op == "Slice":
            r = len(g.shapes[n.inputs[0]])
            axes = a["axes"] if a["axes"] is not None else list(range(len(a["starts"])))
            ins = [plain(n.inputs[0]), const("starts", a["starts"], np.int64), const("ends", a["ends"], np.int64),
                   const("axes", [int(v) % r for v in axes], np.int64)]
            if a["steps"] is not None:
                ins.append(const("steps", a["steps"], np.int64))
            nodes.append(helper.make_node(op, ins, [onnx_out]))
        elif op == "Pad":
            nodes.append(helper.make_node("Pad", [plain(n.inputs[0]), const("pads", a["pads"], np.int64),
                                                  const("value", a["value"])], [onnx_out], mode="constant"))
        elif op in ("Squeeze", "Unsqueeze"):
            ins = [plain(n.inputs[0])]
            if a["axes"] is not None:
                ins.append(const("axes", a["axes"], np.int64))
            nodes.append(helper.make_node(op, ins, [onnx_out]))
        elif op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum"):
            kw_ = {"keepdims": int(a["keepdims"])}
            ins = [plain(n.inputs[0])]
            if a["axes"] is not None:
                if op == "ReduceSum":
                    ins.append(const("axes", a["axes"], np.int64))
                else:
                    kw_["axes"] = [int(v) for v in a["axes"]]
            nodes.append(helper.make_node(op, ins, [onnx_out], **kw_))
        else:
            raise CnnrtError(f"export: op {op} of node {n.name!r} has no ONNX writer")
        names[out] = onnx_out
        layout.setdefault(out, "nhwc")

    outputs = []
    for t in g.outputs:
        src = param_in(t) if is_param(t) else as_layout(t, "nhwc")
        nodes.append(helper.make_node("Identity", [src], [t]))
        outputs.append(helper.make_tensor_value_info(t, TensorProto.FLOAT,
                                                     [batch] + list(g.shapes[t][1:]) if g.batched else list(g.shapes[t])))
    inputs = []
    for name, shape in g.inputs.items():
        dt = TensorProto.INT64 if g.input_dtypes.get(name) == "int64" else TensorProto.FLOAT
        inputs.append(helper.make_tensor_value_info(name, dt, [batch] + list(shape[1:]) if g.batched else list(shape)))
    graph = helper.make_graph(nodes, g.name, inputs, outputs, inits)
    om = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cnnrt")
    om.ir_version = 8
    return om


def save(g: Graph, path) -> None:
    """Write `g` as an ONNX file, atomically."""
    import os
    import tempfile

    data = to_onnx(g).SerializeToString()
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".cnnrt-", suffix=".onnx")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
