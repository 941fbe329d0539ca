"""A pageable host array copied into pinned memory on several host threads, piece by piece, so
that the GPU copies in and computes one chunk while the host still copies the next.

The GPU copies asynchronously only from pinned memory. From an ordinary NumPy array the driver
stages the bytes itself, on the calling thread, so the host can enqueue nothing while it copies.
Here the copy is split into pieces of at most PIECE_BYTES, handed in order to a small pool of
threads (ctypes.memmove releases the GIL), and the caller waits for each piece just before it
enqueues that piece's copy to the GPU. The generic runner (cuda_graph.py) stages large pageable
inputs this way: on an H200's host it beat the driver's staging on four of the five zoo models
it runs and tied on ResNet-18 (docs/gpu_staging_0252.json). The Deep MNIST runner does not: there it was
slower than the driver (0.97 against 1.11 ms for 10,000 images), so it keeps the driver's copy.

No CuPy here: the pinned allocator is passed in, so the logic is tested on any machine.
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

CHUNKS = 4  # compute chunks of a staged input: the GPU computes one while the host stages the next
# (H200 host, 2026-11-29: 4 beat 8 and 16 on all six zoo models, docs/gpu_staging_0252.json)
PIECE_BYTES = 1 << 20  # one host thread's task; small enough that the first chunk is ready early
MAX_STAGE_BYTES = 256 << 20  # the pinned stage's most bytes: a larger input is run in windows this size
MAX_THREADS = 4  # copies are memory-bound: 8 threads were slower than 4 on a 16-core host (gpu_staging_0249.json)

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0  # the process that made _pool: a forked child must not use its parent's (threadless) pool
_pool_lock = threading.Lock()


def threads() -> int:
    """Host threads for staging: CNNRT_CUDA_STAGE_THREADS, else min(MAX_THREADS, cores)."""
    env = os.environ.get("CNNRT_CUDA_STAGE_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(MAX_THREADS, os.cpu_count() or 1))


def chunks() -> int:
    """How many compute chunks a staged input is cut into: CNNRT_CUDA_STAGE_CHUNKS, else CHUNKS."""
    env = os.environ.get("CNNRT_CUDA_STAGE_CHUNKS", "")
    return int(env) if env.isdigit() and int(env) > 0 else CHUNKS


def enabled() -> bool:
    """CNNRT_CUDA_STAGE=0 turns staging off (the driver copies a pageable array, as before)."""
    return os.environ.get("CNNRT_CUDA_STAGE", "1") != "0"


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="cnnrt-stage")
            _pool_pid = os.getpid()
        return _pool


def is_pinned(runtime, x: np.ndarray) -> bool:
    """Whether x lies in page-locked memory the CUDA runtime knows (cupy.cuda.runtime as runtime)."""
    try:
        return getattr(runtime.pointerGetAttributes(x.ctypes.data), "type", 0) == 1
    except Exception:  # noqa: BLE001 - memory the runtime does not know: pageable
        return False


def _copy(dst: np.ndarray, src: np.ndarray, offset: int, nbytes: int) -> None:
    """One piece; the task holds both arrays, so neither is freed while it is queued or running."""
    ctypes.memmove(dst.ctypes.data + offset, src.ctypes.data + offset, nbytes)


class Piece:
    """Bytes [offset, offset + nbytes) of the staged array; wait() returns once they are pinned."""

    __slots__ = ("offset", "nbytes", "_future")

    def __init__(self, offset: int, nbytes: int, future: Future | None):
        self.offset, self.nbytes, self._future = offset, nbytes, future

    def wait(self) -> None:
        if self._future is not None:
            self._future.result()  # re-raises a failed copy


class Stager:
    """One pinned buffer, grown as inputs grow, that pageable inputs are copied into.
    Not safe for two calls at once: a runner holds its own lock around a call."""

    def __init__(self, alloc):
        self._alloc = alloc  # (nbytes,) -> a uint8 array in pinned memory
        self.buffer: np.ndarray | None = None

    def _ensure(self, nbytes: int) -> np.ndarray:
        if self.buffer is None or self.buffer.size < nbytes:
            grow = 0 if self.buffer is None else self.buffer.size + self.buffer.size // 4
            self.buffer = self._alloc((max(nbytes, min(grow, MAX_STAGE_BYTES), 1 << 12),))
        return self.buffer

    def stage(self, x: np.ndarray, chunks: list[tuple[int, int]], piece_bytes: int | None = None
              ) -> tuple[np.ndarray, list[list[Piece]]]:
        """Start copying a C-contiguous x into the pinned buffer. chunks: (first byte, bytes) of each
        chunk the caller will enqueue, in order. Returns the pinned bytes (x's bytes once every
        piece is waited for) and, per chunk, its pieces in order. Pieces are queued in order, so the
        first chunk is ready first."""
        if not x.flags.c_contiguous:
            raise ValueError("stage: x must be C-contiguous")
        piece_bytes = max(1, int(piece_bytes or PIECE_BYTES))
        for start, nbytes in chunks:  # all checked before any copy starts
            if start < 0 or nbytes < 0 or start + nbytes > x.nbytes:
                raise ValueError(f"stage: chunk ({start}, {nbytes}) outside {x.nbytes} bytes")
        buf = self._ensure(x.nbytes)
        pool = _executor()
        out = []
        for start, nbytes in chunks:
            pieces = []
            for off in range(start, start + nbytes, piece_bytes):
                cnt = min(piece_bytes, start + nbytes - off)
                pieces.append(Piece(off, cnt, pool.submit(_copy, buf, x, off, cnt)))
            out.append(pieces)
        return buf[:x.nbytes], out

    def wait_all(self, staged: list[list[Piece]]) -> None:
        """Wait for every piece (a caller that stops early must, before x or the buffer goes)."""
        for pieces in staged:
            for p in pieces:
                try:
                    p.wait()
                except Exception:  # noqa: BLE001 - the first error was already raised to the caller
                    pass


def shutdown() -> None:
    """Stop the staging threads (the next stage starts a new pool, of threads() threads)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True)
