"""ONNX models -> cnnrt Graph. Needs the extra `cnnrt[onnx]` (the `onnx` package, imported lazily).

Every layout change happens here, once. The engine is NHWC; ONNX is NCHW. For every ONNX tensor
the importer keeps the IR tensor that holds it plus a permutation `perm` with
ir = onnx.transpose(perm). Rank-4 float graph inputs enter NHWC (perm (0, 2, 3, 1)); convolutions
and pools want NHWC; element-wise ops, BatchNormalization, Concat, Split, Slice, Pad, Reduce*,
Squeeze/Unsqueeze and Softmax work in whatever layout their input has (constants are permuted at
import, axes remapped); a Transpose only composes permutations; a Reshape is done in the IR layout
when the axes it merges or splits are contiguous there, else after the one Transpose that makes
them so. Flatten/Reshape to (N, K) followed by Gemm/MatMul with constant weights permutes the
weight's rows instead (no transpose at run time: the NHWC-flatten dense of Deep MNIST).

Constants are folded at import: initializers, Constant nodes, and every node whose inputs are all
constant (the Shape/Gather/Concat/Unsqueeze/Cast chains exporters write; Shape of a run-time
tensor is known from the static shapes). Common folds are done here in NumPy; others go to the
single-node `onnx.reference.ReferenceEvaluator`.

A batch dimension that is symbolic, or fixed to 1 by the exporter on a model with one input, is
the batch axis: the graph is `batched`, its stored input has the export batch (1), and a Reshape
that keeps the batch writes 0 (copy) so the graph runs at any batch size.

`graph.meta["onnx"]` says what was done: `input_perm` / `output_perm` per tensor name (a feed in
ONNX layout goes in as feed.transpose(input_perm); an output comes back as
onnx_output.transpose(output_perm): rank-4 outputs are NHWC, others in ONNX order), the opset,
the ops folded away.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..errors import FormatError
from ..ir import ops as O
from ..ir.graph import Graph, Node

_FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}
_INT_TYPES = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 12: "uint32", 13: "uint64",
              9: "bool"}


def _onnx():
    try:
        import onnx  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - depends on the environment
        from ..errors import BackendUnavailable  # noqa: PLC0415
        raise BackendUnavailable("importing ONNX models needs the onnx package: pip install 'cnnrt[onnx]'") from e
    return onnx


def _type_name(onnx, code) -> str:
    """TensorProto's name for an element type code; a code no ONNX version defines, as a number."""
    try:
        return onnx.TensorProto.DataType.Name(code)
    except ValueError:
        return f"unknown type {code}"


# ---------------------------------------------------------------- layout algebra

def _ident(r):
    return tuple(range(r))


def _channels_last(r):
    return (0,) + tuple(range(2, r)) + (1,)


def _drop_axes(perm, axes):
    """Layout after removing logical `axes`: (IR axes removed, new perm)."""
    axes = set(axes)
    keep = [a for a in range(len(perm)) if a not in axes]
    rank = {a: i for i, a in enumerate(keep)}
    ir_drop = [i for i, a in enumerate(perm) if a in axes]
    return ir_drop, tuple(rank[a] for a in perm if a not in axes)


def _uniform(a):
    """The single value of an array that is a broadcast of one value (ConstantOfShape), else None."""
    if isinstance(a, np.ndarray) and a.size > 1 and all(s == 0 for s in a.strides):
        return a.flat[0]
    return None


def _take_cols(w, idx):
    """w[:, idx], keeping a broadcast constant a broadcast (light models' weights are 400 MB of one value)."""
    u = _uniform(w)
    return np.broadcast_to(np.asarray(u, w.dtype), w.shape) if u is not None else w[:, idx]


def _scaled(a, s):
    if s == 1:
        return a
    u = _uniform(a)
    if u is not None:
        return np.broadcast_to(np.asarray(u * s, a.dtype), a.shape)
    return (a * s).astype(a.dtype, copy=False)


class _Dyn:
    """A run-time tensor: IR name, layout (ir = onnx.transpose(perm)), IR shape, batch flag."""
    __slots__ = ("name", "perm", "shape", "batch")

    def __init__(self, name, perm, shape, batch=False):
        self.name, self.perm, self.shape, self.batch = name, tuple(perm), tuple(shape), bool(batch)
        assert len(self.perm) == len(self.shape), (name, perm, shape)

    @property
    def rank(self):
        return len(self.shape)

    @property
    def lshape(self):
        """The ONNX (logical) shape."""
        out = [0] * self.rank
        for i, a in enumerate(self.perm):
            out[a] = self.shape[i]
        return tuple(out)


class _Flat:
    """(N, K) = Flatten of a tensor whose layout is not row-major logical (NHWC after a conv).

    Gemm/MatMul with constant weights take the IR-order flatten and permute the weight's rows
    (ir_flat[:, i] == onnx_flat[:, idx[i]]); any other consumer gets the logical flatten."""

    def __init__(self, src: _Dyn, hint: str):
        self.src, self.hint = src, hint
        ls = src.lshape
        self.lshape = (ls[0], int(np.prod(ls[1:], dtype=np.int64)))
        self.batch = src.batch
        self._idx = None
        self._ir = self._logical = None

    @property
    def idx(self) -> np.ndarray:
        """The row permutation, made when a weight of K rows (checked first) is to be permuted: the
        declared input shape alone can imply a K far beyond memory."""
        if self._idx is None:
            ls = self.src.lshape
            self._idx = np.arange(self.lshape[1]).reshape(ls[1:]).transpose([a - 1 for a in self.src.perm[1:]]).ravel()
        return self._idx


# ---------------------------------------------------------------- the importer

