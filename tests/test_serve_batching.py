"""The dynamic batcher on its own: requests that arrive together share a backend call, each gets its
own rows back (checked against the session run offline on each request alone), and closing it
answers every queued request."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cnnrt.serve.batching import Batcher, ShuttingDown

from conftest import SHIPPED


@pytest.fixture(scope="module")
def session():
    import cnnrt

    return cnnrt.load(SHIPPED / "deep_mnist.safetensors", backend="numpy")


class Recording:
    """A session wrapper that records the size of every backend call (and can be slowed down)."""

    def __init__(self, session, delay_s: float = 0.0):
        self.session, self.delay_s, self.calls = session, delay_s, []
        self.lock = threading.Lock()

    def probabilities(self, x):
        with self.lock:
            self.calls.append((len(x), x.dtype))
        time.sleep(self.delay_s)
        return self.session.probabilities(x)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_get_their_own_rows(session, mnist_test, rng):
    x, _ = mnist_test
    sizes = rng.integers(1, 5, size=40)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) + rng.integers(0, 5000)
    requests = [x[s:s + n] for s, n in zip(starts, sizes)]
    rec = Recording(session, delay_s=0.02)

    async def main():
        b = Batcher(rec, max_batch=16, max_delay_s=0.01, executor=ThreadPoolExecutor(1))
        b.start()
        results = await asyncio.gather(*(b.infer(r[..., None]) for r in requests))
        await b.close()
        return results

    results = run(main())
    for r, res in zip(requests, results):
        np.testing.assert_allclose(res.probabilities, session.probabilities(r), rtol=0, atol=1e-5)
        assert res.batch_images <= 16 or res.batch_requests == 1
    sizes_run = [n for n, _ in rec.calls]
    assert sum(sizes_run) == sizes.sum()  # nothing lost, nothing run twice
    assert max(sizes_run) <= 16 and len(sizes_run) < len(requests)  # batched, within the limit
    assert sum(r.batch_requests > 1 for r in results) > len(requests) // 2


def test_max_batch_one_turns_batching_off(session, mnist_test):
    x, _ = mnist_test
    rec = Recording(session)

    async def main():
        b = Batcher(rec, max_batch=1, max_delay_s=0.05)
        b.start()
        out = await asyncio.gather(*(b.infer(x[i:i + 1, ..., None]) for i in range(10)))
        await b.close()
        return out

    results = run(main())
    assert [n for n, _ in rec.calls] == [1] * 10
    assert all(r.batch_images == 1 and r.batch_requests == 1 for r in results)


def test_uint8_and_float_requests_are_never_mixed_in_one_call(session, mnist_test):
    x, _ = mnist_test
    imgs = x[100:106, ..., None]
    floats = imgs.astype(np.float32) * np.float32(session.input_scale)
    rec = Recording(session, delay_s=0.02)

    async def main():
        b = Batcher(rec, max_batch=64, max_delay_s=0.05)
        b.start()
        out = await asyncio.gather(*(b.infer(imgs[i:i + 1] if i % 2 else floats[i:i + 1]) for i in range(6)))
        await b.close()
        return out

    results = run(main())
    offline = session.probabilities(imgs)
    for i, r in enumerate(results):
        np.testing.assert_allclose(r.probabilities[0], offline[i], rtol=0, atol=1e-5)
    assert sorted(str(d) for _, d in rec.calls) == ["float32", "uint8"]


def test_a_request_larger_than_max_batch_runs_alone(session, mnist_test):
    x, _ = mnist_test
    rec = Recording(session)

    async def main():
        b = Batcher(rec, max_batch=4, max_delay_s=0.01)
        b.start()
        out = await asyncio.gather(b.infer(x[:2, ..., None]), b.infer(x[2:12, ..., None]), b.infer(x[12:14, ..., None]))
        await b.close()
        return out

    small, big, small2 = run(main())
    assert big.batch_images == 10 and big.batch_requests == 1
    np.testing.assert_allclose(big.probabilities, session.probabilities(x[2:12]), atol=1e-5)
    # first come, first served: the first request is not held back to fill a batch behind the big one
    assert [n for n, _ in rec.calls] == [2, 10, 2]


def test_close_answers_every_queued_request_then_refuses(session, mnist_test):
    x, _ = mnist_test
    rec = Recording(session, delay_s=0.05)

    async def main():
        b = Batcher(rec, max_batch=3, max_delay_s=0.001)
        b.start()
        tasks = [asyncio.ensure_future(b.infer(x[i:i + 1, ..., None])) for i in range(10)]
        while b.pending < 10:  # every request queued; the first batch has barely started
            await asyncio.sleep(0)
        await b.close()
        assert all(t.done() for t in tasks)
        with pytest.raises(ShuttingDown):
            await b.infer(x[:1, ..., None])
        return [t.result() for t in tasks]

    results = run(main())
    offline = session.probabilities(x[:10])
    for i, r in enumerate(results):
        np.testing.assert_allclose(r.probabilities[0], offline[i], atol=1e-5)
    assert sum(n for n, _ in rec.calls) == 10


def test_a_backend_failure_reaches_every_request_of_the_batch_and_the_batcher_goes_on(session, mnist_test):
    x, _ = mnist_test

    class FailsOnce:
        def __init__(self):
            self.failed = False

        def probabilities(self, a):
            if not self.failed:
                self.failed = True
                time.sleep(0.02)
                raise RuntimeError("device lost")
            return session.probabilities(a)

    async def main():
        b = Batcher(FailsOnce(), max_batch=8, max_delay_s=0.02)
        b.start()
        first = await asyncio.gather(*(b.infer(x[i:i + 1, ..., None]) for i in range(3)), return_exceptions=True)
        after = await b.infer(x[:1, ..., None])
        await b.close()
        return first, after

    first, after = run(main())
    assert all(isinstance(e, RuntimeError) and str(e) == "device lost" for e in first)
    np.testing.assert_allclose(after.probabilities, session.probabilities(x[:1]), atol=1e-5)


def test_batcher_checks_its_arguments(session):
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        Batcher(session, 0, 0.0)
    with pytest.raises(ValueError, match="max_delay must be at least 0"):
        Batcher(session, 4, -1.0)
