"""Which CPU engine runs a layer chain (Deep MNIST's kind of model) in fp32: measured on the machine.

A layer chain can run on the graph planner (numpy_graph.GraphRunner, compiled kernels) or on the
staged NumPy engine (numpy_backend.NumpyRunner, Winograd through the BLAS). Which is faster
depends on the machine and the batch, not the model alone: on the 16-core Xeon the planner ran
Deep MNIST's 10,000 images 2.8 times faster; on a 2-core AMD EPYC the staged engine was 1.2 times
faster there, while the planner was still faster for one image (docs/benchmarks.md). So the
first time a chain is prepared on a machine, both run the same random images, alternately: a
batch of IMAGES, and single images; the faster for each is kept (batches of up to SMALL images
go to the one-image choice), in a small JSON file in the kernels' cache directory keyed by the
model's shape, the thread count, the CPU, cnnrt's version and a hash of both engines' code. Later
processes read it.

`CNNRT_CHAIN_ENGINE` = auto (default), graph or staged; `CNNRT_STAGED=1` means staged.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time

import numpy as np

ENGINES = ("graph", "staged")
IMAGES = 512  # per timed pass: a few chunks, well under a second on 2 cores
ROUNDS = 3
SINGLE_CALLS = 20  # one-image calls per engine and round
SMALL = 16  # a batch of at most this many images runs on the one-image choice


def setting() -> str:
    if os.environ.get("CNNRT_STAGED", "0") == "1":
        return "staged"
    v = os.environ.get("CNNRT_CHAIN_ENGINE", "auto").strip().lower() or "auto"
    if v not in ("auto",) + ENGINES:
        from ..errors import CnnrtError
        raise CnnrtError(f"CNNRT_CHAIN_ENGINE must be auto, graph or staged, not {v!r}")
    return v


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _code() -> str:
    """A hash of the two engines' code: a choice measured on other kernels is measured again."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in ("cpu_native/kernels.c", "graph_kernels.py", "numpy_graph.py", "numpy_plan.py", "numpy_backend.py",
                 "cpu_kernels.py"):
        try:
            h.update((here / name).read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:16]


def _key(graph, threads: int) -> str:
    from .. import __version__

    shape = [(n.op, [tuple(graph.shapes.get(t, ())) for t in n.outputs]) for n in graph.nodes]
    text = json.dumps([shape, threads, _cpu(), os.cpu_count(), __version__, _code()], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _path(graph, threads: int):
    from .native import cache_dir

    return cache_dir() / f"chain-engine-{_key(graph, threads)}.json"


NAMES = {"graph": "the planner", "staged": "the staged engine"}


def choose(graph, chain, threads: int) -> dict:
    """{"engine": for batches, "single": for up to SMALL images (each "graph" or "staged"), "why": a
    sentence}; measures once per machine and model shape, then reads the answer from the cache."""
    how = setting()
    if how != "auto":
        return {"engine": how, "single": how, "why": f"set by the environment ({how})"}
    path = _path(graph, threads)
    try:
        got = json.loads(path.read_text())
        if got.get("engine") in ENGINES and got.get("single") in ENGINES:
            return {"engine": got["engine"], "single": got["single"],
                    "why": f"{got['why']} (measured {got['date']}, cached in {path})"}
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    t = measure(graph, chain, threads)
    engine = min(ENGINES, key=lambda e: t[e])
    single = min(ENGINES, key=lambda e: t[e + "_one"])
    why = (f"the faster here: for {IMAGES} images {t['graph'] * 1e3:.0f} ms on the planner, "
           f"{t['staged'] * 1e3:.0f} ms on the staged engine; for one image {t['graph_one'] * 1e3:.2f} and "
           f"{t['staged_one'] * 1e3:.2f} ms: batches of more than {SMALL} on {NAMES[engine]}, smaller ones on "
           f"{NAMES[single]}")
    record = {"engine": engine, "single": single, "why": why, "seconds": t, "images": IMAGES, "threads": threads,
              "cpu": _cpu(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:  # atomic: a reader never sees half a file; a cache we cannot write only costs a re-measure
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass
    return {"engine": engine, "single": single, "why": f"{why} (measured now)"}


def measure(graph, chain, threads: int) -> dict:
    """Per engine: seconds per pass over the same IMAGES random uint8 images ("graph", "staged"),
    and the median one-image call ("graph_one", "staged_one"); best of ROUNDS alternating rounds."""
    from .numpy_backend import NumpyRunner
    from .numpy_graph import GraphRunner

    x = np.random.default_rng(0).integers(0, 256, (IMAGES, *graph.input_shape), dtype=np.uint8)
    runners = {"graph": GraphRunner(graph, "fp32", threads=threads), "staged": NumpyRunner(chain, "fp32", threads=threads)}
    best = {k + s: float("inf") for k in runners for s in ("", "_one")}
    try:
        for r in runners.values():
            r.probabilities(x[:64])  # buffers, programs, the BLAS's first call
            r.probabilities(x[:1])
        for k in range(ROUNDS):
            for name in (ENGINES if k % 2 == 0 else ENGINES[::-1]):
                r = runners[name]
                t0 = time.perf_counter()
                r.probabilities(x)
                best[name] = min(best[name], time.perf_counter() - t0)
                one = []
                for i in range(SINGLE_CALLS):
                    t0 = time.perf_counter()
                    r.probabilities(x[i:i + 1])
                    one.append(time.perf_counter() - t0)
                best[name + "_one"] = min(best[name + "_one"], float(np.median(one)))
    finally:
        for r in runners.values():
            close = getattr(r, "close", None)
            if close is not None:
                close()
    return best


class ByBatch:
    """A layer chain on two engines: batches of up to SMALL images on `single`, larger ones on
    `large` (what chain_engine.choose found faster for each). Everything else is `large`'s."""

    def __init__(self, single, large, why: str):
        self.single, self.large, self.engine_choice = single, large, why
        self._last = large

    def _run(self, method, x, batch_size, progress):
        r = self.single if len(x) <= SMALL else self.large
        self._last = r
        return getattr(r, method)(x, batch_size=batch_size, progress=progress)

    def probabilities(self, x, batch_size=None, progress=None):
        return self._run("probabilities", x, batch_size, progress)

    def predict(self, x, batch_size=None, progress=None):
        return self._run("predict", x, batch_size, progress)

    @property
    def batch_size_used(self):
        return self._last.batch_size_used

    def describe(self):
        return self.large.describe()

    def close(self) -> None:
        for r in (self.single, self.large):
            close = getattr(r, "close", None)
            if close is not None:
                close()

    def __getattr__(self, name):  # (only for what the instance lacks: model, precision, ...)
        if name in ("single", "large"):
            raise AttributeError(name)
        return getattr(self.large, name)


def engine_used(runner) -> str | None:
    """For `cnnrt eval`: which engine ran a layer chain's last call and how it was chosen, or None
    for a runner with no choice (any other graph, fp16, no compiled kernels)."""
    choice = getattr(runner, "engine_choice", None)
    if not choice:
        return None
    from .numpy_backend import NumpyRunner

    ran = runner._last if isinstance(runner, ByBatch) else runner
    how = "set by the environment" if "environment" in choice else "the faster on this machine for this batch size"
    return f"{NAMES['staged' if isinstance(ran, NumpyRunner) else 'graph']} ({how}; `cnnrt info --backend numpy` says why)"
