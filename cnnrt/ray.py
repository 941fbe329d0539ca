"""cnnrt on Ray Data: one model per actor (per GPU on GPUs), batches streamed through them.

For your own pipelines, `CnnrtPredictor` is a callable class for `Dataset.map_batches`:

    import ray, cnnrt.ray
    ds = ray.data.read_parquet("/shared/digits/")          # a column "image": (N, 28, 28) uint8
    out = ds.map_batches(cnnrt.ray.CnnrtPredictor,
                         fn_constructor_args=("deep_mnist.safetensors", "cuda"),
                         batch_size=1024, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(size=2), num_gpus=1)

Each actor loads the model once with `cnnrt.load` and runs every batch it is given through the
session; the batch gains the columns "label" and "probabilities". `cnnrt batch` (cnnrt/batch.py)
uses `Run` below: read tasks turn shard descriptions into pixels, the actor pool runs the model,
and the results stream back to the driver, which writes them.

Ray is an extra (`pip install 'cnnrt[ray]'`) and is imported only inside these functions.
"""
from __future__ import annotations

import json
import os
import time
from typing import Iterator

import numpy as np

from .errors import BackendUnavailable, CnnrtError

RAY_HINT = "pip install 'cnnrt[ray]'"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BackendUnavailable(f"cnnrt batch runs on Ray Data, which is not installed: {RAY_HINT}") from None
    return ray


class CnnrtPredictor:
    """A callable class for `Dataset.map_batches(..., batch_format="numpy")`.

    model_path must be readable on every node (a shared filesystem, or the same files on each).
    The batch's `column` (default "image") holds (N, H, W[, C]) pixels: uint8 0..255 are fed as
    `cnnrt eval` feeds them; float pixels are taken as 0..255 intensities (cnnrt.images's
    convention) and normalised for the model. Other columns pass through; the image column is
    dropped unless keep_input. With timings=True each batch's first row also carries how long the
    actor computed (_infer_s; _infer_cpu_s in CPU-seconds of its process, all threads), how long it
    waited for this batch since its last one (_wait_s), and the batch size (_batch); the others
    hold 0, so that sums over a dataset are totals.
    """

    def __init__(self, model_path: str, backend: str = "auto", precision: str | None = None,
                 column: str = "image", keep_input: bool = False, timings: bool = False):
        import cnnrt

        self.session = cnnrt.load(model_path, backend=backend, precision=precision)
        self.column, self.keep_input, self.timings = column, keep_input, timings
        self._last = None

    def __call__(self, batch: dict) -> dict:
        from . import images

        start, cpu = time.perf_counter(), time.process_time()
        x = batch[self.column]
        out = {k: v for k, v in batch.items() if k != self.column or self.keep_input}
        n = len(x)
        if n:
            p = self.session.probabilities(images.model_input(np.asarray(x), self.session), batch_size=n)
        else:
            p = np.zeros((0, self.session.num_classes), np.float32)
        out["label"] = p.argmax(axis=1).astype(np.int64)
        out["probabilities"] = p.astype(np.float32, copy=False)
        if self.timings:
            end = time.perf_counter()
            for key, value in (("_infer_s", end - start), ("_infer_cpu_s", time.process_time() - cpu),
                               ("_wait_s", 0.0 if self._last is None else start - self._last), ("_batch", float(n))):
                col = np.zeros(n, np.float64)
                if n:
                    col[0] = value
                out[key] = col
            self._last = end
        return out


def _read_block(batch: dict, source_json: str) -> dict:
    """A Ray task: shard descriptions -> their pixels, ids and the shard index of every row."""
    from .shards import Source, read_spec

    source = Source(**json.loads(source_json))
    ids, shard_of, pixels, read_s = [], [], [], []
    for spec in batch["spec"]:
        t = time.perf_counter()
        shard, x = read_spec(str(spec), source)
        ids.append(np.arange(shard.first_id, shard.first_id + shard.rows, dtype=np.int64))
        shard_of.append(np.full(shard.rows, shard.index, np.int64))
        pixels.append(x)
        r = np.zeros(shard.rows, np.float64)
        r[0] = time.perf_counter() - t
        read_s.append(r)
    dtype = np.uint8 if all(p.dtype == np.uint8 for p in pixels) else np.float32
    return {"id": np.concatenate(ids), "shard": np.concatenate(shard_of),
            "image": np.concatenate([p.astype(dtype, copy=False) for p in pixels]),
            "_read_s": np.concatenate(read_s)}


# ---------------------------------------------------------------- connecting

