"""The CPU backend: NumPy only, fp32 arithmetic, fp32 or fp16 storage.

`prepare` compiles the model once into a list of stages (weights re-packed, Winograd transforms of
the weights done here, not at import):

- Conv2D -> Winograd F(2x2, kxk) for stride-1 3x3 and 5x5 kernels over 8 or more channels
  (cpu_kernels.WinogradConv, Deep MNIST's conv2), else one chunked im2col GEMM
  (cpu_kernels.Im2colConv: any stride and padding, conv1). A following 2x2/2 max-pool over an
  even-sized map is fused: pool first, then bias and activation on 4 times fewer values.
- MaxPool2D that cannot be fused -> the reference op.
- Dense -> one GEMM with the weight pre-transposed, skipping the weight rows of inputs that are
  zero in every row (after ReLU and pooling most are), bias and activation in place.
- Softmax in place.

Each stage writes its output straight into the next stage's input buffer (a conv's zero-bordered
padded input, a dense layer's flat input rows), so there is one pass over memory per step and
no allocation per call. Images go through in chunks: the convolutions per sub-chunk of a few
images that stays in the caches, the dense layers per chunk (a GEMM needs rows to be efficient),
and the chunks over a pool of threads, one per core (NumPy releases the GIL in every kernel),
each thread with its own buffers and with OpenBLAS told to stay on that thread. One image (or a
few) runs on the calling thread. Measurements: bench/cpu_kernels.py and docs/benchmarks.md.

fp16 storage rounds the weights, the input and every layer's output to float16 as
`reference.forward(..., fp16_storage=True)` does, with float32 arithmetic.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import FormatError
from ..model import Conv2D, Dense, MaxPool2D, Model, Softmax
from . import reference
from .base import Runner, check_images
from .cpu_kernels import (F32, BlasThreads, Im2colConv, Scratch, ThreadPool, WinogradConv, matmul_skipping_zeros,
                          sparse_ok)

NAME = "numpy"
DEFAULT_PRECISION = "fp32"

CONV_SUBCHUNK = 8  # images per pass through the conv layers: a few MB of Winograd buffers, in cache
SUBCHUNK_BYTES = 8 << 20  # ...fewer for bigger images: at most this much scratch per conv layer
CHUNK = 256  # images per pass through the dense layers: enough rows for an efficient GEMM (bench: 128-256 best)
# A layer chain in fp32 runs on the graph runner when the compiled kernels are there (measured on 2
# cores: as fast on 10,000 Deep MNIST images, faster on one image; docs/benchmarks.md); the staged
# engine keeps fp16 storage and machines without a C compiler.
CHAINS_ON_GRAPH_RUNNER = os.environ.get("CNNRT_STAGED", "0") != "1"
WINOGRAD_M = 2  # F(2x2, r x r) with the points in cpu_kernels.POINTS: as accurate as direct convolution


def available() -> str | None:
    return None


def _q16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(F32)


class _Input:
    """uint8 pixels (or float values) -> float32 in the first stage's input buffer."""

    def __init__(self, model: Model, fp16: bool):
        self.scale = F32(model.input_scale)
        self.fp16 = fp16

    def __call__(self, x: np.ndarray, out: np.ndarray) -> None:
        """Into `out` (possibly a padded buffer's strided interior), as Runner.scaled does."""
        if x.dtype == np.uint8:
            np.multiply(x.reshape(out.shape), self.scale, out=out, dtype=F32)  # x.astype(f32) * f32(scale)
        else:
            out[...] = x.reshape(out.shape)
        if self.fp16:
            out[...] = out.astype(np.float16)


class _ConvStage:
    def __init__(self, kernel):
        self.k = kernel
        self.out_shape = kernel.out_shape

    def target(self, s: Scratch, n: int) -> np.ndarray:
        return self.k.interior(self.k.padded_input(s, n))

    def __call__(self, a, s, out):
        # `a` is this stage's target, already filled by the previous stage
        return self.k.run_padded(self.k.padded_input(s, len(a)), s, out)