class _Importer:
    def __init__(self, model, where: str, name: str):
        self.onnx = _onnx()
        self.model, self.where, self.name = model, where, name
        self.opset = self._opset()
        self.nodes: list[Node] = []
        self.params: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple] = {}
        self.env: dict[str, object] = {}
        self.reserved: set[str] = set()  # ONNX names of inputs and node outputs
        self.ir_names: set[str] = set()  # names taken in the IR
        self._keepalive: list = []  # objects whose id() is part of a cache key
        self.node_names: set[str] = set()
        self.param_cache: dict = {}
        self.folded: dict[str, int] = {}
        self.folded_by_reference: set[str] = set()
        self.unsupported: list[str] = []
        self.cur = None  # the ONNX node being translated (for messages)

    # ---------------------------------------------------------------- messages
    def fail(self, msg):
        n = self.cur
        at = f", node {n.name or '(unnamed)'!r} ({n.op_type})" if n is not None else ""
        raise FormatError(f"{self.where}{at}: {msg}")

    def _opset(self):
        latest = self.onnx.defs.onnx_opset_version()
        v = None
        for o in self.model.opset_import:
            if o.domain in ("", "ai.onnx"):
                v = int(o.version)
        if v is None:
            raise FormatError(f"{self.where}: no opset of the default ONNX domain is imported")
        if v < 6:
            raise FormatError(f"{self.where}: opset {v} is older than 6, the oldest supported")
        if v > latest:
            raise FormatError(f"{self.where}: opset {v} is newer than {latest}, the newest the installed onnx "
                              f"{self.onnx.__version__} knows")
        return v

    # ---------------------------------------------------------------- names, params, nodes
    def fresh(self, base):
        base = base or "t"
        name, i = base, 1
        while name in self.ir_names or name in self.reserved:
            name, i = f"{base}_{i}", i + 1
        self.ir_names.add(name)
        return name

    def take(self, name):
        """An ONNX tensor's own name for the IR tensor that holds it, if still free."""
        if name in self.ir_names:
            return self.fresh(name)
        self.ir_names.add(name)
        return name

    def keep(self, obj):
        """id(obj) for a cache key, with obj kept alive so the id is never reused."""
        self._keepalive.append(obj)
        return id(obj)

    def node_name(self, base):
        name, i = base, 1
        while name in self.node_names:
            name, i = f"{base}_{i}", i + 1
        self.node_names.add(name)
        return name

    def param(self, arr, hint, key=None, exact=False):
        """A constant as an IR param (cached by `key`)."""
        if key is not None and key in self.param_cache:
            return self.param_cache[key]
        arr = np.asarray(arr)
        if arr.dtype.kind not in "fiub":
            self.fail(f"constant {hint!r} has unsupported type {arr.dtype}")
        if arr.dtype == np.bool_:
            arr = arr.astype(np.int64)
        name = self.take(hint) if exact or hint not in self.reserved else self.fresh(hint)
        self.params[name] = arr
        self.shapes[name] = tuple(arr.shape)
        if key is not None:
            self.param_cache[key] = name
        return name

    def emit(self, op, inputs, attrs=None, out=None, hint=None):
        """Append an IR node; returns its output names (shapes recorded)."""
        attrs = dict(attrs or {})
        d = O.OPS[op]
        try:
            shapes = d.shape([self.shapes[t] for t in inputs], {**d.attrs, **attrs})
        except O.OpError as e:
            self.fail(f"{op}: {e}")
        except (TypeError, ValueError, KeyError, IndexError) as e:
            self.fail(f"{op} with attributes {attrs}: {type(e).__name__}: {e}")
        if out is None:
            base = hint or (self.cur.output[0] if self.cur is not None and self.cur.output else op)
            out = [self.fresh(base if len(shapes) == 1 else f"{base}:{i}") for i in range(len(shapes))]
        else:
            out = [self.take(o) for o in out]
        base = (self.cur.name or self.cur.op_type) if self.cur is not None else op
        if hint:
            base = hint
        self.nodes.append(Node(op, self.node_name(base), list(inputs), out, attrs))
        for t, s in zip(out, shapes):
            self.shapes[t] = tuple(int(v) for v in s)
        return out

    def emit_dyn(self, op, inputs, attrs, perm, batch, onnx_out=None, hint=None):
        out = self.emit(op, inputs, attrs, out=[onnx_out] if onnx_out else None, hint=hint)[0]
        return _Dyn(out, perm, self.shapes[out], batch)

    # ---------------------------------------------------------------- operands
    def const_of(self, v, what):
        if v is None:
            return None
        if not isinstance(v, np.ndarray):
            self.fail(f"{what} must be a constant (known when the model loads); here it is computed at run time")
        return v

    def dyn(self, v, hint="const") -> _Dyn:
        """Any operand as a run-time tensor in its current layout (constants become params)."""
        if isinstance(v, _Dyn):
            return v
        if isinstance(v, _Flat):
            return self.flat_logical(v)
        a = np.asarray(v)
        return _Dyn(self.param(a, hint, key=(self.keep(v), _ident(a.ndim))), _ident(a.ndim), a.shape)

    def as_perm(self, v, perm, hint="const") -> _Dyn:
        """The operand in layout `perm`: constants are transposed here, tensors get a node if needed."""
        if isinstance(v, np.ndarray):
            a = np.transpose(v, perm) if v.ndim > 1 else v
            return _Dyn(self.param(a, hint, key=(self.keep(v), tuple(perm))), perm, a.shape)
        d = self.dyn(v)
        if d.perm == tuple(perm):
            return d
        return self.relayout(d, tuple(perm))

    def _data_order(self, d: _Dyn, perm):
        """Logical axes that carry data (size > 1, or the batch) in IR order under `perm`."""
        ls = d.lshape
        return [a for a in perm if ls[a] != 1 or (a == 0 and d.batch)]

    def relayout(self, d: _Dyn, perm) -> _Dyn:
        ls = d.lshape
        new_shape = tuple(ls[a] for a in perm)
        if self._data_order(d, d.perm) == self._data_order(d, perm):  # only size-1 axes move: a reshape
            tgt = list(new_shape)
            if d.batch and d.perm[0] == 0 and perm[0] == 0:
                tgt[0] = 0
            return self.emit_dyn("Reshape", [d.name], {"shape": tuple(tgt)}, perm, d.batch and tgt[0] == 0,
                                 hint=f"{d.name}/relayout")
        q = tuple(d.perm.index(a) for a in perm)
        return self.emit_dyn("Transpose", [d.name], {"perm": q}, perm, d.batch and perm[0] == 0,
                             hint=f"{d.name}/transpose")

    def logical(self, v) -> _Dyn:
        if isinstance(v, np.ndarray):
            return self.dyn(v)
        d = self.dyn(v)
        return self.as_perm(d, _ident(d.rank))

    def flat_ir(self, f: _Flat) -> str:
        if f._ir is None:
            f._ir = self.emit("Flatten", [f.src.name], {"axis": 1}, hint=f"{f.hint}/nhwc_flat")[0]
        return f._ir

    def flat_logical(self, f: _Flat) -> _Dyn:
        if f._logical is None:
            f._logical = self.reshape(f.src, f.lshape, hint=f.hint, allow_flat=False)
        return f._logical

    # ---------------------------------------------------------------- reshape in any layout
    def reshape(self, d: _Dyn, target, hint=None, onnx_out=None, allow_flat=True):
        """Reshape run-time tensor d to logical shape `target` (all dims known), in the IR layout if it can."""
        src = d.lshape
        target = tuple(int(v) for v in target)
        if int(np.prod(src, dtype=np.int64)) != int(np.prod(target, dtype=np.int64)):
            self.fail(f"cannot reshape {src} to {target}")
        groups = _reshape_groups(src, target)
        keep_batch = d.batch and groups is not None and groups[0] == ([0], [0])
        if groups is None:  # zero-size dims: do it in the logical layout
            x = self.as_perm(d, _ident(d.rank))
            return self.emit_dyn("Reshape", [x.name], {"shape": target, "allowzero": 1}, _ident(len(target)), False,
                                 onnx_out, hint)
        pos = {a: i for i, a in enumerate(d.perm)}
        live = lambda a: src[a] != 1 or (a == 0 and d.batch)  # noqa: E731
        gid = {a: k for k, (gi, _) in enumerate(groups) for a in gi}
        seq = [a for a in d.perm if live(a)]
        ok = all(gid[x] != gid[y] or x < y for x, y in zip(seq, seq[1:]))
        seen, last = set(), None
        for a in seq:
            if gid[a] != last and gid[a] in seen:
                ok = False
            seen.add(gid[a])
            last = gid[a]
        if not ok:
            if allow_flat and len(target) == 2 and d.perm[0] == 0 and groups[0] == ([0], [0]) and len(groups) == 2:
                return _Flat(d, hint or (onnx_out or d.name))
            # transpose so that each group is contiguous and in order, groups kept where they are
            key = {}
            for k, (gi, _) in enumerate(groups):
                ps = [pos[a] for a in gi if live(a)]
                key[k] = min(ps) if ps else (key[k - 1] + 0.5 if k else -1)
            order = sorted(range(len(groups)), key=lambda k: (key[k], k))
            perm = tuple(a for k in order for a in groups[k][0])
            d = self.relayout(d, perm)
            pos = {a: i for i, a in enumerate(d.perm)}
        key = {}
        for k, (gi, _) in enumerate(groups):
            ps = [pos[a] for a in gi if live(a)]
            key[k] = min(ps) if ps else (key[k - 1] + 0.5 if k else -1)
        order = sorted(range(len(groups)), key=lambda k: (key[k], k))
        out_perm = tuple(b for k in order for b in groups[k][1])
        ir_target = [target[b] for b in out_perm]
        if keep_batch:
            assert out_perm[0] == 0 and d.perm[0] == 0
            ir_target[0] = 0
        return self.emit_dyn("Reshape", [d.name], {"shape": tuple(ir_target)}, out_perm, keep_batch, onnx_out, hint)

    # ---------------------------------------------------------------- translation
    def run(self):
        onnx = self.onnx
        g = self.model.graph
        from onnx import numpy_helper  # noqa: PLC0415
        inits = {}
        for t in g.initializer:
            has = (t.raw_data or t.float_data or t.int32_data or t.int64_data or t.double_data or t.uint64_data
                   or t.string_data or t.data_location == onnx.TensorProto.EXTERNAL)
            if not has and int(np.prod(list(t.dims), dtype=np.int64)) > 0:
                raise FormatError(f"{self.where}: initializer {t.name!r} has dims {list(t.dims)} but holds no values "
                                  "(weights stripped from the file?)")
            try:
                a = numpy_helper.to_array(t)
            except Exception as e:  # noqa: BLE001
                raise FormatError(f"{self.where}: initializer {t.name!r} cannot be read ({type(e).__name__}: {e})") from None
            if a.size != int(np.prod(list(t.dims), dtype=np.int64)):
                raise FormatError(f"{self.where}: initializer {t.name!r} holds {a.size} values for dims {list(t.dims)}")
            inits[t.name] = a
        for t in g.sparse_initializer:
            raise FormatError(f"{self.where}: sparse initializer {t.values.name!r} is not supported")
        self.env.update(inits)
        real_inputs = [vi for vi in g.input if vi.name not in inits]
        if not real_inputs:
            raise FormatError(f"{self.where}: the graph has no run-time input")
        self.reserved = {vi.name for vi in real_inputs} | {o for n in g.node for o in n.output if o}
        # inputs: static shapes; the batch axis
        dims, types = {}, {}
        for vi in real_inputs:
            tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
            if tt is None:
                raise FormatError(f"{self.where}: input {vi.name!r} is not a tensor")
            et = tt.elem_type
            if et not in _FLOAT_TYPES and et not in _INT_TYPES:
                raise FormatError(f"{self.where}: input {vi.name!r} has element type "
                                  f"{_type_name(onnx, et)}; cnnrt takes float or integer tensors")
            if not tt.HasField("shape"):
                raise FormatError(f"{self.where}: input {vi.name!r} has no shape; cnnrt needs static shapes")
            ds = []
            for d in tt.shape.dim:
                ds.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?"))
            dims[vi.name], types[vi.name] = ds, et
        batched = bool(dims) and all(ds and (isinstance(ds[0], str) or (len(dims) == 1 and ds[0] == 1))
                                     for ds in dims.values())
        inputs, in_perm, input_dtypes = {}, {}, {}
        for name, ds in dims.items():
            shape = []
            for i, v in enumerate(ds):
                if isinstance(v, str):
                    if i == 0 and batched:
                        v = 1
                    else:
                        raise FormatError(f"{self.where}: input {name!r} has a dynamic dimension {i} ({v!r}) in "
                                          f"{ds}; cnnrt needs static shapes (only dimension 0 may be the batch)")
                shape.append(v)
            is_float = types[name] in _FLOAT_TYPES
            perm = _channels_last(4) if len(shape) == 4 and is_float else _ident(len(shape))
            ir_shape = tuple(shape[a] for a in perm)
            inputs[name] = ir_shape
            in_perm[name] = perm
            self.ir_names.add(name)
            self.shapes[name] = ir_shape
            if not is_float:
                input_dtypes[name] = "int64"
            self.env[name] = _Dyn(name, perm, ir_shape, batched and len(shape) >= 1)
        # nodes
        for node in g.node:
            self.cur = node
            self.translate(node)
        self.cur = None
        if self.unsupported:
            raise FormatError(f"{self.where}: unsupported ONNX ops (opset {self.opset}): " + "; ".join(self.unsupported))
        # outputs
        outputs, out_perm = [], {}
        for vi in g.output:
            v = self.env.get(vi.name)
            if v is None:
                raise FormatError(f"{self.where}: output {vi.name!r} is not produced by any node")
            if isinstance(v, np.ndarray):
                name = self.param(v, vi.name, exact=True)
                outputs.append(name)
                out_perm[name] = list(_ident(v.ndim))
                continue
            d = self.dyn(v)
            d = self.as_perm(d, _channels_last(4) if d.rank == 4 else _ident(d.rank))  # rank 4 out: NHWC
            name = d.name
            if name != vi.name or name in outputs:
                name = self.emit("Identity", [d.name], out=[vi.name], hint=f"{vi.name}/output")[0]
            outputs.append(name)
            out_perm[name] = list(d.perm)
        used = {t for n in self.nodes for t in n.inputs} | set(outputs)
        params = {k: v for k, v in self.params.items() if k in used}
        meta = {"onnx": {"file": self.where, "opset": self.opset, "ir_version": int(self.model.ir_version),
                         "producer": f"{self.model.producer_name} {self.model.producer_version}".strip(),
                         "input_perm": {k: list(v) for k, v in in_perm.items()}, "output_perm": out_perm,
                         "output_names": [vi.name for vi in g.output],
                         "folded": dict(sorted(self.folded.items())),
                         "folded_by_reference": sorted(self.folded_by_reference)}}
        return Graph(self.nodes, inputs, outputs, params, name=self.name, meta=meta, batched=batched,
                     input_dtypes=input_dtypes)

    def attrs(self, node):
        from onnx import helper, numpy_helper  # noqa: PLC0415
        out = {}
        for a in node.attribute:
            if a.ref_attr_name:
                self.fail(f"attribute {a.name!r} refers to a function attribute")
            if a.type in (self.onnx.AttributeProto.GRAPH, self.onnx.AttributeProto.GRAPHS):
                out[a.name] = _SUBGRAPH
                continue
            try:
                v = helper.get_attribute_value(a)
                if isinstance(v, bytes):
                    v = v.decode()
                elif isinstance(v, self.onnx.TensorProto):
                    v = numpy_helper.to_array(v)
                elif isinstance(v, list) and v and isinstance(v[0], bytes):
                    v = [s.decode() for s in v]
            except Exception as e:  # noqa: BLE001 - a damaged attribute: bad UTF-8, a tensor whose data does not fit its dims
                self.fail(f"attribute {a.name!r} cannot be read ({type(e).__name__}: {e})")
            out[a.name] = v
        return out

    def translate(self, node):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        ins = []
        poisoned = False
        for t in node.input:
            if t == "":
                ins.append(None)
            elif t not in self.env:
                raise FormatError(f"{self.where}: node {node.name!r} ({node.op_type}) reads {t!r}, which nothing "
                                  "produces before it")
            else:
                v = self.env[t]
                poisoned |= v is _POISON
                ins.append(v)
        if poisoned:
            if key not in _HANDLERS and key not in _FOLDERS:
                self.unsupported.append(f"{node.name or '(unnamed)'} ({key})")
            for t in node.output:
                self.env[t] = _POISON
            return
        a = self.attrs(node)
        if node.domain not in ("", "ai.onnx"):
            self.unsupported.append(f"{node.name or '(unnamed)'} ({key}: domain {node.domain!r})")
            for t in node.output:
                self.env[t] = _POISON
            return
        const = all(v is None or isinstance(v, np.ndarray) for v in ins) and not any(v is _SUBGRAPH for v in a.values())
        if const and node.op_type in _OLD_AXIS and self.opset < 13:
            const = False  # onnx.reference computes these with opset-13 semantics: run them here instead
        if const and node.op_type not in _NEVER_FOLD:
            outs = self.fold(node, ins, a)
            self.folded[node.op_type] = self.folded.get(node.op_type, 0) + 1
        elif node.op_type in _HANDLERS:
            try:
                outs = _HANDLERS[node.op_type](self, node, ins, a)
            except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError) as e:
                self.fail(f"malformed node or attributes {sorted(a)} ({type(e).__name__}: {e})")
        else:
            self.unsupported.append(f"{node.name or '(unnamed)'} ({node.op_type})")
            outs = [_POISON] * len(node.output)
        for t, v in zip(node.output, outs):
            if t:
                self.env[t] = v

    def fold(self, node, ins, a):
        f = _FOLDERS.get(node.op_type)
        if f is not None:
            try:
                return [None if r is None else np.asarray(r) for r in f(self, ins, a)]
            except FormatError:
                raise
            except Exception as e:  # noqa: BLE001
                self.fail(f"cannot be computed at import: {type(e).__name__}: {e}")
        onnx = self.onnx
        from onnx import helper  # noqa: PLC0415
        from onnx.reference import ReferenceEvaluator  # noqa: PLC0415
        names = [f"i{k}" if v is not None else "" for k, v in enumerate(ins)]
        try:
            n = helper.make_node(node.op_type, names, [f"o{k}" for k in range(len(node.output))], domain=node.domain)
            n.attribute.extend(node.attribute)
            vis = [helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), None)
                   for nm, v in zip(names, ins) if v is not None]
            outs = [helper.make_tensor_value_info(f"o{k}", onnx.TensorProto.UNDEFINED, None)
                    for k in range(len(node.output))]
            m = helper.make_model(helper.make_graph([n], "fold", vis, outs),
                                  opset_imports=[helper.make_opsetid("", self.opset)],
                                  ir_version=self.model.ir_version or 8)
            res = ReferenceEvaluator(m).run(None, {nm: np.asarray(v) for nm, v in zip(names, ins) if v is not None})
        except Exception as e:  # noqa: BLE001
            self.fail(f"cannot be computed at import (its inputs are constant): {type(e).__name__}: {e}")
        self.folded_by_reference.add(node.op_type)
        return [np.asarray(r) for r in res]


