"""The host side of staging a pageable input (cnnrt/backends/cuda_staging.py), on any machine:
an ordinary NumPy buffer stands in for pinned memory. The GPU side is in test_cuda*.py."""
from __future__ import annotations

import numpy as np
import pytest

from cnnrt.backends import cuda_staging as STG


def stager():
    made = []

    def alloc(shape):
        a = np.full(shape, 0xAB, np.uint8)  # poisoned: a byte not copied shows
        made.append(a)
        return a

    return STG.Stager(alloc), made


@pytest.mark.parametrize("piece", [1, 7, 1000, 1 << 20])
def test_stage_copies_every_chunk_in_order(rng, piece):
    s, made = stager()
    x = rng.integers(0, 256, (333, 5, 7), dtype=np.uint8)
    item = 35
    chunks = [(a * item, min(100, 333 - a) * item) for a in range(0, 333, 100)]
    out, pieces = s.stage(x, chunks, piece_bytes=piece)
    assert len(pieces) == len(chunks)
    for (start, nbytes), ps in zip(chunks, pieces):
        assert ps[0].offset == start and sum(p.nbytes for p in ps) == nbytes
        assert all(p.nbytes <= piece for p in ps)
        assert all(a.offset + a.nbytes == b.offset for a, b in zip(ps, ps[1:]))
        for p in ps:
            p.wait()
        np.testing.assert_array_equal(out[start:start + nbytes], x.reshape(-1)[start:start + nbytes])
    assert out.size == x.nbytes and len(made) == 1


def test_stage_float32_and_buffer_reuse(rng):
    s, made = stager()
    x = rng.standard_normal((50, 8)).astype(np.float32)
    out, pieces = s.stage(x, [(0, x.nbytes)], piece_bytes=64)
    s.wait_all(pieces)
    np.testing.assert_array_equal(out.view(np.float32).reshape(x.shape), x)
    small = rng.standard_normal((10, 8)).astype(np.float32)
    out2, pieces = s.stage(small, [(0, small.nbytes)])
    s.wait_all(pieces)
    assert len(made) == 1  # a smaller input reuses the buffer
    np.testing.assert_array_equal(out2.view(np.float32).reshape(small.shape), small)
    big = rng.standard_normal((400, 8)).astype(np.float32)
    out3, pieces = s.stage(big, [(0, big.nbytes)])
    s.wait_all(pieces)
    assert len(made) == 2 and made[1].size >= big.nbytes
    np.testing.assert_array_equal(out3.view(np.float32).reshape(big.shape), big)


def test_stage_rejects_bad_input(rng):
    s, _ = stager()
    x = rng.integers(0, 256, (10, 10), dtype=np.uint8)
    with pytest.raises(ValueError, match="C-contiguous"):
        s.stage(x[:, ::2], [(0, 50)])
    with pytest.raises(ValueError, match="outside 100 bytes"):
        s.stage(x, [(0, 60), (60, 41)])


def test_thread_count_and_switch(monkeypatch):
    monkeypatch.setenv("CNNRT_CUDA_STAGE_THREADS", "3")
    assert STG.threads() == 3
    monkeypatch.delenv("CNNRT_CUDA_STAGE_THREADS")
    assert 1 <= STG.threads() <= STG.MAX_THREADS
    monkeypatch.setenv("CNNRT_CUDA_STAGE", "0")
    assert not STG.enabled()
    monkeypatch.setenv("CNNRT_CUDA_STAGE", "1")
    assert STG.enabled()


def test_is_pinned_asks_the_runtime():
    class Attr:
        def __init__(self, t):
            self.type = t

    class Runtime:
        def __init__(self, t):
            self.t = t

        def pointerGetAttributes(self, ptr):
            if self.t is None:
                raise RuntimeError("cudaErrorInvalidValue")
            return Attr(self.t)

    x = np.zeros(4, np.uint8)
    assert STG.is_pinned(Runtime(1), x)
    assert not STG.is_pinned(Runtime(0), x)  # unregistered host memory
    assert not STG.is_pinned(Runtime(2), x)  # device memory
    assert not STG.is_pinned(Runtime(None), x)


def test_shutdown_then_stage_again(rng, monkeypatch):
    s, _ = stager()
    x = rng.integers(0, 256, 5000, dtype=np.uint8)
    out, pieces = s.stage(x, [(0, 5000)], piece_bytes=512)
    STG.shutdown()  # waits for the queued copies
    np.testing.assert_array_equal(out, x)
    monkeypatch.setenv("CNNRT_CUDA_STAGE_THREADS", "1")
    out, pieces = s.stage(x[::-1].copy(), [(0, 5000)], piece_bytes=512)
    s.wait_all(pieces)
    np.testing.assert_array_equal(out, x[::-1])
    STG.shutdown()


def test_forked_child_gets_its_own_pool(rng):
    # a pool made before fork has no threads in the child: the child must make its own, not hang
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    s, _ = stager()
    x = rng.integers(0, 256, 3000, dtype=np.uint8)
    out, pieces = s.stage(x, [(0, 3000)], piece_bytes=100)
    s.wait_all(pieces)  # the parent's pool exists now
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_stage, args=(q,))
    p.start()
    p.join(20)
    alive = p.is_alive()
    if alive:
        p.kill()
    assert not alive and q.get(timeout=5) == "ok"


def _child_stage(q):
    s, _ = stager()
    x = np.arange(5000, dtype=np.uint16).view(np.uint8)
    out, pieces = s.stage(x, [(0, x.nbytes)], piece_bytes=333)
    s.wait_all(pieces)
    q.put("ok" if np.array_equal(out, x) else "wrong")
