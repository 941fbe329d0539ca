"""The CPU backend's path for any graph: compiled once by the planner, run over threads.

Graphs that are a classic layer chain (Deep MNIST and its kind) go to the staged engine in
numpy_backend.py; everything else runs here. `numpy_plan.compile_plan` covers the graph with
fused steps (graph_kernels.py) and plans their buffers; nodes no pattern covers run one by one
through a kernel registered for their op in `KERNELS` or, failing that, their NumPy definition
in cnnrt.ir.ops (evaluated in float32). `describe()` says which node runs on which kernel.

Threads: one per core this process may use, each with its own buffers and with its BLAS calls
kept on it (numpy_backend's BlasThreads). A batch of at least as many images as threads is split
into chunks that each run the whole plan (a few images per chunk, so that a chunk's tensors stay
in the caches from step to step); a smaller batch (one image) runs step by step with each large
spatial step's output rows split over the threads.

fp16 storage rounds the weights, the input and every node's output to float16, with float32
arithmetic, as `cnnrt.ir.run_reference(..., fp16_storage=True)` does.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import queue
import threading

import numpy as np

from ..ir import ops as O
from ..ir.graph import Graph
from .base import Runner, check_images
from .cpu_kernels import Scratch, ThreadPool
from .graph_kernels import GenericStep

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


MIN_SPLIT_WORK = 1e7  # multiply-adds (about half a millisecond on a core) below which a step is not split over threads
ARENA_BYTES = 16 << 20  # a chunk's planned tensors per thread: sizes the images per chunk (kernels block for the caches inside)
# images per chunk at most: 16 measured fastest of 8-64 for Deep MNIST and ResNet-20 on the 16-core
# Xeon (ResNet-20, 2,000 images on 16 threads: 141 ms against 171 ms with 64) and on the 2-core
# AMD (1-2%), docs/cpu_chunk_*.json; before the head programs (one C call for a chunk's sub-chunks)
# the Python work per sub-chunk made small chunks slower on 16 threads
MAX_CHUNK = 16
# A Dense step with at least this many bytes of weights needs many rows to be a GEMM rather than a
# pass over its weights per few images (Deep MNIST's fc1: 12.8 MB): the steps before it run on
# cache-sized sub-chunks that fill the rows of a chunk of DENSE_ROWS images, the rest on the chunk.
BIG_DENSE_BYTES = 1 << 20
PROGRAMS = os.environ.get("CNNRT_PROGRAMS", "1") != "0"
DENSE_ROWS = 256


class GraphRunner(Runner):
    """Any graph on the CPU. `run(feeds)` for general graphs; `probabilities` for classifiers."""

    backend = "numpy"
    default_batch_size = 256

    def __init__(self, graph: Graph, precision: str, threads: int | None = None, chunk: int | None = None):
        super().__init__(graph, precision)
        from .numpy_backend import _cores
        from .numpy_plan import compile_plan

        self.graph = graph
        self.fp16 = precision == "fp16"
        self.plan = compile_plan(graph, precision)
        self.threads = max(1, threads or _cores())
        self.chunk = chunk or max(1, min(MAX_CHUNK, ARENA_BYTES // max(self.plan.per_image_bytes, 1)))
        pp = graph.preprocess
        c = graph.input_shape[-1] if graph.input_shape else 1
        self.mean = np.asarray(pp["mean"], F32) if pp.get("mean") is not None else None
        self.std = np.asarray(pp["std"], F32) if pp.get("std") is not None else None
        for v, k in ((self.mean, "mean"), (self.std, "std")):
            if v is not None and v.size not in (1, c):
                from ..errors import FormatError
                raise FormatError(f"model {graph.name!r}: preprocess {k} has {v.size} values for {c} channels")
        self._local = threading.local()
        self._pool = ThreadPool(self.threads, "cnnrt-graph", initializer=_blas_one)
        self._shapes: dict = {}
        from .graph_kernels import native_lib
        self._lib = native_lib()
        # compiled programs for small batches (cnnrt_run_program): parts of each step on the
        # threads in C; CNNRT_PROGRAMS=0 turns them off (the same steps then run from Python)
        self.programs = (self._lib is not None and hasattr(self._lib, "cnnrt_run_program") and self.plan.batch_local
                         and PROGRAMS)
        self.split = _dense_split(self.plan)  # (head steps, tail steps, boundary tensors) or None
        self.rows = max(self.chunk, DENSE_ROWS) if self.split else self.chunk  # images per chunk

    def compiled_kernels(self) -> str:
        """One line on the optional compiled kernels: in use (how built, when) or why not."""
        from . import graph_kernels, native

        used = sum(1 for _, _, k in self.plan.describe if k.startswith("native."))
        if not graph_kernels.NATIVE:
            return "compiled kernels: off"
        if native.lib() is None:
            return f"compiled kernels: not used ({native.why()}); NumPy kernels run every step"
        i = native.info()
        built = (f"built now by {i['compiler']} in {i['compile_seconds']:.1f} s" if i["compiled_now"]
                 else f"loaded from the cache ({i['library']})")
        return f"compiled kernels: {used} nodes on them, {i['vector_width']} floats per vector, {built}"

    def describe(self) -> list[tuple[str, str, str]]:
        """(node, op, kernel) for every node of the compiled graph: what runs where. Nodes fused
        into one step share its kernel name (e.g. numpy.conv.im2col+bias+relu+add+relu)."""
        return list(self.plan.describe)

    # ---------------------------------------------------------------- threads and buffers

    def _scratch(self) -> Scratch:
        s = getattr(self._local, "s", None)
        if s is None:
            s = self._local.s = Scratch()
        return s

    def _executor(self):
        return self._pool.executor()

    def close(self) -> None:
        self._pool.close()

    def _shape_at(self, t: str, n: int):
        p = self.plan
        if p.batch_local:
            return (n, *p.graph.shapes[t][1:])
        shapes = self._shapes.get(n)
        if shapes is None:
            g = p.graph
            shapes = g.infer_shapes({k: (n, *v[1:]) if g.batched else v for k, v in g.inputs.items()})
            if len(self._shapes) > 8:
                self._shapes.clear()
            self._shapes[n] = shapes
        return shapes[t]

    # ---------------------------------------------------------------- one pass of the plan

    def _fill_input(self, v: np.ndarray, buf: np.ndarray) -> None:
        """Images (uint8: scaled and normalised; float: as given) into the input buffer."""
        if v.dtype == np.uint8:
            np.multiply(v.reshape(buf.shape), F32(self.graph.input_scale), out=buf, dtype=F32)
            if self.mean is not None:
                buf -= self.mean
            if self.std is not None:
                buf /= self.std
        else:
            np.copyto(buf, v.reshape(buf.shape), casting="unsafe")
        if self.fp16:
            buf[...] = buf.astype(np.float16)

    def _execute(self, feeds: dict, n: int, split: bool = False) -> dict:
        """The whole plan on `feeds` (n images) on this thread; with split, large spatial steps
        have their rows spread over the pool. With a big Dense step (self.split) and more images
        than a sub-chunk, the steps before it run per sub-chunk into the chunk's rows."""
        p, s = self.plan, self._scratch()
        if self.split is not None and n > self.chunk and not split:
            head, tail, boundary = self.split
            prog = self._head_program(n, s, feeds) if self.programs else None
            big = {t: s.get(("rows", t), self._shape_at(t, n)) for t in boundary}
            if prog is not None:  # every sub-chunk's head steps in one C call
                self._inputs(feeds, n, s, key="rows")
                self._lib.cnnrt_run_program(prog[0], prog[1], prog[2], 1)
            else:
                for i0 in range(0, n, self.chunk):
                    i1 = min(i0 + self.chunk, n)
                    env = self._inputs({k: v[i0:i1] for k, v in feeds.items()}, i1 - i0, s)
                    self._steps(head, env, i1 - i0, s, False, {t: b[i0:i1] for t, b in big.items()})
            env = dict(big)
            for k, v in feeds.items():  # the tail may read an input (rarely): the whole chunk's
                if k not in env:
                    env[k] = self._inputs({k: v}, n, s, key="rows")[k]
            self._steps(tail, env, n, s, False, {})
        else:
            # a program's parts go to the C threads when this call has the cores to itself (split);
            # a chunk on one of the pool's threads runs its program inline
            threads = self.threads if split else 1
            prog = self._program(n, s, feeds, threads) if self.programs else None  # (before the inputs are written)
            env = self._inputs(feeds, n, s)
            if prog is None:
                self._steps(p.steps, env, n, s, split, {})
            else:
                for seg in prog:
                    if seg[0] == "c":
                        self._lib.cnnrt_run_program(seg[1], seg[2], seg[3], threads)
                        env.update(seg[4])
                    else:
                        self._steps([seg[1]], env, n, s, split, {})
        return {t: env[t] if t in env else p.graph.params[t] for t in p.graph.outputs}

    # ---------------------------------------------------------------- compiled programs

    def _plan_copies(self, feeds: dict) -> bool:
        """Whether every input is copied into a planned buffer (else its address varies per call
        and no program can point at it)."""
        p = self.plan
        return all(name in p.slot_of and (v.dtype.kind == "f" or v.dtype == np.uint8) for name, v in feeds.items())

    def _cached_program(self, key, s: Scratch):
        """This thread's program for key, if built on buffers that have not moved since."""
        cache = getattr(self._local, "programs", None)
        if cache is None:
            cache = self._local.programs = {}
        hit = cache.get(key)
        return hit[1] if hit is not None and hit[0] == s.generation else None

    def _keep_program(self, key, s: Scratch, prog, keep: list) -> None:
        """Cache a program (keep: the epilogues and arrays its tasks point at)."""
        cache = self._local.programs
        if len(cache) > 8:
            cache.clear()
        cache[key] = (s.generation, prog, keep)

    @staticmethod
    def _settled(s: Scratch, touch) -> bool:
        """Get every buffer a program will use at its size (touch()) until none moves, so that the
        addresses taken next stay valid; False if they keep moving."""
        for _ in range(3):
            g0 = s.generation
            touch()
            if s.generation == g0:
                return True
        return False

    @staticmethod
    def _live(parts: list) -> list:
        """The parts with work in them (a split can leave empty ones)."""
        return [q for q in parts if q["i0"] < q["i1"] and q["r0"] < q["r1"] and q.get("b0", 0) < q.get("b1", 1)]

    @staticmethod
    def _task_arrays(tasks: list, starts: list):
        from . import native as N

        return (N.Task * len(tasks))(*[N.Task(**t) for t in tasks]), (ctypes.c_int * len(starts))(*starts)

    def _program(self, n: int, s: Scratch, feeds: dict, threads: int):
        """The plan on n images as segments: ("c", tasks, step starts, steps, outputs, labels) for each
        run of steps with compiled kernels (one cnnrt_run_program call: their parts shared by
        the threads in C, no Python between them), ("py", step) for the rest. Built once per
        thread and batch size; rebuilt when a buffer has moved (the tasks hold addresses)."""
        p = self.plan
        if not self._plan_copies(feeds):
            return None
        hit = self._cached_program((n, threads), s)
        if hit is not None:
            return hit

        def buf(t):
            return s.get(("slot", p.slot_of[t]), self._shape_at(t, n))

        outputs = list(feeds) + [st.output for st in p.steps if not isinstance(st, GenericStep)]
        if not self._settled(s, lambda: [buf(t) for t in outputs]):
            return None
        g0 = s.generation
        segs, cur, keep = [], [], []

        def flush():
            if not cur:
                return
            tasks, starts = [], [0]
            for _, parts in cur:
                tasks += parts
                starts.append(len(tasks))
            segs.append(("c", *self._task_arrays(tasks, starts), len(cur), {st.output: buf(st.output) for st, _ in cur},
                         [st.label for st, _ in cur]))
            cur.clear()

        planned = set(feeds)  # tensors in planned buffers (generic steps' outputs are not)
        for st in p.steps:
            parts = None
            if not isinstance(st, GenericStep) and hasattr(st, "tasks") and all(t in planned for t in st.inputs):
                parts = st.tasks([buf(t) for t in st.inputs], buf(st.output), n, threads, keep)
            if parts:
                cur.append((st, self._live(parts)))
            else:
                flush()
                segs.append(("py", st))
            if not isinstance(st, GenericStep):
                planned.add(st.output)
        flush()
        if s.generation != g0 or not any(sg[0] == "c" for sg in segs):
            return None
        self._keep_program((n, threads), s, segs, keep)
        return segs

    def _head_program(self, n: int, s: Scratch, feeds: dict):
        """The steps before a big Dense over all of a chunk's sub-chunks as one compiled program,
        run inline on this thread: (tasks, step starts, steps), or None where a head step has no
        compiled kernel. The input is filled once for the whole chunk (its "rows" buffers); each
        sub-chunk's steps read their rows of it and write the boundary tensors' rows, as the
        Python loop over sub-chunks does, with no Python between the steps. Cached per thread and
        chunk size; rebuilt when a buffer has moved."""
        p = self.plan
        head, _, boundary = self.split
        if not self._plan_copies(feeds) or not all(hasattr(st, "tasks") and not isinstance(st, GenericStep) for st in head):
            return None
        hit = self._cached_program(("head", n), s)
        if hit is not None:
            return hit

        def buffers():
            rows_in = {t: s.get(("rows", p.slot_of[t]), self._shape_at(t, n)) for t in feeds}
            big = {t: s.get(("rows", t), self._shape_at(t, n)) for t in boundary}
            slots = {st.output: s.get(("slot", p.slot_of[st.output]), self._shape_at(st.output, self.chunk))
                     for st in head if st.output not in boundary}
            return rows_in, big, slots

        if not self._settled(s, buffers):
            return None
        g0 = s.generation
        rows_in, big, slots = buffers()
        tasks, starts, keep = [], [0], []
        for i0 in range(0, n, self.chunk):
            i1 = min(i0 + self.chunk, n)
            env = {t: v[i0:i1] for t, v in rows_in.items()}
            for st in head:
                out = big[st.output][i0:i1] if st.output in big else slots[st.output][:i1 - i0]
                parts = st.tasks([env[t] for t in st.inputs], out, i1 - i0, 1, keep)
                if not parts:
                    return None
                tasks += self._live(parts)
                starts.append(len(tasks))
                env[st.output] = out
        if s.generation != g0:
            return None
        prog = (*self._task_arrays(tasks, starts), len(starts) - 1)
        self._keep_program(("head", n), s, prog, keep)
        return prog

    def _inputs(self, feeds: dict, n: int, s: Scratch, key: str = "slot") -> dict:
        p, env = self.plan, {}
        for name, v in feeds.items():
            if name in p.slot_of and (v.dtype.kind == "f" or v.dtype == np.uint8):
                buf = s.get((key, p.slot_of[name]), self._shape_at(name, n))
                self._fill_input(v, buf)
                env[name] = buf
            else:
                env[name] = v
        return env

    def _steps(self, steps, env: dict, n: int, s: Scratch, split: bool, into: dict) -> None:
        """Run steps on env's tensors (n images); outputs named in `into` go to those arrays."""
        p = self.plan
        for st in steps:
            ins = [env[t] for t in st.inputs]
            if isinstance(st, GenericStep):
                outs = st.call(ins)
                for t, v in zip(st.node.outputs, outs):
                    if t in into:
                        into[t][...] = v
                        v = into[t]
                    env[t] = v
                continue
            out = into.get(st.output)
            if out is None:
                out = s.get(("slot", p.slot_of[st.output]), self._shape_at(st.output, n))
            if split and st.rows and st.work(n) >= MIN_SPLIT_WORK:
                self._split_rows(st, ins, out, n)
            else:
                st.run(ins, out, s, 0, n, 0, st.rows)
            env[st.output] = out

    def profile(self, feeds: dict, repeats: int = 3) -> list[dict]:
        """Seconds per step (the best of `repeats` passes) of the whole plan on this thread: where
        the time goes. Each entry: step label, its nodes, seconds, multiply-adds."""
        import time

        p, s = self.plan, self._scratch()
        n = len(next(iter(feeds.values())))
        best = [float("inf")] * len(p.steps)
        for _ in range(repeats):
            env = self._inputs({k: np.asarray(v) for k, v in feeds.items()}, n, s)
            for k, st in enumerate(p.steps):
                t0 = time.perf_counter()
                self._steps([st], env, n, s, False, {})
                best[k] = min(best[k], time.perf_counter() - t0)
        return [{"step": st.label, "nodes": [m.name for m in st.nodes], "seconds": t, "work": st.work(n)}
                for st, t in zip(p.steps, best)]

    def _split_rows(self, st, ins, out, n):
        """One step over the pool: images, or bands of output rows of each image, per thread."""
        parts = [q for q in st.parts(n, self.threads) if q[0] < q[1] and q[2] < q[3]]
        pool = self._executor()
        futs = [pool.submit(self._part, st, ins, out, q) for q in parts[1:]]
        st.run(ins, out, self._scratch(), *parts[0])
        for f in futs:
            f.result()

    def _part(self, st, ins, out, q):
        st.run(ins, out, self._scratch(), *q)

    # ---------------------------------------------------------------- batches

    def run(self, feeds: dict, max_chunk: int | None = None, progress=None) -> dict[str, np.ndarray]:
        """Outputs by name for inputs by name (float arrays as given, uint8 images scaled).
        A batch goes through in chunks of at most `max_chunk` images (default: self.rows);
        `batch_size_used` then holds the images per chunk."""
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        sizes = {v.shape[0] for v in feeds.values() if v.ndim}
        n = sizes.pop() if len(sizes) == 1 else 0
        p = self.plan
        cap = max(1, min(self.rows, max_chunk or self.rows))
        if p.batch_local and n >= 2 and (n > cap or (self.threads > 1 and n >= self.threads)):
            return self._run_chunked(feeds, n, cap, progress)
        self.batch_size_used = n
        split = self.threads > 1 and p.batch_local
        old = _blas().set_local(1) if split else None
        try:
            res = self._execute(feeds, n, split=split)
        finally:
            if old is not None:
                _blas().set_local(old)
        out = {t: np.array(v, dtype=F32 if v.dtype.kind == "f" else v.dtype) for t, v in res.items()}
        if progress is not None:
            progress(n)
        return out

    def _run_chunked(self, feeds: dict, n: int, cap: int, progress=None) -> dict:
        # as few chunks of at most `cap` images as there are threads or more, evened out; more
        # chunks than threads: a multiple of the threads, so that the last round keeps every thread
        # busy (40 chunks on 16 threads would leave half of them idle in the third round)
        count = max(-(-n // cap), min(self.threads, n))
        if count > self.threads:
            count = min(n, -(-count // self.threads) * self.threads)
        size = -(-n // count)
        self.batch_size_used = size
        chunks = [(i, min(i + size, n)) for i in range(0, n, size)]
        outs: dict = {}
        lock = threading.Lock()
        counter = itertools.count()
        finished = queue.SimpleQueue()  # images per finished chunk, for the progress callback

        def worker():
            while True:
                k = next(counter)
                if k >= len(chunks):
                    return
                i0, i1 = chunks[k]
                res = self._execute({name: v[i0:i1] for name, v in feeds.items()}, i1 - i0)
                for t, v in res.items():
                    if t not in outs:
                        with lock:
                            if t not in outs:
                                outs[t] = np.empty((n, *v.shape[1:]), dtype=F32 if v.dtype.kind == "f" else v.dtype)
                    outs[t][i0:i1] = v
                finished.put(i1 - i0)

        pool = self._executor()
        futs = [pool.submit(worker) for _ in range(min(self.threads, len(chunks)))]
        if progress is not None:  # called on this thread as chunks finish; the work is the same
            done = 0
            for _ in chunks:
                while True:
                    try:
                        done += finished.get(timeout=0.5)
                        break
                    except queue.Empty:
                        for f in futs:  # a worker that failed ends the wait
                            if f.done() and f.exception() is not None:
                                f.result()
                progress(done)
        for f in futs:
            f.result()
        return outs

    def prepare_input(self, x: np.ndarray) -> np.ndarray:
        """uint8 pixels: scaled, then normalised by the model's mean and std; float: as given."""
        if x.dtype != np.uint8:
            return x.astype(F32, copy=False)
        a = np.empty(x.shape, F32)
        self._fill_input(x, a)
        return a

    def _forward(self, x: np.ndarray, max_chunk: int | None = None, progress=None) -> np.ndarray:
        out = self.run({self.graph.input_name: x}, max_chunk, progress)[self.graph.outputs[0]]
        return out.reshape(len(x), -1)

    def probabilities(self, x, batch_size=None, progress=None):
        """As Runner.probabilities, but the whole input streams through the threads in chunks
        (batch_size only caps the chunk size: results do not depend on it); a progress callback
        is called as chunks finish and changes nothing else. `batch_size_used`: images per chunk."""
        x = check_images(x, self.graph)
        if batch_size is not None and batch_size < 1:
            return super().probabilities(x, batch_size, progress)
        if len(x) == 0:
            self.batch_size_used = 0
            return np.empty((0, self.graph.num_classes), F32)
        return self._forward(x, batch_size, progress)


def _dense_split(plan):
    """(head steps, tail steps, tensors from head to tail) where a Dense step with big weights
    follows batch-local steps, else None. The head's outputs that the tail (or the caller) reads
    get buffers of the whole chunk's rows."""
    from .graph_kernels import DenseStep

    if not plan.batch_local:
        return None
    k = next((i for i, st in enumerate(plan.steps)
              if isinstance(st, DenseStep) and st.wt.nbytes >= BIG_DENSE_BYTES), None)
    if not k:
        return None
    head, tail = plan.steps[:k], plan.steps[k:]
    made = {t for st in head for t in (st.node.outputs if isinstance(st, GenericStep) else [st.output])}
    need = {t for st in tail for t in st.inputs} | set(plan.graph.outputs)
    boundary = sorted(made & need)
    if any(not plan.graph.shapes.get(t) for t in boundary):
        return None
    return head, tail, boundary


def _blas_one():
    _blas().set_local(1)


def _blas():
    from .numpy_backend import _blas as b
    return b()


def prepare(graph: Graph, precision: str = "fp32") -> Runner:
    return GraphRunner(graph, precision)
