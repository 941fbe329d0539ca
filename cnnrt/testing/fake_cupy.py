"""A CPU stand-in for the part of CuPy (and cuBLAS) that cuda_graph.GraphRunner uses, so that the
executor's own logic (argument binding, device addresses, pinned staging, graph capture and
replay, chunks over two lanes, the host fallback, the lock) runs in CI without a GPU.

"Device" memory is host memory (NumPy buffers with real addresses), so cudaMemcpyAsync is a
memmove. A kernel launch decodes its raw arguments with the generated kernel's parameter list
(cuda_codegen.GENERATED) and runs the NumPy emulation of its family (cuda_emulator), reading and
writing through those addresses; a cuBLAS GemmEx does the product in NumPy. Launches and copies
made while a stream is being captured are recorded and replayed by Graph.launch. Install with
`install(monkeypatch)`.
"""
from __future__ import annotations

import bisect
import ctypes
import threading
import types

import numpy as np

from cnnrt.backends import cuda_codegen as G

_CT = {"half_t": np.float16, "float": np.float32, "u8_t": np.uint8, "long long": np.int64}


class _Memory:
    def __init__(self):
        self.starts, self.bufs = [], {}
        self.lock = threading.Lock()

    def alloc(self, nbytes: int) -> np.ndarray:
        buf = np.empty(max(int(nbytes), 1) + 256, np.uint8)
        with self.lock:
            a = buf.ctypes.data
            bisect.insort(self.starts, a)
            self.bufs[a] = buf
        return buf

    def view(self, addr: int, dtype) -> np.ndarray:
        """The allocation holding addr, from addr to its end, as dtype."""
        i = bisect.bisect_right(self.starts, addr) - 1
        base = self.starts[i]
        buf = self.bufs[base]
        assert base <= addr < base + buf.size, f"address {addr:#x} is in no allocation"
        raw = buf[addr - base:]
        n = raw.size // np.dtype(dtype).itemsize
        return raw[:n * np.dtype(dtype).itemsize].view(dtype)


MEM = _Memory()


class MemoryPointer:
    def __init__(self, ptr: int):
        self.ptr = int(ptr)

    def __add__(self, off: int) -> "MemoryPointer":
        return MemoryPointer(self.ptr + int(off))


class ndarray:
    """A flat "device" array: NumPy storage at a real address."""

    def __init__(self, shape, dtype, memptr: MemoryPointer | None = None):
        self.dtype = np.dtype(dtype)
        self.shape = tuple(np.atleast_1d(shape).tolist()) if not isinstance(shape, tuple) else shape
        count = int(np.prod(self.shape))
        if memptr is None:
            raw = MEM.alloc(count * self.dtype.itemsize)
            memptr = MemoryPointer(raw.ctypes.data)
        self.data = memptr
        self.a = MEM.view(memptr.ptr, self.dtype)[:count].reshape(self.shape)

    @property
    def size(self) -> int:
        return self.a.size

    def fill(self, v) -> None:
        self.a[...] = v

    def set(self, arr) -> None:
        self.a[...] = np.asarray(arr).reshape(self.a.shape)

    def get(self) -> np.ndarray:
        return self.a.copy()


def empty(shape, dtype=np.float32) -> ndarray:
    return ndarray(shape if isinstance(shape, tuple) else (int(shape),), dtype)


def asarray(a, dtype=None) -> ndarray:
    a = np.ascontiguousarray(a, dtype=dtype)
    out = ndarray(a.shape, a.dtype)
    out.a[...] = a
    return out


def asnumpy(a: ndarray) -> np.ndarray:
    return a.get()


# ----------------------------------------------------------------------------- streams and graphs

_tls = threading.local()


class Graph:
    def __init__(self, ops):
        self.ops = ops

    def upload(self, stream) -> None:
        pass

    def launch(self, stream) -> None:
        for fn in self.ops:
            fn()


class Stream:
    _all: dict = {}

    def __init__(self, non_blocking: bool = False):
        self.capture = None
        self.ptr = id(self)
        Stream._all[self.ptr] = self

    def __enter__(self):
        self._prev = getattr(_tls, "stream", None)
        _tls.stream = self
        return self

    def __exit__(self, *exc):
        _tls.stream = self._prev

    def synchronize(self) -> None:
        pass

    def begin_capture(self) -> None:
        self.capture = []

    def end_capture(self) -> Graph:
        g, self.capture = Graph(self.capture), None
        return g

    def run(self, fn) -> None:
        if self.capture is not None:
            self.capture.append(fn)
        else:
            fn()


def _current() -> Stream | None:
    return getattr(_tls, "stream", None)


def _memcpy(dst, src, size, kind, stream_ptr) -> None:
    s = Stream._all.get(stream_ptr)
    fn = lambda: ctypes.memmove(int(dst), int(src), int(size))  # noqa: E731
    s.run(fn) if s is not None else fn()


class RawModule:
    def __init__(self, code: str, options=()):
        self.code = code

    def get_function(self, name: str):
        k = G.GENERATED[name]
        assert f" {name}(" in self.code
        return _Kernel(k)