def connect(address: str | None, verbose: bool = False) -> bool:
    """Join the cluster at `address` (None: $RAY_ADDRESS, else one that `ray start` runs on this
    machine, else a new local one; 'local': always a new local one; 'auto': the one `ray start`
    runs on this machine; 'host:6379' a head node's GCS. Ray Client, 'ray://...', is refused: Ray
    Data's streaming executor does not run through it).
    Returns True when this call started Ray, so that the caller shuts it down."""
    import logging

    ray = _ray()
    if ray.is_initialized():
        return False
    _check_reachable(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not verbose:  # Ray's C++ core and Ray Data log at INFO/WARNING to stderr; a summary is what we print
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=verbose,
                 logging_level=logging.INFO if verbose else logging.ERROR)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise CnnrtError(f"cannot connect to Ray at {address or os.environ.get('RAY_ADDRESS') or 'a new local cluster'}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    return True


def _check_reachable(address: str | None) -> None:
    """A host:port that nothing answers on fails now, not after Ray's minutes of retries."""
    import socket

    if not address or address in ("local", "auto"):
        return
    if address.startswith("ray://"):
        raise CnnrtError(f"--address {address}: Ray Data does not run through Ray Client (ray://; with Ray 2.60 it "
                         f"fails inside Ray); run cnnrt batch on a node of the cluster with --address auto or "
                         f"HEAD:6379, or submit it as a Ray job (docs/ray.md)")
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise CnnrtError(f"--address {address!r}: expected local, auto or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise CnnrtError(f"cannot reach Ray at {address}: {e.strerror or e} (is the cluster up? `ray status` on its "
                         f"head node shows it)") from None


def resources() -> dict:
    """The cluster's CPUs, GPUs, live nodes (and each one's CPUs) and GCS address, as Ray reports them."""
    ray = _ray()
    total = ray.cluster_resources()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return {"CPU": float(total.get("CPU", 0)), "GPU": float(total.get("GPU", 0)), "nodes": len(alive),
            "node_cpus": [float(n.get("Resources", {}).get("CPU", 0)) for n in alive],
            "address": ray.get_runtime_context().gcs_address}


def plan_actors(backend: str, num_actors: int | None, cpus_per_actor: float | None, have: dict) -> tuple[int, float, float]:
    """(actors, CPUs each, GPUs each).

    GPUs: one actor per GPU. CPUs: by default one actor per node, holding all of its node's CPUs
    but one (the NumPy backend runs a thread per core of its machine, so two actors on one node
    would only split its cores); the CPU left over on each node runs the read tasks. Actors hold
    their CPUs for the whole run: without a spare one nothing could read, and the run would stall.
    """
    gpus = 1.0 if backend == "cuda" else 0.0
    if cpus_per_actor is not None and cpus_per_actor <= 0:
        raise CnnrtError(f"--cpus-per-actor must be positive, got {cpus_per_actor}")
    if backend == "cuda":
        cpus = cpus_per_actor if cpus_per_actor is not None else 1.0
        n = num_actors if num_actors is not None else int(have["GPU"])
        if n < 1:
            raise BackendUnavailable("--backend cuda: the Ray cluster has no GPUs")
        if n > have["GPU"]:
            raise CnnrtError(f"--num-actors {n} with one GPU each, but the cluster has {have['GPU']:g} GPUs")
    elif num_actors is None and cpus_per_actor is None:
        node_cpus = [c for c in have.get("node_cpus") or [have["CPU"]] if c > 0]
        n, cpus = len(node_cpus), max(min(node_cpus) - 1.0, 0.5)
    else:
        cpus = cpus_per_actor if cpus_per_actor is not None else 1.0
        n = num_actors if num_actors is not None else max(1, int((have["CPU"] - 1) // cpus))
    if n < 1:
        raise CnnrtError(f"--num-actors must be at least 1, got {n}")
    if n * cpus > have["CPU"] - 0.5:
        raise CnnrtError(f"{n} actors of {cpus:g} CPUs leave less than half a CPU of the cluster's {have['CPU']:g} "
                         f"for reading the input; use fewer actors or --cpus-per-actor")
    return n, cpus, gpus


# ---------------------------------------------------------------- running

class Run:
    """One pass of the pipeline over some shards; iterate it for result batches, then ray_stats()."""

    def __init__(self, specs: list[str], source_json: str, model_path: str, backend: str, precision: str | None,
                 batch_size: int, actors: int, cpus: float, gpus: float, predictor=CnnrtPredictor,
                 predictor_kwargs: dict | None = None, progress: bool = False):
        ray = _ray()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        if hasattr(ctx, "enable_operator_progress_bars"):
            ctx.enable_operator_progress_bars = progress
        ds = ray.data.from_items([{"spec": s} for s in specs], override_num_blocks=len(specs))
        ds = ds.map_batches(_read_block, batch_size=1, batch_format="numpy", num_cpus=0.5,
                            fn_kwargs={"source_json": source_json})
        ds = ds.map_batches(
            predictor, batch_size=batch_size, batch_format="numpy",
            fn_constructor_args=(model_path, backend, precision),
            fn_constructor_kwargs={"timings": True, **(predictor_kwargs or {})},
            # Ray Data restarts a dead actor and retries the batches it held (max_restarts and
            # max_task_retries default to -1 for actor pools); a Python exception is not retried
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus)
        self.dataset = ds

    def __iter__(self) -> Iterator[dict]:
        try:
            yield from self.dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
        except CnnrtError:
            raise
        except Exception as e:  # Ray wraps an error raised on a worker: show ours plainly, a bug as it is
            ours = _ours(e)
            if ours is None:
                raise
            raise ours from None

    def ray_stats(self) -> str:
        try:
            return self.dataset.stats()
        except Exception as e:  # noqa: BLE001 - stats are a courtesy
            return f"(no Ray Data stats: {e})"


def _ours(e: BaseException) -> CnnrtError | None:
    """The CnnrtError (a bad input file, a backend that cannot run) that a Ray error carries, if any."""
    seen, stack = set(), [e]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, CnnrtError):
            lines = [ln for ln in str(cur).strip().splitlines() if ln.strip()]
            # Ray's dual-typed error prints the remote traceback first; our message is the last line
            msg = lines[-1] if lines else type(cur).__name__
            for name in ("FormatError: ", "CnnrtError: ", "BackendUnavailable: "):
                msg = msg.split(name, 1)[-1]
            return CnnrtError(msg)
        stack.extend([cur.__cause__, cur.__context__, getattr(cur, "cause", None)])
    # Ray Data re-raises a task's error as UserCodeException carrying only the remote traceback's
    # text; ours is its line "cnnrt.errors.FormatError: <message>"
    for line in reversed(str(e).splitlines()):
        for name in ("cnnrt.errors.FormatError: ", "cnnrt.errors.CnnrtError: ", "cnnrt.errors.BackendUnavailable: "):
            if line.startswith(name):
                return CnnrtError(line[len(name):].strip())
    return None