class _Poison:
    def __repr__(self):
        return "<unsupported>"


_POISON = _Poison()
_SUBGRAPH = object()


def _reshape_groups(src, dst):
    """Pair minimal runs of input axes with runs of output axes of equal size, or None (zero sizes)."""
    if 0 in src or 0 in dst:
        return None
    groups, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        gi, gj, pi, pj = [], [], 1, 1
        if i < len(src):
            gi.append(i)
            pi = src[i]
            i += 1
        if j < len(dst):
            gj.append(j)
            pj = dst[j]
            j += 1
        while pi != pj:
            if pi < pj:
                if i >= len(src):
                    return None
                gi.append(i)
                pi *= src[i]
                i += 1
            else:
                if j >= len(dst):
                    return None
                gj.append(j)
                pj *= dst[j]
                j += 1
        groups.append((gi, gj))
    return groups


# ---------------------------------------------------------------- constant folding in NumPy

_FOLDERS = {}
_OLD_AXIS = {"Softmax", "LogSoftmax", "Hardmax"}
_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def _folder(*names):
    def wrap(fn):
        for n in names:
            _FOLDERS[n] = fn
        return fn
    return wrap


def _ints(v):
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _axes(imp, ins, a, pos=1, since=13):
    """The `axes` operand: an attribute before `since`, an input from it on."""
    if imp.opset >= since:
        v = ins[pos] if len(ins) > pos else None
        return None if v is None else _ints(imp.const_of(v, "axes"))
    return a.get("axes")