def _load_cubin(cp, source: str, names, arch: str = "sm_90a") -> tuple[dict, object]:
    """cuda_graph.load_cubin on the fake: the kernels must be in the source it was given, and the
    sm_90a ones (only they) use wgmma."""
    for name in names:
        assert f" {name}(" in source and (("wgmma.mma_async" in source) == (arch == "sm_90a")), (name, arch)
    return {name: _Kernel(G.GENERATED[name]) for name in names}, None


class _Launch:
    def __init__(self, k, grid, block, smem, args):
        self.kernel, self.grid, self.block, self.smem, self.args = k, grid, block, smem, args


class _Kernel:
    emulator_factory = None  # set by install(): (launch) -> runs it

    def __init__(self, k):
        self.k = k

    def __call__(self, grid, block, args, shared_mem=0):
        assert len(args) == len(self.k.params)
        named = {}
        for (ctype, name), v in zip(self.k.params, args):
            if "*" in ctype:
                base = ctype.replace("const", "").replace("__restrict__", "").replace("*", "").strip()
                assert isinstance(v, np.uint64), f"{name}: a pointer must be passed as uint64"
                named[name] = ("arr", MEM.view(int(v), _CT[base])) if int(v) else ("null",)
            else:
                assert isinstance(v, {"int": np.int32, "long long": np.int64, "float": np.float32}[ctype]), name
                named[name] = v.item()
        launch = _Launch(self.k, tuple(grid), tuple(block), int(shared_mem), named)
        s = _current()
        fn = lambda: _Kernel.emulator_factory(launch)  # noqa: E731
        s.run(fn) if s is not None else fn()


def _run_launch(launch) -> None:
    from cnnrt.testing.cuda_emulator import Emulator

    em = Emulator.__new__(Emulator)
    em.meta = None
    getattr(em, launch.kernel.family)(launch)


class _FakeBlas:
    """cuda._Cublas's interface: GemmEx in NumPy (column-major, as cuBLAS)."""

    def __init__(self, cp):
        self.ctypes = ctypes
        self.lib = types.SimpleNamespace(cublasGemmEx=self._gemm)
        self.workspaces = []

    def handle_for(self, stream, workspace_bytes=0):
        return stream

    def destroy(self, h) -> None:
        pass

    def _gemm(self, h, ta, tb, m, n, k, alpha, a, atype, lda, b, btype, ldb, beta, c, ctype, ldc, compute, algo):
        assert (ta, tb, compute, ctype) == (1, 0, 68, 0) and atype == btype and lda == ldb == k and ldc == m
        dt = np.float16 if atype == 2 else np.float32

        def fn():
            A = MEM.view(a.value, dt)[:m * k].reshape(m, k).astype(np.float64)
            B = MEM.view(b.value, dt)[:n * k].reshape(n, k).astype(np.float64)
            MEM.view(c.value, np.float32)[:n * m] = (B @ A.T).astype(np.float32).reshape(-1)
        h.run(fn)
        return 0


def module():
    """The fake `cupy` module."""
    cp = types.ModuleType("cupy")
    cp.__version__ = "fake"
    cp.ndarray, cp.empty, cp.asarray, cp.asnumpy, cp.RawModule = ndarray, empty, asarray, asnumpy, RawModule
    cp.float32, cp.float16, cp.uint8, cp.int64 = np.float32, np.float16, np.uint8, np.int64
    pinned: list = []  # (start, end) of every pinned allocation, for pointerGetAttributes

    def pointer_attributes(ptr):
        host = any(a <= int(ptr) < b for a, b in pinned)
        return types.SimpleNamespace(type=1 if host else 0)  # cudaMemoryTypeHost, or unregistered

    runtime = types.SimpleNamespace(memcpyAsync=_memcpy, memcpyHostToDevice=1, memcpyDeviceToHost=2,
                                    getDeviceCount=lambda: 1, pointerGetAttributes=pointer_attributes)

    class Device:
        attributes = {"MultiProcessorCount": 4}
        compute_capability = "90"

        def __init__(self, i: int = 0):
            self.id = i

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def synchronize(self):
            pass

    def alloc_pinned_memory(nbytes):
        mem = bytearray(int(nbytes))
        a = np.frombuffer(mem, np.uint8).ctypes.data
        pinned.append((a, a + len(mem)))
        return mem

    cp.cuda = types.SimpleNamespace(Stream=Stream, Device=Device, runtime=runtime, MemoryPointer=MemoryPointer,
                                    alloc_pinned_memory=alloc_pinned_memory)
    cp.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    return cp


def install(monkeypatch) -> None:
    """Make cnnrt's CUDA backend run on the fake (for one test)."""
    import sys

    from cnnrt.backends import cuda

    cp = module()
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setattr(cuda, "_available", None)
    monkeypatch.setattr(cuda, "_Cublas", _FakeBlas)
    from cnnrt.backends import cuda_graph

    monkeypatch.setattr(cuda_graph, "load_cubin", _load_cubin)
    _Kernel.emulator_factory = staticmethod(_run_launch)