class _PoolStage:
    def __init__(self, layer: MaxPool2D, out_shape):
        self.layer, self.out_shape = layer, out_shape

    target = None

    def __call__(self, a, s, out):
        y = reference.maxpool2d(a, self.layer.size, self.layer.stride, self.layer.padding)
        if out is None:
            return y
        out[...] = y
        return out


class _DenseStage:
    def __init__(self, layer: Dense, in_shape, fp16: bool):
        q = _q16 if fp16 else (lambda v: v.astype(F32))
        self.wt = np.ascontiguousarray(q(layer.weight).T)  # (in, out): the fastest GEMV/GEMM form
        self.b = q(layer.bias)
        self.relu = layer.activation == "relu"
        self.fp16 = fp16
        self.n_in, self.n_out = self.wt.shape
        self.sparse = sparse_ok(self.wt)
        self.in_shape = tuple(in_shape)
        self.out_shape = (self.n_out,)
        self.key = id(self)

    def target(self, s: Scratch, n: int) -> np.ndarray:
        return s.get((self.key, "x"), (n, self.n_in)).reshape((n,) + self.in_shape)

    def __call__(self, a, s, out):
        n = len(a)
        y = out if out is not None else s.get((self.key, "y"), (n, self.n_out))
        x = a.reshape(n, self.n_in)
        if self.sparse:
            matmul_skipping_zeros(x, self.wt, y, s, self.key)
        else:
            np.matmul(x, self.wt, out=y)
        y += self.b
        if self.relu:
            np.maximum(y, 0, out=y)
        if self.fp16:
            y[...] = y.astype(np.float16)
        return y


class _SoftmaxStage:
    target = None

    def __init__(self, shape):
        self.out_shape = shape

    def __call__(self, a, s, out):
        y = a if out is None else out
        if y is not a:
            y[...] = a
        y -= y.max(axis=-1, keepdims=True)
        np.exp(y, out=y)
        y /= y.sum(axis=-1, keepdims=True)
        return y


def _conv_kernel(layer: Conv2D, in_shape, pool, fp16: bool):
    q = _q16 if fp16 else (lambda v: v)
    w, b = q(layer.weight), q(layer.bias)
    o, kh, kw, c = w.shape
    if layer.stride == 1 and kh == kw and kh in (3, 5) and c >= 8:
        return WinogradConv(in_shape, w, b, layer.padding, layer.activation, pool, fp16, m=WINOGRAD_M)
    return Im2colConv(in_shape, w, b, layer.stride, layer.padding, layer.activation, pool, fp16)