@_folder("Constant")
def _f_constant(imp, ins, a):
    for k in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if k in a:
            v = a[k]
            if k == "value_float" or k == "value_floats":
                return [np.asarray(v, np.float32)]
            if k in ("value_int", "value_ints"):
                return [np.asarray(v, np.int64)]
            return [np.asarray(v)]
    imp.fail(f"Constant with attributes {sorted(a)} is not supported (sparse or string constants)")


@_folder("ConstantOfShape")
def _f_constant_of_shape(imp, ins, a):
    v = a.get("value")
    v = np.asarray(v).reshape(-1)[0] if v is not None else np.float32(0)
    shape = tuple(_ints(ins[0]))
    return [np.broadcast_to(np.asarray(v), shape)]


@_folder("Identity")
def _f_identity(imp, ins, a):
    return [ins[0]]


@_folder("Shape")
def _f_shape(imp, ins, a):
    return [_shape_of(ins[0].shape, a)]


def _shape_of(shape, a):
    r = len(shape)
    s, e = a.get("start", 0), a.get("end", r)
    return np.asarray(shape[slice(s, e)], np.int64)


@_folder("Size")
def _f_size(imp, ins, a):
    return [np.asarray(ins[0].size, np.int64)]


@_folder("Unsqueeze")
def _f_unsqueeze(imp, ins, a):
    axes = _axes(imp, ins, a)
    shape = O.OPS["Unsqueeze"].shape([ins[0].shape], {"axes": axes})[0]
    return [ins[0].reshape(shape)]


@_folder("Squeeze")
def _f_squeeze(imp, ins, a):
    axes = _axes(imp, ins, a)
    shape = O.OPS["Squeeze"].shape([ins[0].shape], {"axes": axes})[0]
    return [ins[0].reshape(shape)]


@_folder("Concat")
def _f_concat(imp, ins, a):
    return [np.concatenate([np.asarray(v) for v in ins if v is not None], axis=int(a["axis"]))]


@_folder("Gather")
def _f_gather(imp, ins, a):
    data, idx = ins
    return [np.take(data, np.asarray(idx, np.int64), axis=int(a.get("axis", 0)))]


@_folder("Cast")
def _f_cast(imp, ins, a):
    from onnx import helper  # noqa: PLC0415
    return [np.asarray(ins[0]).astype(helper.tensor_dtype_to_np_dtype(int(a["to"])))]


@_folder("Reshape")
def _f_reshape(imp, ins, a):
    shape = _ints(ins[1]) if imp.opset >= 5 else a["shape"]
    return [np.reshape(ins[0], O.reshape_target(ins[0].shape, shape, a.get("allowzero", 0)))]


@_folder("Transpose")
def _f_transpose(imp, ins, a):
    return [np.transpose(ins[0], a.get("perm"))]


# ---------------------------------------------------------------- ops with run-time inputs

_HANDLERS = {}


def _handler(*names):
    def wrap(fn):
        for n in names:
            _HANDLERS[n] = fn
        return fn
    return wrap


def _out(node, k=0):
    return node.output[k] if len(node.output) > k and node.output[k] else None


@_handler("Identity")
def _h_identity(imp, node, ins, a):
    return [ins[0]]


@_handler("Dropout")
def _h_dropout(imp, node, ins, a):
    if imp.opset >= 12 and len(ins) > 2 and ins[2] is not None:
        if bool(np.asarray(imp.const_of(ins[2], "training_mode")).reshape(-1)[0]):
            imp.fail("training mode is not supported (inference only)")
    outs = [ins[0]]
    if len(node.output) > 1 and node.output[1]:
        # inference keeps everything: an all-true mask, as a zero-strided view (the input's declared
        # shape may be far larger than memory; nothing that size is allocated here)
        outs.append(np.broadcast_to(np.True_, _lshape(ins[0])))
    return outs


