"""Deep MNIST's runner's chunk plans (cuda.FusedRunner.plan), on any machine: the method reads only
its chunk settings, so it runs on a stand-in object without CuPy."""
from types import SimpleNamespace

import pytest

from cnnrt.backends import cuda


def plan(n, equal=0, first=1056, chunk=1 << 30, growth=7):
    return cuda.FusedRunner.plan(SimpleNamespace(first_chunk=first, chunk=chunk, growth=growth), n, equal)


def covers(chunks, n):
    return chunks[0][0] == 0 and all(a + b == c for (a, b), (c, _) in zip(chunks, chunks[1:])) and \
        sum(c for _, c in chunks) == n


@pytest.mark.parametrize("n", [1, 2112, 2113, 10000, 100000])
def test_growing_chunks(n):
    chunks = plan(n)
    assert covers(chunks, n)
    if n > 2112:
        assert chunks[0] == (0, 1056) and chunks[1][1] <= 7 * 1056 + 7 * 1056 // 2


@pytest.mark.parametrize("n,equal", [(10000, 8), (10000, 4), (3000, 8), (100000, 8), (2345, 5)])
def test_equal_chunks_for_pageable_input(n, equal):
    chunks = plan(n, equal)
    assert covers(chunks, n) and chunks[0] == (0, 1056) if n > 2112 else covers(chunks, n)
    rest = [c for _, c in chunks[1:]]
    assert len(chunks) <= equal + 1
    assert max(rest) - min(rest) <= max(rest) // 2 + 1  # equal but for a folded tail
    assert plan(n, equal, chunk=500) and max(c for _, c in plan(n, equal, chunk=500)) <= 750  # the chunk cap


def test_pageable_chunks_switch(monkeypatch):
    monkeypatch.delenv("CNNRT_CUDA_DM_PAGEABLE_CHUNKS", raising=False)
    assert cuda.pageable_chunks() == 0
    monkeypatch.setenv("CNNRT_CUDA_DM_PAGEABLE_CHUNKS", "8")
    assert cuda.pageable_chunks() == 8
    monkeypatch.setenv("CNNRT_CUDA_DM_PAGEABLE_CHUNKS", "x")
    assert cuda.pageable_chunks() == 0
