"""The CPU graph planner: a graph compiled once into fused steps, buffers and a schedule.

`compile_plan(graph, precision)`:
1. rewrites the graph (cnnrt.ir.passes.optimize: BatchNormalization folded, constants folded);
2. covers its nodes with steps, trying the registered patterns (`PATTERNS`, by priority) at each
   node not yet covered: Conv + bias + activations + a residual Add + activations; depthwise
   Conv likewise; GlobalAveragePool + Flatten + Dense; Dense + activations; pools; a binary op or
   activation + activations; Softmax. Each pattern is a function registered with `@pattern`, not a
   special case in the executor. Nodes no pattern takes run one by one (GenericStep: a kernel
   from numpy_graph.KERNELS, else the op's definition);
3. orders the steps (each at the place of its last node) and plans the buffers: every fused
   step writes into a slot, slots are reused once the tensor they hold is dead (per thread, so a
   chunk's tensors stay in the caches from one step to the next).

`Plan.batch_local` says whether every step treats each image on its own (true for any CNN
classifier; false if some op mixes the batch axis): then a batch is split into chunks over the
runner's threads, each chunk running the whole plan. Smaller batches (one image) run step by step
with the spatial steps' output rows split over the threads instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ir import ops as O
from ..ir.graph import Graph, Node
from . import graph_kernels as K

F32 = np.float32
PATTERNS: list = []  # (priority, name, fn(ctx, node) -> Step | None), highest priority first


def pattern(name: str, priority: int = 0):
    """Register a fusion pattern: fn(ctx, node) returns a Step covering `node` (and any nodes after
    it that it takes) or None."""
    def wrap(fn):
        PATTERNS.append((priority, name, fn))
        PATTERNS.sort(key=lambda p: -p[0])
        return fn
    return wrap


class Ctx:
    """What a pattern sees: the graph, its shapes, who reads what, the nodes already taken."""

    def __init__(self, g: Graph, fp16: bool):
        self.g, self.fp16 = g, fp16
        self.params = g.params
        self.taken: set[int] = set()
        self.readers: dict[str, list[Node]] = {}
        for n in g.nodes:
            for t in n.inputs:
                self.readers.setdefault(t, []).append(n)
        self.outputs = set(g.outputs)

    def shape(self, t):
        """Per-image shape of an activation tensor (batch axis dropped)."""
        return tuple(self.g.shapes[t][1:])

    def sole_reader(self, t) -> Node | None:
        """The only node reading t, when t is no graph output and that node is free to take."""
        rs = self.readers.get(t, [])
        if len(rs) != 1 or t in self.outputs or id(rs[0]) in self.taken:
            return None
        return rs[0]

    def is_const(self, t):
        return t in self.params

    def q(self, a):
        a = np.asarray(a, dtype=F32)
        return a.astype(np.float16).astype(F32) if self.fp16 else a


def _follow_epilogue(ctx: Ctx, t: str, nodes: list, inputs: list, epi: K.Epilogue, allow_add: bool) -> str:
    """Extend a step past its main node: activations, at most one residual Add, activations."""
    if ctx.fp16:
        epi.ops.append(("round",))
    added = not allow_add
    while True:
        r = ctx.sole_reader(t)
        if r is None or len(r.outputs) != 1:
            return t
        if r.op in K.ACTIVATIONS and r.inputs[0] == t:
            epi.ops.append(("act", K.ACTIVATIONS[r.op](r.attrs), r.op.lower(), r.op, dict(r.attrs)))
            if ctx.fp16 and not K.exact_in_fp16(r):
                epi.ops.append(("round",))
        elif r.op == "Add" and not added and len(r.inputs) == 2:
            other = r.inputs[1] if r.inputs[0] == t else r.inputs[0]
            if other == t or ctx.is_const(other) or ctx.g.shapes[other] != ctx.g.shapes[t]:
                return t
            epi.ops.append(("add", len(inputs)))
            inputs.append(other)
            if ctx.fp16:
                epi.ops.append(("round",))
            added = True
        else:
            return t
        nodes.append(r)
        t = r.outputs[0]


def _spatial_input(ctx, n):
    x = n.inputs[0]
    return None if ctx.is_const(x) or len(ctx.g.shapes[x]) != 4 else x


@pattern("conv", priority=10)
def conv_pattern(ctx: Ctx, n: Node):
    if n.op != "Conv" or not all(ctx.is_const(t) for t in n.inputs[1:]) or _spatial_input(ctx, n) is None:
        return None
    w = ctx.q(ctx.params[n.inputs[1]])
    b = ctx.q(ctx.params[n.inputs[2]]) if len(n.inputs) > 2 else None
    nodes, inputs, epi = [n], [n.inputs[0]], K.Epilogue()
    out = _follow_epilogue(ctx, n.outputs[0], nodes, inputs, epi, allow_add=True)
    return K.ConvStep(nodes, inputs, out, epi, ctx.shape(n.inputs[0]), w, b, n.attrs, ctx.shape(n.outputs[0]))


@pattern("pool", priority=10)
def pool_pattern(ctx: Ctx, n: Node):
    if n.op not in ("MaxPool", "AveragePool") or _spatial_input(ctx, n) is None:
        return None
    nodes, inputs, epi = [n], [n.inputs[0]], K.Epilogue()
    out = _follow_epilogue(ctx, n.outputs[0], nodes, inputs, epi, allow_add=False)
    return K.PoolStep(nodes, inputs, out, epi, ctx.shape(n.inputs[0]), n.attrs, ctx.shape(n.outputs[0]),
                      "max" if n.op == "MaxPool" else "avg")


def _flattens_to_rows(ctx, r, t):
    """r turns t (N, 1, 1, C) into (N, C)."""
    if r is None or r.op not in ("Flatten", "Reshape", "Squeeze") or r.inputs[0] != t:
        return False
    if r.op == "Flatten" and int(r.attrs["axis"]) != 1:
        return False
    return len(ctx.g.shapes[r.outputs[0]]) == 2 and ctx.g.shapes[r.outputs[0]][0] == ctx.g.shapes[t][0]


@pattern("gap_head", priority=10)
def gap_pattern(ctx: Ctx, n: Node):
    if n.op != "GlobalAveragePool" or _spatial_input(ctx, n) is None:
        return None
    nodes, inputs = [n], [n.inputs[0]]
    t = n.outputs[0]
    flat = dense = None
    r = ctx.sole_reader(t)
    if _flattens_to_rows(ctx, r, t):
        nodes.append(r)
        flat = r
        t = r.outputs[0]
        d = ctx.sole_reader(t)
        # with the compiled kernels the Dense is a step of its own (dense_block, split over the
        # threads for one image) and the pool a compiled one: both run inside one image's program
        compiled = not ctx.fp16 and K.native_lib() is not None and K.DENSE_BLOCK
        if (d is not None and d.op == "Dense" and d.inputs[0] == t and all(ctx.is_const(v) for v in d.inputs[1:])
                and not compiled):
            nodes.append(d)
            dense = (ctx.q(ctx.params[d.inputs[1]]), ctx.q(ctx.params[d.inputs[2]]) if len(d.inputs) > 2 else None)
            t = d.outputs[0]
    epi = K.Epilogue()
    if dense is not None:
        t = _follow_epilogue(ctx, t, nodes, inputs, epi, allow_add=False)
    elif ctx.fp16:
        epi.ops.append(("round",))
    return K.GapStep(nodes, inputs, t, epi, dense, flat is not None, ctx.fp16, in_shape=ctx.shape(n.inputs[0]))


@pattern("dense", priority=10)
def dense_pattern(ctx: Ctx, n: Node):
    if n.op != "Dense" or not all(ctx.is_const(t) for t in n.inputs[1:]) or ctx.is_const(n.inputs[0]):
        return None
    w = ctx.q(ctx.params[n.inputs[1]])
    b = ctx.q(ctx.params[n.inputs[2]]) if len(n.inputs) > 2 else None
    nodes, inputs, epi = [n], [n.inputs[0]], K.Epilogue()
    out = _follow_epilogue(ctx, n.outputs[0], nodes, inputs, epi, allow_add=True)
    return K.DenseStep(nodes, inputs, out, epi, w, b)


@pattern("flatten_dense", priority=11)
def flatten_dense_pattern(ctx: Ctx, n: Node):
    """Flatten (N, H, W, C) -> (N, HWC) read only by a Dense: the Dense reads the 4-D tensor's
    rows as they are (its buffer is contiguous), so the Flatten is no step of its own."""
    if n.op not in ("Flatten", "Reshape", "Squeeze") or ctx.is_const(n.inputs[0]):
        return None
    src = n.inputs[0]
    if len(ctx.g.shapes[src]) < 3 or not _flattens_to_rows(ctx, n, src):
        return None
    d = ctx.sole_reader(n.outputs[0])
    if d is None or d.op != "Dense" or d.inputs[0] != n.outputs[0] or not all(ctx.is_const(t) for t in d.inputs[1:]):
        return None
    w = ctx.q(ctx.params[d.inputs[1]])
    b = ctx.q(ctx.params[d.inputs[2]]) if len(d.inputs) > 2 else None
    nodes, inputs, epi = [n, d], [src], K.Epilogue()
    out = _follow_epilogue(ctx, d.outputs[0], nodes, inputs, epi, allow_add=True)
    return K.DenseStep(nodes, inputs, out, epi, w, b, flat=True)


@pattern("eltwise", priority=5)
def eltwise_pattern(ctx: Ctx, n: Node):
    if len(n.outputs) != 1 or ctx.g.shapes[n.outputs[0]] == () or all(ctx.is_const(t) for t in n.inputs):
        return None
    if n.op in K.EltwiseStep.BINARY:
        consts = [ctx.q(ctx.params[t]) if ctx.is_const(t) else None for t in n.inputs]
        inputs = [t for t in n.inputs if not ctx.is_const(t)]
        # an operand's dim 0 is the batch when it is an activation of the output's rank and batch size
        rank, nb = len(ctx.g.shapes[n.outputs[0]]), ctx.g.shapes[n.outputs[0]][0]
        batched = [c is None and len(ctx.g.shapes[t]) == rank and ctx.g.shapes[t][0] == nb
                   for c, t in zip(consts, n.inputs)]
        nodes, epi = [n], K.Epilogue()
        out = _follow_epilogue(ctx, n.outputs[0], nodes, inputs, epi, allow_add=False)
        return K.EltwiseStep(nodes, inputs, out, epi, n.op, consts, batched)
    if n.op in K.ACTIVATIONS:
        nodes, inputs, epi = [n], [n.inputs[0]], K.Epilogue()
        epi.ops.append(("act", K.ACTIVATIONS[n.op](n.attrs), n.op.lower(), n.op, dict(n.attrs)))
        out = _follow_epilogue(ctx, n.outputs[0], nodes, inputs, epi, allow_add=False)  # (rounds it in fp16)
        return K.EltwiseStep(nodes, inputs, out, epi, n.op, [None], [True])
    return None


@pattern("softmax", priority=10)
def softmax_pattern(ctx: Ctx, n: Node):
    if n.op not in ("Softmax", "LogSoftmax") or ctx.is_const(n.inputs[0]):
        return None
    rank = len(ctx.g.shapes[n.inputs[0]])
    if int(n.attrs["axis"]) % rank != rank - 1 or rank < 2:
        return None
    epi = K.Epilogue([("round",)] if ctx.fp16 else [])
    return K.SoftmaxStep([n], [n.inputs[0]], n.outputs[0], epi, n.op == "LogSoftmax")


# ---------------------------------------------------------------- batch locality

BATCH_AXIS_OPS = {"Softmax", "LogSoftmax", "Concat", "Split"}


def _batch_local(g: Graph) -> bool:
    """Every tensor computed from the inputs keeps the batch on axis 0 and no op mixes images:
    shapes agree at two batch sizes, and no op works along axis 0."""
    if not g.batched:
        return False
    try:
        s2 = g.infer_shapes({k: (2, *v[1:]) for k, v in g.inputs.items()})
        s3 = g.infer_shapes({k: (3, *v[1:]) for k, v in g.inputs.items()})
    except Exception:  # noqa: BLE001 - a graph whose shapes do not follow the batch is run whole
        return False
    for n in g.nodes:
        for t in n.outputs:
            if not s2[t] or s2[t][0] != 2 or s3[t][0] != 3:
                return False
        rank = len(s2[n.inputs[0]]) if n.inputs else 0
        a = n.attrs
        if n.op in BATCH_AXIS_OPS and int(a["axis"]) % max(rank, 1) == 0:
            return False
        if n.op.startswith("Reduce") and (a["axes"] is None or any(int(v) % rank == 0 for v in a["axes"])):
            return False
        if n.op == "Transpose" and (a["perm"] is None or int(a["perm"][0]) != 0):
            return False
        if n.op == "Slice":
            axes = a["axes"] if a["axes"] is not None else range(len(a["starts"]))
            if any(int(v) % rank == 0 for v in axes):
                return False
        if n.op == "MatMul" and len(s2[n.inputs[0]]) < 2:
            return False
    return True


# ---------------------------------------------------------------- the plan

@dataclass
class Plan:
    graph: Graph
    steps: list
    slot_of: dict  # tensor -> slot number (planned outputs and the inputs)
    batch_local: bool
    fp16: bool
    per_image_bytes: int  # arena bytes one image needs (all slots)
    describe: list = field(default_factory=list)

    def out_shape(self, t, n, shapes=None):
        if shapes is not None:
            return shapes[t]
        return (n, *self.graph.shapes[t][1:])


def _generic(ctx: Ctx, n: Node):
    from .numpy_graph import KERNELS

    fn = KERNELS.get(n.op)
    label = n.op.lower() if fn is not None else "reference"
    return K.GenericStep(n, fn or O.OPS[n.op].run, ctx.params, ctx.fp16, label)


def compile_plan(graph: Graph, precision: str = "fp32", optimize: bool = True) -> Plan:
    from ..ir.passes import optimize as run_passes

    g = run_passes(graph) if optimize else graph
    fp16 = precision == "fp16"
    local = _batch_local(g)
    ctx = Ctx(g, fp16)
    pos = {id(n): i for i, n in enumerate(g.nodes)}
    placed = []
    for n in g.nodes:
        if id(n) in ctx.taken:
            continue
        step = None
        # fused kernels are built for the stored per-image shapes: only where the batch axis is free
        if local and len(n.outputs) == 1 and len(ctx.g.shapes[n.outputs[0]]) > 0:
            for _, _, fn in PATTERNS:
                step = fn(ctx, n)
                if step is not None:
                    break
        if step is None:
            step = _generic(ctx, n)
        for m in step.nodes:
            ctx.taken.add(id(m))
        placed.append((max(pos[id(m)] for m in step.nodes), step))
    placed.sort(key=lambda p: p[0])
    steps = [s for _, s in placed]

    # liveness: the last step reading each tensor (generic outputs may be views of their inputs)
    last = {t: len(steps) for t in g.outputs}
    for i, s in enumerate(steps):
        for t in s.inputs:
            last[t] = max(last.get(t, -1), i)
    for i in range(len(steps) - 1, -1, -1):
        s = steps[i]
        if isinstance(s, K.GenericStep):
            end = max(last.get(t, i) for t in s.node.outputs)
            for t in s.inputs:
                last[t] = max(last.get(t, -1), end)
    slot_of, slot_size, free = {}, [], []
    live = {}

    def per_image(t):
        return int(np.prod(g.shapes[t][1:], dtype=np.int64))

    def take(t):
        need = per_image(t)
        best = None
        for k in free:  # the smallest free slot that holds it, else the largest (it grows)
            if slot_size[k] >= need and (best is None or slot_size[k] < slot_size[best]):
                best = k
        if best is None and free:
            best = max(free, key=lambda k: slot_size[k])
        if best is None:
            best = len(slot_size)
            slot_size.append(0)
        else:
            free.remove(best)
        slot_size[best] = max(slot_size[best], need)
        slot_of[t] = best
        live[t] = best

    for name in g.inputs:
        take(name)
    for i, s in enumerate(steps):
        if not isinstance(s, K.GenericStep):
            take(s.output)
        for t in list(live):
            if last.get(t, -1) <= i and t not in g.outputs:
                free.append(live.pop(t))
    describe = []
    for s in steps:
        for m in s.nodes:
            describe.append((m.name, m.op, s.label))
    return Plan(g, steps, slot_of, local, fp16, 4 * sum(slot_size), describe)