def _lshape(v):
    if isinstance(v, np.ndarray):
        return v.shape
    return v.lshape


@_handler("Shape")
def _h_shape(imp, node, ins, a):
    if ins[0].batch if isinstance(ins[0], (_Dyn, _Flat)) else False:
        imp.folded["Shape(batch)"] = imp.folded.get("Shape(batch)", 0) + 1
    imp.folded["Shape"] = imp.folded.get("Shape", 0) + 1
    return [_shape_of(_lshape(ins[0]), a)]


@_handler("Size")
def _h_size(imp, node, ins, a):
    imp.folded["Size"] = imp.folded.get("Size", 0) + 1
    return [np.asarray(int(np.prod(_lshape(ins[0]), dtype=np.int64)), np.int64)]


_UNARY = ["Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Erf", "Softplus", "HardSwish"]
_UNARY_ATTRS = {"LeakyRelu": {"alpha": 0.01}, "HardSigmoid": {"alpha": 0.2, "beta": 0.5}, "Elu": {"alpha": 1.0},
                "Gelu": {"approximate": "none"}}


@_handler(*_UNARY, *_UNARY_ATTRS)
def _h_unary(imp, node, ins, a):
    op = node.op_type
    d = imp.dyn(ins[0])
    attrs = {k: a.get(k, v) for k, v in _UNARY_ATTRS.get(op, {}).items()}
    return [imp.emit_dyn(op, [d.name], attrs, d.perm, d.batch, _out(node))]


@_handler("Clip")
def _h_clip(imp, node, ins, a):
    d = imp.dyn(ins[0])
    if imp.opset < 11:
        lo, hi = a.get("min", -math.inf), a.get("max", math.inf)
        return [imp.emit_dyn("Clip", [d.name], {"min": float(lo), "max": float(hi)}, d.perm, d.batch, _out(node))]
    lo = ins[1] if len(ins) > 1 else None
    hi = ins[2] if len(ins) > 2 else None
    if all(v is None or isinstance(v, np.ndarray) for v in (lo, hi)):
        attrs = {"min": float(np.asarray(lo).reshape(-1)[0]) if lo is not None else -math.inf,
                 "max": float(np.asarray(hi).reshape(-1)[0]) if hi is not None else math.inf}
        return [imp.emit_dyn("Clip", [d.name], attrs, d.perm, d.batch, _out(node))]
    # run-time bounds: max(x, min) then min(., max)
    y = d
    if lo is not None:
        y = _broadcast(imp, "Max", [y, lo], None if hi is not None else _out(node))
    if hi is not None:
        y = _broadcast(imp, "Min", [y, hi], _out(node))
    return [y]


def _broadcast(imp, op, vals, onnx_out=None, attrs=None):
    """An element-wise IR op over ONNX-broadcast operands, in the layout of the first largest tensor."""
    ranks = [np.ndim(v) if isinstance(v, np.ndarray) else len(v.lshape) for v in vals]
    r = max(ranks)
    base = None
    for v, k in zip(vals, ranks):
        if not isinstance(v, np.ndarray) and k == r:
            base = imp.dyn(v)
            break
    perm = base.perm if base is not None else _ident(r)
    names, batch = [], False
    for v, k in zip(vals, ranks):
        if isinstance(v, np.ndarray):
            c = np.asarray(v).reshape((1,) * (r - v.ndim) + v.shape).transpose(perm)
            while c.ndim and c.shape[0] == 1 and c.ndim > 0:
                c = c[0]
            names.append(imp.param(c, f"{onnx_out or op}.const", key=(imp.keep(v), perm, r)))
            continue
        d = imp.dyn(v)
        ext = tuple(range(r - k)) + tuple(p + r - k for p in d.perm)
        if ext != perm:
            if k < r:
                d = imp.emit_dyn("Unsqueeze", [d.name], {"axes": tuple(range(r - k))}, ext, False,
                                 hint=f"{d.name}/unsqueeze")
            d = imp.relayout(d, perm)
        batch |= d.batch and k == r
        names.append(d.name)
    return imp.emit_dyn(op, names, attrs or {}, perm, batch, onnx_out)


@_handler("Add", "Sub", "Mul", "Div", "Pow", "PRelu")
def _h_binary(imp, node, ins, a):
    vals = list(ins[:2])
    if imp.opset < 7 and node.op_type == "PRelu" and 1 <= len(_lshape(vals[1])) < len(_lshape(vals[0])):
        a = {"broadcast": 1, "axis": 1}  # opset 6: a per-channel slope
    if imp.opset < 7 and a.get("broadcast") and "axis" in a:
        # opset 6: B's axes line up with A's from `axis` on; trailing size-1 axes make it NumPy broadcasting
        ra, rb = len(_lshape(vals[0])), len(_lshape(vals[1]))
        trail = ra - (int(a["axis"]) % ra) - rb
        if trail < 0:
            imp.fail(f"axis {a['axis']} does not fit operands of rank {ra} and {rb}")
        if trail and isinstance(vals[1], np.ndarray):
            vals[1] = vals[1].reshape(vals[1].shape + (1,) * trail)
        elif trail:
            d = imp.dyn(vals[1])
            vals[1] = imp.emit_dyn("Unsqueeze", [d.name], {"axes": tuple(range(rb, rb + trail))},
                                   d.perm + tuple(range(rb, rb + trail)), False, hint=f"{d.name}/unsqueeze")
    return [_broadcast(imp, node.op_type, vals, _out(node))]


@_handler("Sum", "Max", "Min", "Mean")
def _h_variadic(imp, node, ins, a):
    vals = [v for v in ins if v is not None]
    op = {"Sum": "Add", "Mean": "Add"}.get(node.op_type, node.op_type)
    last = node.op_type != "Mean"
    if len(vals) == 1:
        y = imp.dyn(vals[0])
        if last:
            return [y]
    else:
        y = vals[0]
        for k, v in enumerate(vals[1:]):
            y = _broadcast(imp, op, [y, v], _out(node) if last and k == len(vals) - 2 else None)
    if node.op_type == "Mean":
        y = _broadcast(imp, "Mul", [y, np.asarray(1.0 / len(vals), np.float32)], _out(node))
    return [y]