def _cores() -> int:
    """The cores this process may run on (its affinity, where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_BLAS = None
_BLAS_LOCK = threading.Lock()


def _blas() -> BlasThreads:
    global _BLAS
    with _BLAS_LOCK:
        if _BLAS is None:
            _BLAS = BlasThreads()
        return _BLAS


class NumpyRunner(Runner):
    backend = NAME
    default_batch_size = 2048

    def __init__(self, model: Model, precision: str, threads: int | None = None,
                 chunk: int = CHUNK, conv_subchunk: int = CONV_SUBCHUNK):
        super().__init__(model, precision)
        fp16 = precision == "fp16"
        self.threads = max(1, threads or _cores())
        self.chunk, self.sub = chunk, conv_subchunk
        self.input = _Input(model, fp16)
        stages, shape, layers, i = [], model.input_shape, model.layers, 0
        self._plan = []  # (layers, what they compute, kernel) per stage, for describe()
        while i < len(layers):
            layer = layers[i]
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            act = "+Relu" if getattr(layer, "activation", "none") == "relu" else ""
            if isinstance(layer, Conv2D):
                k = _conv_kernel(layer, shape, nxt if isinstance(nxt, MaxPool2D) else None, fp16)
                stages.append(_ConvStage(k))
                kind = f"Winograd F({k.m}x{k.m}, {layer.weight.shape[1]}x{layer.weight.shape[2]})" \
                    if isinstance(k, WinogradConv) else "im2col GEMM"
                names = [layer.name] + ([nxt.name] if k.pool else [])
                self._plan.append((" + ".join(names), "Conv" + act + ("+MaxPool" if k.pool else ""),
                                   f"numpy fused conv: {kind}"))
                i += 2 if k.pool else 1
            elif isinstance(layer, MaxPool2D):
                stages.append(_PoolStage(layer, model.shapes[i + 1]))
                self._plan.append((layer.name, "MaxPool", "numpy reference max-pool"))
                i += 1
            elif isinstance(layer, Dense):
                stages.append(_DenseStage(layer, shape, fp16))
                self._plan.append((layer.name, "Dense" + act, "numpy GEMM" + (", skipping zero inputs' weight rows"
                                                                               if stages[-1].sparse else "")))
                i += 1
            elif isinstance(layer, Softmax):
                stages.append(_SoftmaxStage(shape))
                self._plan.append((layer.name, "Softmax", "numpy softmax in place"))
                i += 1
            else:  # pragma: no cover - Model.validate admits no other layer
                raise TypeError(f"unknown layer {layer!r}")
            shape = stages[-1].out_shape
        # the spatial stages run per sub-chunk; from the first dense layer on, per chunk
        split = next((j for j, st in enumerate(stages) if isinstance(st, (_DenseStage, _SoftmaxStage))), len(stages))
        self.front, self.back = stages[:split], stages[split:]
        per_image = max([4 * st.k.floats_per_image() for st in self.front if isinstance(st, _ConvStage)], default=0)
        if per_image:
            self.sub = max(1, min(self.sub, SUBCHUNK_BYTES // per_image))
        self._local = threading.local()
        self._pool = ThreadPool(self.threads, "cnnrt-numpy")

    def describe(self) -> list[tuple[str, str, str]]:
        """(layers, what they compute, kernel) for every stage of the fused layer-chain engine."""
        return list(self._plan)

    # ---------------------------------------------------------------- one chunk, one thread

    def _scratch(self) -> Scratch:
        s = getattr(self._local, "s", None)
        if s is None:
            s = self._local.s = Scratch()
        return s

    def _run_stages(self, stages, a, s, n, last_out):
        for j, st in enumerate(stages):
            nxt = stages[j + 1] if j + 1 < len(stages) else None
            out = nxt.target(s, n) if nxt is not None and nxt.target is not None else None
            if nxt is None:
                out = last_out
            a = st(a, s, out)
        return a

    def _chunk(self, x: np.ndarray, out: np.ndarray) -> None:
        """x (n, H, W, C) uint8 or float -> out (n, classes), on the calling thread."""
        s, n = self._scratch(), len(x)
        if not self.front:
            a = s.get(("in",), (n, *self.model.input_shape))
            self.input(x, a)
            self._run_stages(self.back, a, s, n, out)
            return
        first = self.front[0]
        # the first dense stage's input rows, filled sub-chunk by sub-chunk
        back_in = self.back[0].target(s, n) if self.back and self.back[0].target is not None else None
        for i in range(0, n, self.sub):
            xs = x[i:i + self.sub]
            m = len(xs)
            a = first.target(s, m) if first.target is not None else s.get(("in",), (m, *self.model.input_shape))
            self.input(xs, a)
            if back_in is not None:
                last = back_in[i:i + m]
            elif not self.back:
                last = out[i:i + m].reshape((m,) + self.front[-1].out_shape)
            else:
                last = None
            a = self._run_stages(self.front, a, s, m, last)
            if last is None:  # the stage after the front has no buffer of its own (softmax)
                back_in = back_in if back_in is not None else s.get(("mid",), (n, *self.front[-1].out_shape))
                back_in[i:i + m] = a
        if self.back:
            self._run_stages(self.back, back_in, s, n, out)

    def _chunk_on_worker(self, x, out):
        if not getattr(self._local, "blas_set", False):
            _blas().set_local(1)  # this pool thread's GEMMs stay on it
            self._local.blas_set = True
        self._chunk(x, out)

    # ---------------------------------------------------------------- batches

    def _executor(self):
        return self._pool.executor()

    def _forward(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((len(x), self.model.num_classes), dtype=F32)
        self._forward_into(x, out)
        return out

    def _forward_into(self, x: np.ndarray, out: np.ndarray, chunk: int | None = None, progress=None) -> None:
        n = len(x)
        if n == 0:
            self.batch_size_used = 0
            return
        nchunks = -(-n // (chunk or self.chunk))
        if self.threads > 1 and nchunks == 1 and n >= 2 * self.sub:
            nchunks = 2  # two half chunks keep both cores busy
        if self.threads == 1:
            # one thread asked for (or one core): the BLAS stays on it too; its own threads on the
            # Winograd kernels' many small GEMMs made 10,000 images 4 times slower (9 s, not 2.3 s)
            old = _blas().set_local(1)
            try:
                self._chunk(x, out)
            finally:
                if old is not None:
                    _blas().set_local(old)
            return
        if nchunks == 1:
            # small batches (one image): on this thread, BLAS free to use its own threads for the
            # dense layers' GEMV (measured faster for one image)
            self.batch_size_used = n
            self._chunk(x, out)
            if progress is not None:
                progress(n)
            return
        size = -(-n // nchunks)
        self.batch_size_used = size  # images per chunk: what one pass through the layers holds
        futs = [self._executor().submit(self._chunk_on_worker, x[i:i + size], out[i:i + size])
                for i in range(0, n, size)]
        if progress is None:
            for f in futs:
                f.result()
            return
        from concurrent.futures import as_completed

        done = 0
        for f in as_completed(futs):  # the same chunks on the same threads; only the waiting differs
            f.result()
            done += size
            progress(min(done, n))

    def probabilities(self, x, batch_size: int | None = None, progress=None) -> np.ndarray:
        """As Runner.probabilities, but the whole input streams through the threads in chunks of
        `chunk` images, one wait at the end instead of one per batch (the result is the same:
        every image's computation is independent of the others'); `batch_size` only caps the
        chunk size. A progress callback is called as chunks finish and changes nothing else.
        `batch_size_used` then holds the images per chunk."""
        x = check_images(x, self.model)
        if batch_size is not None and batch_size < 1:
            raise FormatError(f"batch size must be at least 1, got {batch_size}")
        out = np.empty((len(x), self.model.num_classes), dtype=F32)
        chunk = batch_size if batch_size is not None and batch_size < self.chunk else None
        self._forward_into(x, out, chunk=chunk, progress=progress)
        return out

    def close(self) -> None:
        self._pool.close()


def prepare(model, precision: str = DEFAULT_PRECISION, threads: int | None = None) -> Runner:
    """The graph runner (numpy_graph.py) for a Graph; a layer chain in fp16 or without the compiled
    kernels, and a layer-chain Model, get the staged engine; a layer chain that both can run gets
    the faster of the two on this machine (chain_engine.py; its `engine_choice` says why).
    `threads`: default one per core."""
    from ..ir.chain import match
    from ..ir.graph import Graph

    if isinstance(model, Graph):
        from .numpy_graph import GraphRunner

        chain = match(model)
        if chain is None:
            return GraphRunner(model, precision, threads=threads)
        if precision == "fp32" and CHAINS_ON_GRAPH_RUNNER and _compiled():
            from .chain_engine import ByBatch, choose

            # both engines can run it: the faster on this machine for batches and for single
            # images (measured once, then cached)
            pick = choose(model, chain, max(1, threads or _cores()))

            def engine(name):
                return GraphRunner(model, precision, threads=threads) if name == "graph" else \
                    NumpyRunner(chain, precision, threads=threads)

            if pick["engine"] == pick["single"]:
                r = engine(pick["engine"])
                r.engine_choice = pick["why"]
                return r
            return ByBatch(engine(pick["single"]), engine(pick["engine"]), pick["why"])
        model = chain
    return NumpyRunner(model, precision, threads=threads)


def _compiled() -> bool:
    from .graph_kernels import native_lib
    return native_lib() is not None
