"""The bridge between the graph IR and the classic layer chain of `cnnrt.model`.

Deep MNIST and its kind (convolutions with TensorFlow SAME/VALID padding, 2-D max-pools, dense
layers, ReLU, a final softmax, one after another) have hand-tuned kernels on both backends. Those
kernels take a `Model` (a list of layers); `match` finds that shape in any graph, so a model
imported from ONNX or Keras gets the fused kernels too, and `to_graph` turns a chain into a graph.
"""
from __future__ import annotations

from ..model import Conv2D, Dense, MaxPool2D, Model, Softmax, same_pads
from .graph import Graph, Node


def _pads(n, k, s, padding):
    return same_pads(n, k, s) if padding == "same" else (0, 0)


def to_graph(model: Model) -> Graph:
    """A chain as a graph: input 'images' (1, H, W, C), output 'probabilities' (or 'logits')."""
    nodes, params = [], {}
    cur, shape = "images", model.input_shape
    flat = False

    def emit(op, name, ins, attrs=None, out=None):
        nonlocal cur
        out = out or name
        nodes.append(Node(op, name, ins, [out], attrs or {}))
        cur = out

    for layer, nxt in zip(model.layers, model.shapes[1:]):
        if isinstance(layer, Conv2D):
            o, kh, kw, _ = layer.weight.shape
            (pt, pb), (pl, pr) = _pads(shape[0], kh, layer.stride, layer.padding), _pads(shape[1], kw, layer.stride, layer.padding)
            params[f"{layer.name}.weight"], params[f"{layer.name}.bias"] = layer.weight, layer.bias
            emit("Conv", layer.name, [cur, f"{layer.name}.weight", f"{layer.name}.bias"],
                 {"strides": (layer.stride,) * 2, "pads": (pt, pl, pb, pr)})
        elif isinstance(layer, MaxPool2D):
            (pt, pb), (pl, pr) = _pads(shape[0], layer.size, layer.stride, layer.padding), _pads(shape[1], layer.size, layer.stride, layer.padding)
            emit("MaxPool", layer.name, [cur], {"kernel_shape": (layer.size,) * 2, "strides": (layer.stride,) * 2,
                                                 "pads": (pt, pl, pb, pr)})
        elif isinstance(layer, Dense):
            if not flat and len(shape) != 1:
                emit("Flatten", f"{layer.name}.flatten", [cur], {"axis": 1})
            flat = True
            params[f"{layer.name}.weight"], params[f"{layer.name}.bias"] = layer.weight, layer.bias
            emit("Dense", layer.name, [cur, f"{layer.name}.weight", f"{layer.name}.bias"])
        elif isinstance(layer, Softmax):
            emit("Softmax", layer.name, [cur], {"axis": -1})
        if getattr(layer, "activation", "none") == "relu":
            emit("Relu", f"{layer.name}.relu", [cur])
        shape = nxt
    last = nodes[-1]
    final = "probabilities" if last.op == "Softmax" else "logits"
    last.outputs = [final]
    return Graph(nodes, {"images": (1, *model.input_shape)}, [final], params, name=model.name,
                 meta=dict(model.meta), preprocess={"scale": float(model.input_scale)},
                 labels=(model.meta or {}).get("labels"))


def _padding(n, k, s, p0, p1):
    if (p0, p1) == _pads(n, k, s, "same"):
        return "same"
    if (p0, p1) == (0, 0):
        return "valid"
    return None


def match(g: Graph) -> Model | None:
    """The graph as a layer chain, or None if it is anything else (then generic kernels run it)."""
    if len(g.inputs) != 1 or len(g.outputs) != 1 or not g.batched:
        return None
    if g.preprocess.get("mean") is not None or g.preprocess.get("std") is not None:
        return None
    shape = g.input_shape
    if len(shape) != 3:
        return None
    cur = g.input_name
    layers = []
    nodes = list(g.nodes)
    i = 0
    while i < len(nodes):
        n = nodes[i]
        if n.inputs[:1] != [cur] or len(n.outputs) != 1:
            return None
        if len(g.consumers(cur)) != 1 and cur != g.input_name:
            return None
        s = g.shapes[n.inputs[0]][1:]
        if n.op == "Conv":
            if len(n.inputs) != 3 or n.attrs["group"] != 1 or tuple(n.attrs["dilations"]) != (1, 1):
                return None
            w, b = g.params.get(n.inputs[1]), g.params.get(n.inputs[2])
            st = tuple(n.attrs["strides"])
            if w is None or b is None or st[0] != st[1]:
                return None
            pt, pl, pb, pr = n.attrs["pads"]
            pad_h, pad_w = _padding(s[0], w.shape[1], st[0], pt, pb), _padding(s[1], w.shape[2], st[1], pl, pr)
            if pad_h is None or pad_h != pad_w:
                return None
            layers.append(Conv2D(n.name, w, b, stride=st[0], padding=pad_h, activation="none"))
        elif n.op == "MaxPool":
            k, st = tuple(n.attrs["kernel_shape"]), tuple(n.attrs["strides"])
            if k[0] != k[1] or st[0] != st[1] or n.attrs["ceil_mode"] or tuple(n.attrs["dilations"]) != (1, 1):
                return None
            pt, pl, pb, pr = n.attrs["pads"]
            pad_h, pad_w = _padding(s[0], k[0], st[0], pt, pb), _padding(s[1], k[1], st[1], pl, pr)
            if pad_h is None or pad_h != pad_w:
                return None
            layers.append(MaxPool2D(n.name, size=k[0], stride=st[0], padding=pad_h))
        elif n.op == "Flatten":
            if n.attrs["axis"] != 1 or i + 1 >= len(nodes) or nodes[i + 1].op != "Dense":
                return None
        elif n.op == "Dense":
            if len(n.inputs) != 3 or n.inputs[1] not in g.params or n.inputs[2] not in g.params:
                return None
            layers.append(Dense(n.name, g.params[n.inputs[1]], g.params[n.inputs[2]], activation="none"))
        elif n.op == "Relu":
            if not layers or not isinstance(layers[-1], (Conv2D, Dense)) or layers[-1].activation != "none":
                return None
            layers[-1].activation = "relu"
        elif n.op == "Softmax":
            if i != len(nodes) - 1 or n.attrs["axis"] not in (-1, len(g.shapes[cur]) - 1):
                return None
            layers.append(Softmax(n.name))
        else:
            return None
        cur = n.outputs[0]
        i += 1
    if cur != g.outputs[0] or not layers:
        return None
    try:
        m = Model(input_shape=shape, layers=layers, input_scale=g.input_scale, name=g.name, meta=dict(g.meta))
    except Exception:  # noqa: BLE001 - anything the chain cannot describe runs generically
        return None
    return m if len(m.shapes[-1]) == 1 else None


def as_graph(model) -> Graph:
    """A Graph from a Graph or a layer-chain Model."""
    return to_graph(model) if isinstance(model, Model) else model


def as_chain(model, what: str = "this command") -> Model:
    """A layer-chain Model from a Model or a Graph that is one; a clear error otherwise."""
    if isinstance(model, Model):
        return model
    m = match(model)
    if m is None:
        from ..errors import CnnrtError
        raise CnnrtError(f"model {model.name!r}: {what} supports only layer-chain models (convolutions, "
                         f"max-pools, dense layers, ReLU, softmax in sequence) so far")
    return m