def _resolve_pads(imp, a, in_hw, k_hw, strides, dilations, ceil=False):
    """ONNX pads/auto_pad -> IR (top, left, bottom, right)."""
    ap = a.get("auto_pad", "NOTSET")
    if ap in ("NOTSET", ""):
        p = a.get("pads") or [0, 0, 0, 0]
        if len(p) != 4:
            imp.fail(f"pads {p} do not describe a 2-D window")
        return tuple(int(v) for v in p)
    if ap == "VALID":
        return (0, 0, 0, 0)
    if ap not in ("SAME_UPPER", "SAME_LOWER"):
        imp.fail(f"auto_pad {ap!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    begin, end = [], []
    for n, k, s, d in zip(in_hw, k_hw, strides, dilations):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        lo = total // 2 if ap == "SAME_UPPER" else total - total // 2
        begin.append(lo)
        end.append(total - lo)
    return (begin[0], begin[1], end[0], end[1])


def _need_2d(imp, v, what):
    r = len(_lshape(v))
    if r != 4:
        imp.fail(f"{r - 2}-D {what} is not supported (cnnrt runs 2-D image models: NCHW inputs of rank 4)")


@_handler("Conv")
def _h_conv(imp, node, ins, a):
    x, w = ins[0], ins[1]
    _need_2d(imp, x, "convolution")
    xd = imp.as_perm(x, _channels_last(4))
    wshape = _lshape(w)
    if len(wshape) != 4:
        imp.fail(f"weights of shape {wshape} are not (O, I/group, KH, KW)")
    wd = imp.as_perm(w, (0, 2, 3, 1), hint=node.input[1])
    ks = tuple(a.get("kernel_shape") or wshape[2:])
    if tuple(ks) != tuple(wshape[2:]):
        imp.fail(f"kernel_shape {ks} does not match weights {wshape}")
    st = tuple(a.get("strides") or (1, 1))
    di = tuple(a.get("dilations") or (1, 1))
    pads = _resolve_pads(imp, a, xd.lshape[2:], ks, st, di)
    names = [xd.name, wd.name]
    if len(ins) > 2 and ins[2] is not None:
        names.append(imp.as_perm(ins[2], (0,), hint=node.input[2]).name)
    attrs = {"strides": st, "dilations": di, "pads": pads, "group": int(a.get("group", 1))}
    return [imp.emit_dyn("Conv", names, attrs, _channels_last(4), xd.batch, _out(node))]


@_handler("MaxPool", "AveragePool")
def _h_pool(imp, node, ins, a):
    _need_2d(imp, ins[0], "pooling")
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        imp.fail("the Indices output of MaxPool is not supported")
    xd = imp.as_perm(ins[0], _channels_last(4))
    ks = tuple(a.get("kernel_shape") or ())
    if len(ks) != 2:
        imp.fail(f"kernel_shape {ks} does not describe a 2-D window")
    st = tuple(a.get("strides") or (1, 1))
    di = tuple(a.get("dilations") or (1, 1))
    pads = _resolve_pads(imp, a, xd.lshape[2:], ks, st, di)
    attrs = {"kernel_shape": ks, "strides": st, "dilations": di, "pads": pads, "ceil_mode": int(a.get("ceil_mode", 0))}
    if node.op_type == "AveragePool":
        attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
    return [imp.emit_dyn(node.op_type, [xd.name], attrs, _channels_last(4), xd.batch, _out(node))]


@_handler("GlobalAveragePool", "GlobalMaxPool")
def _h_global_pool(imp, node, ins, a):
    r = len(_lshape(ins[0]))
    if r < 3:
        imp.fail(f"needs an (N, C, spatial...) input, got rank {r}")
    xd = imp.as_perm(ins[0], _channels_last(r))
    return [imp.emit_dyn(node.op_type, [xd.name], {}, _channels_last(r), xd.batch, _out(node))]


@_handler("BatchNormalization")
def _h_bn(imp, node, ins, a):
    if a.get("training_mode", 0):
        imp.fail("training mode is not supported (inference only)")
    if imp.opset < 9 and not a.get("spatial", 1):
        imp.fail("spatial=0 (per-activation statistics) is not supported")
    if any(o for o in node.output[1:]):
        imp.fail("the running statistics outputs (training) are not supported")
    xd = imp.dyn(ins[0])
    if xd.rank < 2:
        imp.fail(f"needs an (N, C, ...) input, got rank {xd.rank}")
    axis = xd.perm.index(1)
    names = [xd.name] + [imp.as_perm(v, (0,), hint=node.input[k + 1]).name for k, v in enumerate(ins[1:5])]
    attrs = {"epsilon": float(a.get("epsilon", 1e-5)), "axis": axis}
    return [imp.emit_dyn("BatchNormalization", names, attrs, xd.perm, xd.batch, _out(node))]


@_handler("LRN")
def _h_lrn(imp, node, ins, a):
    xd = imp.dyn(ins[0])
    if xd.rank < 3:
        imp.fail(f"needs an (N, C, spatial...) input, got rank {xd.rank}")
    attrs = {"size": int(a["size"]), "alpha": float(a.get("alpha", 1e-4)), "beta": float(a.get("beta", 0.75)),
             "bias": float(a.get("bias", 1.0)), "axis": xd.perm.index(1)}
    return [imp.emit_dyn("LRN", [xd.name], attrs, xd.perm, xd.batch, _out(node))]


@_handler("Softmax", "LogSoftmax")
def _h_softmax(imp, node, ins, a):
    xd = imp.dyn(ins[0])
    r = xd.rank
    ax = int(a.get("axis", -1 if imp.opset >= 13 else 1))
    if not -r <= ax < max(r, 1):
        imp.fail(f"axis {ax} is out of range for rank {r}")
    ax %= max(r, 1)
    if imp.opset >= 13 or ax == r - 1:
        return [imp.emit_dyn(node.op_type, [xd.name], {"axis": xd.perm.index(ax)}, xd.perm, xd.batch, _out(node))]
    # before opset 13: softmax over all axes from `axis` on, taken together
    ls = xd.lshape
    flat = imp.reshape(xd, (int(np.prod(ls[:ax], dtype=np.int64)), int(np.prod(ls[ax:], dtype=np.int64))),
                       hint=f"{node.output[0]}/2d", allow_flat=False)
    flat = imp.as_perm(flat, (0, 1))
    sm = imp.emit_dyn(node.op_type, [flat.name], {"axis": -1}, (0, 1), flat.batch, hint=f"{node.output[0]}/2d")
    return [imp.reshape(sm, ls, onnx_out=_out(node), allow_flat=False)]


@_handler("Gemm")
def _h_gemm(imp, node, ins, a):
    A, B = ins[0], ins[1]
    C = ins[2] if len(ins) > 2 else None
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    ta, tb = int(a.get("transA", 0)), int(a.get("transB", 0))
    if len(_lshape(A)) != 2 or len(_lshape(B)) != 2:
        imp.fail(f"needs 2-D operands, got {_lshape(A)} and {_lshape(B)}")
    out = _out(node)
    if isinstance(B, np.ndarray) and not isinstance(A, np.ndarray):
        W = B if tb else B.T  # (O, K)
        W = _scaled(W, alpha)
        if isinstance(A, _Flat) and not ta:
            if W.shape[1] != A.lshape[1]:
                imp.fail(f"weights of shape {tuple(B.shape)} do not fit an input of {A.lshape[1]} features")
            W = _take_cols(W, A.idx)
            x = imp.flat_ir(A)
            batch = A.batch
        else:
            xd = imp.dyn(A)
            if ta:
                xd = _Dyn(xd.name, tuple(reversed(xd.perm)), xd.shape, False)
            xd = imp.as_perm(xd, (0, 1))
            x, batch = xd.name, xd.batch
        o = W.shape[0]
        names = [x, imp.param(W, node.input[1], key=(imp.keep(B), "gemm", alpha, tb, imp.keep(A)))]
        bias_after = None
        if C is not None:
            if isinstance(C, np.ndarray) and C.ndim and C.shape[-1] not in (1, o):
                imp.fail(f"C of shape {C.shape} does not broadcast to ({o},) outputs")
            if isinstance(C, np.ndarray) and (C.ndim <= 1 or (C.ndim == 2 and C.shape[0] == 1)):
                c = np.broadcast_to(np.asarray(C).reshape(C.shape[-1:] if C.ndim else ()), (o,))
                names.append(imp.param(_scaled(np.ascontiguousarray(c), beta), node.input[2]))
            else:
                bias_after = C
        y = imp.emit_dyn("Dense", names, {}, (0, 1), batch, out if bias_after is None else None)
        if bias_after is not None:
            c = _scaled(bias_after, beta) if isinstance(bias_after, np.ndarray) else bias_after
            if not isinstance(c, np.ndarray) and beta != 1:
                c = _broadcast(imp, "Mul", [c, np.asarray(beta, np.float32)])
            y = _broadcast(imp, "Add", [y, c], out)
        return [y]
    # general: run-time B
    def operand(v, t):
        if isinstance(v, np.ndarray):
            return imp.dyn(v.T if t else v)
        d = imp.dyn(v)
        if t:
            d = _Dyn(d.name, tuple(reversed(d.perm)), d.shape, False)
        return imp.as_perm(d, (0, 1))
    ad, bd = operand(A, ta), operand(B, tb)
    last = C is None and alpha == 1
    y = imp.emit_dyn("MatMul", [ad.name, bd.name], {}, (0, 1), ad.batch, out if last else None)
    if alpha != 1:
        y = _broadcast(imp, "Mul", [y, np.asarray(alpha, np.float32)], out if C is None else None)
    if C is not None:
        c = C
        if beta != 1:
            c = _scaled(C, beta) if isinstance(C, np.ndarray) else _broadcast(imp, "Mul", [C, np.asarray(beta, np.float32)])
        y = _broadcast(imp, "Add", [y, c], out)
    return [y]


@_handler("MatMul")
def _h_matmul(imp, node, ins, a):
    A, B = ins
    out = _out(node)
    if isinstance(B, np.ndarray) and B.ndim == 2 and not isinstance(A, np.ndarray):
        la = _lshape(A)
        if isinstance(A, _Flat):
            if B.shape[0] != A.lshape[1]:
                imp.fail(f"weights of shape {tuple(B.shape)} do not fit an input of {A.lshape[1]} features")
            W = _take_cols(B.T, A.idx)
            return [imp.emit_dyn("Dense", [imp.flat_ir(A), imp.param(W, node.input[1], key=(imp.keep(B), "mm", imp.keep(A)))],
                                 {}, (0, 1), A.batch, out)]
        xd = imp.dyn(A)
        if len(la) == 2:
            xd = imp.as_perm(xd, (0, 1))
            return [imp.emit_dyn("Dense", [xd.name, imp.param(B.T, node.input[1], key=(imp.keep(B), "mmT"))], {}, (0, 1),
                                 xd.batch, out)]
        if len(la) > 2:
            if xd.perm[-1] != len(la) - 1:
                p = tuple(a_ for a_ in xd.perm if a_ != len(la) - 1) + (len(la) - 1,)
                xd = imp.relayout(xd, p)
            return [imp.emit_dyn("MatMul", [xd.name, imp.param(B, node.input[1], key=(imp.keep(B), "mm"))], {}, xd.perm,
                                 xd.batch, out)]
    ad, bd = imp.logical(A), imp.logical(B)
    shape = O.OPS["MatMul"].shape([ad.shape, bd.shape], {})[0]
    return [imp.emit_dyn("MatMul", [ad.name, bd.name], {}, _ident(len(shape)),
                         ad.batch and len(shape) == ad.rank and ad.rank > 1, out)]


@_handler("Flatten")
def _h_flatten(imp, node, ins, a):
    x = ins[0]
    if isinstance(x, _Flat):
        x = imp.flat_logical(x)
    xd = imp.dyn(x)
    r = xd.rank
    ax = int(a.get("axis", 1))
    if not -r <= ax <= r:
        imp.fail(f"axis {ax} is out of range for rank {r}")
    ax = ax + r if ax < 0 else ax
    ls = xd.lshape
    tgt = (int(np.prod(ls[:ax], dtype=np.int64)), int(np.prod(ls[ax:], dtype=np.int64)))
    return [imp.reshape(xd, tgt, onnx_out=_out(node), allow_flat=ax == 1)]


@_handler("Reshape")
def _h_reshape(imp, node, ins, a):
    x = ins[0]
    if imp.opset >= 5:
        shape = _ints(imp.const_of(ins[1], "the target shape"))
    else:
        shape = list(a["shape"])
    ls = _lshape(x)
    try:
        tgt = O.reshape_target(ls, shape, int(a.get("allowzero", 0)))
    except O.OpError as e:
        imp.fail(str(e))
    if isinstance(x, _Flat):
        if tgt == x.lshape:
            return [x]
        x = imp.flat_logical(x)
    return [imp.reshape(imp.dyn(x), tgt, onnx_out=_out(node))]


@_handler("Transpose")
def _h_transpose(imp, node, ins, a):
    d = imp.dyn(ins[0])
    t = a.get("perm")
    t = tuple(int(v) for v in t) if t is not None else tuple(reversed(range(d.rank)))
    if sorted(t) != list(range(d.rank)):
        imp.fail(f"perm {t} is not a permutation of {d.rank} axes")
    q = tuple(t.index(p) for p in d.perm)
    return [_Dyn(d.name, q, d.shape, d.batch and t[0] == 0)]


@_handler("Squeeze")
def _h_squeeze(imp, node, ins, a):
    d = imp.dyn(ins[0])
    ls = d.lshape
    axes = _axes(imp, ins, a)
    axes = [i for i, v in enumerate(ls) if v == 1] if axes is None else [int(v) % max(d.rank, 1) for v in axes]
    if any(ls[i] != 1 for i in axes):
        imp.fail(f"cannot squeeze axes {axes} of {ls}")
    ir_drop, perm = _drop_axes(d.perm, axes)
    return [imp.emit_dyn("Squeeze", [d.name], {"axes": tuple(ir_drop)}, perm, d.batch and 0 not in axes, _out(node))]


@_handler("Unsqueeze")
def _h_unsqueeze(imp, node, ins, a):
    d = imp.dyn(ins[0])
    axes = _axes(imp, ins, a)
    if axes is None:
        imp.fail("needs axes")
    rr = d.rank + len(axes)
    new = sorted(int(v) % rr for v in axes)
    old = [i for i in range(rr) if i not in new]
    it = iter(d.perm)
    perm = tuple(j if j in new else old[next(it)] for j in range(rr))
    return [imp.emit_dyn("Unsqueeze", [d.name], {"axes": tuple(new)}, perm, d.batch and 0 not in new, _out(node))]


@_handler("Concat")
def _h_concat(imp, node, ins, a):
    vals = [v for v in ins if v is not None]
    base = next(imp.dyn(v) for v in vals if not isinstance(v, np.ndarray))
    r = base.rank
    ax = int(a["axis"])
    if not -r <= ax < r:
        imp.fail(f"axis {ax} is out of range for rank {r}")
    ax %= r
    ranks = [len(_lshape(v)) for v in vals]
    if any(k != r for k in ranks):
        imp.fail(f"inputs of ranks {ranks} cannot be concatenated (they must have one rank)")
    names = [imp.as_perm(v, base.perm, hint=f"{node.output[0]}.const").name for v in vals]
    batch = base.batch and ax != 0
    return [imp.emit_dyn("Concat", names, {"axis": base.perm.index(ax)}, base.perm, batch, _out(node))]


@_handler("Split")
def _h_split(imp, node, ins, a):
    d = imp.dyn(ins[0])
    r = d.rank
    ax = int(a.get("axis", 0))
    if not -r <= ax < r:
        imp.fail(f"axis {ax} is out of range for rank {r}")
    ax %= r
    n = d.lshape[ax]
    k = len(node.output)
    if imp.opset >= 13:
        sp = ins[1] if len(ins) > 1 else None
        sp = _ints(imp.const_of(sp, "split")) if sp is not None else None
    else:
        sp = a.get("split")
    if sp is None:
        if imp.opset >= 18 and "num_outputs" in a:
            k = int(a["num_outputs"])
            c = -(-n // k)
            sp = [c] * (k - 1) + [n - c * (k - 1)]
        else:
            if n % k:
                imp.fail(f"dimension {ax} of size {n} does not split into {k} equal parts")
            sp = [n // k] * k
    outs = imp.emit("Split", [d.name], {"axis": d.perm.index(ax), "split": tuple(int(v) for v in sp)},
                    out=[o for o in node.output])
    return [_Dyn(o, d.perm, imp.shapes[o], d.batch and ax != 0) for o in outs]


@_handler("Slice")
def _h_slice(imp, node, ins, a):
    d = imp.dyn(ins[0])
    r = d.rank
    if imp.opset >= 10:
        starts = _ints(imp.const_of(ins[1], "starts"))
        ends = _ints(imp.const_of(ins[2], "ends"))
        axes = _ints(imp.const_of(ins[3], "axes")) if len(ins) > 3 and ins[3] is not None else None
        steps = _ints(imp.const_of(ins[4], "steps")) if len(ins) > 4 and ins[4] is not None else None
    else:
        starts, ends, axes, steps = list(a["starts"]), list(a["ends"]), a.get("axes"), None
    if axes is None:
        axes = list(range(len(starts)))
    axes = [int(v) + r if int(v) < 0 else int(v) for v in axes]
    if any(not 0 <= v < r for v in axes):
        imp.fail(f"axes {axes} are out of range for rank {r}")
    attrs = {"starts": tuple(starts), "ends": tuple(ends), "axes": tuple(d.perm.index(v) for v in axes),
             "steps": tuple(steps) if steps is not None else None}
    return [imp.emit_dyn("Slice", [d.name], attrs, d.perm, d.batch and 0 not in axes, _out(node))]


@_handler("Pad")
def _h_pad(imp, node, ins, a):
    d = imp.dyn(ins[0])
    r = d.rank
    mode = a.get("mode", "constant")
    if mode != "constant":
        imp.fail(f"pad mode {mode!r} is not supported (only constant)")
    if imp.opset >= 11:
        pads = _ints(imp.const_of(ins[1], "pads"))
        value = ins[2] if len(ins) > 2 else None
        value = float(np.asarray(imp.const_of(value, "constant_value")).reshape(-1)[0]) if value is not None else 0.0
        axes = _ints(imp.const_of(ins[3], "axes")) if len(ins) > 3 and ins[3] is not None else None
    else:
        pads, value, axes = list(a.get("pads") or a.get("paddings")), float(a.get("value", 0.0)), None
    if axes is not None:
        axes = [v % r for v in axes]
        if len(pads) != 2 * len(axes):
            imp.fail(f"pads {pads} do not fit axes {axes}")
        full = [0] * (2 * r)
        for i, ax in enumerate(axes):
            full[ax], full[ax + r] = pads[i], pads[i + len(axes)]
        pads = full
    if len(pads) != 2 * r:
        imp.fail(f"pads {pads} do not fit rank {r}")
    ir = [pads[p] for p in d.perm] + [pads[p + r] for p in d.perm]
    batch = d.batch and pads[0] == 0 and pads[r] == 0
    return [imp.emit_dyn("Pad", [d.name], {"pads": tuple(ir), "value": value}, d.perm, batch, _out(node))]


_REDUCE_SINCE = {"ReduceSum": 13}


@_handler("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
def _h_reduce(imp, node, ins, a):
    op = node.op_type
    d = imp.dyn(ins[0])
    r = d.rank
    axes = _axes(imp, ins, a, since=_REDUCE_SINCE.get(op, 18))
    keep = int(a.get("keepdims", 1))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return [d]
        axes = list(range(r))
    axes = sorted({int(v) % r for v in axes})
    ir_axes = tuple(sorted(d.perm.index(v) for v in axes))
    if keep:
        perm = d.perm
    else:
        _, perm = _drop_axes(d.perm, axes)
    return [imp.emit_dyn(op, [d.name], {"axes": ir_axes, "keepdims": keep}, perm, d.batch and 0 not in axes,
                         _out(node))]


@_handler("Gather")
def _h_gather(imp, node, ins, a):
    data, idx = ins
    if not isinstance(idx, np.ndarray):
        imp.fail("run-time indices are not supported (indices must be constant)")
    d = imp.logical(data)
    r = d.rank
    ax = int(a.get("axis", 0))
    if not -r <= ax < r:
        imp.fail(f"axis {ax} is out of range for rank {r}")
    ax %= r
    idx = np.asarray(idx, np.int64)
    n = d.lshape[ax]
    if ((idx < -n) | (idx >= n)).any():
        imp.fail(f"indices out of range for dimension {ax} of size {n}")
    idx = np.where(idx < 0, idx + n, idx)
    out_r = r - 1 + idx.ndim
    return [imp.emit_dyn("Gather", [d.name, imp.param(idx, f"{node.output[0]}.indices")], {"axis": ax},
                         _ident(out_r), d.batch and ax != 0, _out(node))]


@_handler("Cast", "CastLike")
def _h_cast(imp, node, ins, a):
    from onnx import helper  # noqa: PLC0415
    if node.op_type == "Cast":
        to = int(a["to"])
    else:
        t = ins[1]
        to = helper.np_dtype_to_tensor_dtype(t.dtype) if isinstance(t, np.ndarray) else 1
    if to not in _FLOAT_TYPES:
        imp.fail(f"a cast of a run-time tensor to {_type_name(imp.onnx, to)} is not supported "
                 "(cnnrt computes in floating point)")
    return [ins[0]]


# ---------------------------------------------------------------- entry point

def _check_text(model, where: str) -> None:
    """Every name the importer reads is text: protobuf hands a string field holding invalid UTF-8
    (a damaged file) back as bytes, which would fail far from here."""
    g = model.graph
    named = [("opset domain", o.domain) for o in model.opset_import]
    for kind, items in (("input", g.input), ("output", g.output), ("initializer", g.initializer),
                        ("value_info", g.value_info)):
        named += [(kind, x.name) for x in items]
    for n in g.node:
        named += [("node", n.name), ("op type", n.op_type), ("domain", n.domain)]
        named += [("tensor", t) for t in list(n.input) + list(n.output)]
        named += [("attribute", a.name) for a in n.attribute]
    for kind, v in named:
        if isinstance(v, bytes):
            raise FormatError(f"{where}: damaged ONNX model: the {kind} name {v!r} is not valid UTF-8 text")


def from_onnx(src, name: str | None = None) -> Graph:
    """An ONNX model (path or onnx.ModelProto) as a cnnrt Graph (NHWC; see the module docstring)."""
    onnx = _onnx()
    if isinstance(src, onnx.ModelProto):
        model, where = src, f"ONNX model {src.graph.name or '(unnamed)'!r}"
        default = src.graph.name or "onnx-model"
    else:
        path = os.fspath(src)
        where = f"{path}"
        if not os.path.isfile(path):
            raise FormatError(f"{path}: no such ONNX file")
        try:
            model = onnx.load(path)
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise FormatError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
        if not model.graph.node and not model.graph.input:
            raise FormatError(f"{path}: not a readable ONNX model (no graph)")
        default = os.path.splitext(os.path.basename(path))[0]
    if not model.opset_import:
        raise FormatError(f"{where}: not a valid ONNX model (no opset_import)")
    _check_text(model, where)
    # no onnx.checker: it refuses files that runtimes run (old IR versions, outputs without shapes);
    # the import checks what it reads and names the node at fault
    return _Importer(model, where, name or default).run()
