"""Dynamic batching: requests that arrive close together run as one call to the backend.

One Batcher per model. Requests go into an asyncio queue; a worker task takes the first waiting
request, then keeps taking requests until it holds `max_batch` images or `max_delay` has passed
since the first one, runs them as one array on the session in a thread (the event loop stays free
to accept and parse more requests meanwhile), and hands each request its own rows. While a batch
runs the next one fills up, so under load the batches grow by themselves; `max_batch=1` turns
batching off. `close()` refuses new requests and answers every request already queued.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np


class ShuttingDown(Exception):
    """The server is stopping and takes no new requests."""


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Result:
    """One request's answer, and the batch it ran in (what actually ran, for the response and metrics)."""

    probabilities: np.ndarray
    batch_images: int      # images in the backend call this request shared
    batch_requests: int    # requests in that call


_STOP = object()


class Batcher:
    def __init__(self, session, max_batch: int, max_delay_s: float, executor: Executor | None = None,
                 on_batch=None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay must be at least 0, got {max_delay_s}")
        self.session = session
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.executor = executor
        self.on_batch = on_batch  # called with (images, requests, seconds) after each backend call
        self.pending = 0          # requests submitted and not yet answered
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._closing = False

    def start(self, executor: Executor | None = None) -> None:
        """Start the worker on the running event loop (again after a close, for a new lifespan)."""
        if executor is not None:
            self.executor = executor
        self._closing = False
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def infer(self, x: np.ndarray) -> Result:
        """x: (n, H, W, C) uint8 or float32, already checked. Returns this request's rows."""
        if self._closing or self._task is None:
            raise ShuttingDown("the server is not taking requests now (it is starting or shutting down)")
        fut = asyncio.get_running_loop().create_future()
        self.pending += 1
        try:
            self._queue.put_nowait(_Item(x, fut))
            return await fut
        finally:
            self.pending -= 1

    async def close(self) -> None:
        """Take no new requests; answer every queued one; stop the worker."""
        if self._task is None or self._closing:
            return
        self._closing = True
        self._queue.put_nowait(_STOP)
        await self._task

    # ------------------------------------------------------------------ the worker
    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch, images = [first], len(first.x)
            deadline = loop.time() + self.max_delay_s
            while images < self.max_batch:
                try:
                    item = self._queue.get_nowait()  # whatever is already waiting, without a pause
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), left)
                    except (asyncio.TimeoutError, TimeoutError):
                        break
                if item is _STOP:
                    stop = True  # finish this batch, then stop: nothing can be queued after _STOP
                    break
                if images + len(item.x) > self.max_batch:
                    # it does not fit: run it first thing in the next batch rather than overfill
                    await self._run(batch, loop)
                    batch, images = [item], len(item.x)
                    deadline = loop.time() + self.max_delay_s
                    continue
                batch.append(item)
                images += len(item.x)
            await self._run(batch, loop)

    async def _run(self, batch: list[_Item], loop) -> None:
        batch = [it for it in batch if not it.future.done()]  # a caller that gave up is skipped
        # uint8 and float inputs are scaled differently by the backend: one call per dtype
        groups: dict[np.dtype, list[_Item]] = {}
        for it in batch:
            groups.setdefault(it.x.dtype, []).append(it)
        for items in groups.values():
            t0 = time.perf_counter()
            try:
                x = items[0].x if len(items) == 1 else np.concatenate([it.x for it in items])
                probs = await loop.run_in_executor(self.executor, self.session.probabilities, x)
            except Exception as e:  # a backend failure: every request in the batch hears of it
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(e)
                continue
            seconds = time.perf_counter() - t0
            if self.on_batch is not None:
                self.on_batch(len(x), len(items), seconds)
            start = 0
            for it in items:
                n = len(it.x)
                if not it.future.done():
                    it.future.set_result(Result(probs[start:start + n], len(x), len(items)))
                start += n
