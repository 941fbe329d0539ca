"""`cnnrt batch SRC DEST`: a model over many images on Ray Data, resumable, every row exactly once.

The input is cut into deterministic shards (cnnrt/shards.py). Shards already in DEST are skipped;
the others go through Ray (cnnrt/ray.py): read tasks load pixels, an actor pool runs the model.
The results stream back to this process, which checks that each shard got every one of its ids
exactly once and writes it as DEST/part-NNNNNN.parquet, atomically (a temporary file, fsync,
rename). A run that dies leaves only whole shards, so the next run recomputes just the missing
ones. DEST/_cnnrt_batch.json records what the shards were computed from (input files, model,
shard size, backend, precision); a rerun that differs in any of these is refused rather than
mixing two kinds of output.

Output columns: id (the image's position in the sorted input), file (relative to SRC), row (in
that file), label (the likeliest class), probabilities (float32, one per class).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from .errors import CnnrtError, FormatError

MANIFEST = "_cnnrt_batch.json"
DEFAULT_SHARD_SIZE = 10_000
DEFAULT_BATCH_SIZE = 1024


def _model_digest(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(p.relative_to(path).as_posix().encode() if p != path else b"")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _remove_stale_temps(dest: Path) -> None:
    """Temporary files of runs that died (their process is gone) are removed; a live run's are kept."""
    for p in dest.glob(".*.tmp"):
        try:
            pid = int(p.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            p.unlink(missing_ok=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _read_manifest(dest: Path) -> dict | None:
    path = dest / MANIFEST
    if not path.exists():
        if any(dest.glob("part-*.parquet")):
            raise CnnrtError(f"{dest}: holds part-*.parquet files but no {MANIFEST}, so what they were computed from "
                             f"is unknown; use an empty DEST")
        return None
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: unreadable ({e}); delete DEST or pick another") from None
    if not isinstance(have, dict):
        raise FormatError(f"{path}: not a cnnrt batch manifest (expected a JSON object)")
    return have


def _compare(dest: Path, have: dict | None, want: dict) -> None:
    """Resuming is only right into the output of the same input, model and options."""
    if have is None:
        return
    differ = [k for k in want if have.get(k) != want[k]]
    if differ:
        detail = "; ".join(f"{k}: was {have.get(k)!r}, now {want[k]!r}" for k in differ)
        raise CnnrtError(f"{dest} holds the output of a different run ({detail}); resume with the same input, "
                         f"model and options, or use another DEST")


def _done(dest: Path, shard) -> bool:
    """A shard counts as written when its file is there and its footer holds the shard's row count."""
    import pyarrow.parquet as pq

    path = dest / shard.name
    if not path.exists():
        return False
    try:
        return pq.read_metadata(path).num_rows == shard.rows
    except Exception:  # noqa: BLE001 - a damaged file is recomputed, not trusted
        return False


class _Writer:
    """Collects result rows per shard; writes a shard when all its ids are in, exactly once each."""

    def __init__(self, dest: Path, shards: list, source, meta: dict, num_classes: int):
        self.dest, self.source, self.meta, self.classes = dest, source, meta, num_classes
        self.shards = {s.index: s for s in shards}
        self.parts: dict[int, list] = {}
        self.count: dict[int, int] = {}
        self.written: set[int] = set()
        self.rows = 0
        self.write_s = 0.0
        self.timing = {"_read_s": 0.0, "_infer_s": 0.0, "_infer_cpu_s": 0.0, "_wait_s": 0.0, "_batch": 0.0}
        self.batches = 0

    def add(self, batch: dict) -> None:
        import numpy as np

        for key in self.timing:
            if key in batch:
                self.timing[key] += float(np.sum(batch[key]))
        if "_batch" in batch:
            self.batches += int(np.count_nonzero(batch["_batch"]))
        shard_of = np.asarray(batch["shard"])
        order = np.argsort(shard_of, kind="stable")
        keys, starts = np.unique(shard_of[order], return_index=True)
        bounds = list(starts[1:]) + [len(order)]
        for k, a, b in zip(keys.tolist(), starts.tolist(), bounds):
            take = order[a:b]
            if k not in self.shards:
                raise CnnrtError(f"Ray returned rows of shard {k}, which this run did not ask for")
            if k in self.written:
                raise CnnrtError(f"shard {k}: rows arrived after the shard was complete (a duplicate delivery)")
            self.parts.setdefault(k, []).append((np.asarray(batch["id"])[take], np.asarray(batch["label"])[take],
                                                 np.asarray(batch["probabilities"])[take]))
            self.count[k] = self.count.get(k, 0) + len(take)
            if self.count[k] >= self.shards[k].rows:
                self._write(self.shards[k])

    def _write(self, shard) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        t = time.perf_counter()
        parts = self.parts.pop(shard.index)
        ids = np.concatenate([p[0] for p in parts]).astype(np.int64)
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        expect = np.arange(shard.first_id, shard.first_id + shard.rows, dtype=np.int64)
        if len(ids) != len(expect) or not np.array_equal(ids, expect):
            dup = len(ids) - len(np.unique(ids))
            raise CnnrtError(f"shard {shard.index}: got {len(ids)} rows for {shard.rows} ids ({dup} duplicated); "
                             f"nothing was written for it")
        labels = np.concatenate([p[1] for p in parts]).astype(np.int64)[order]
        probs = np.concatenate([p[2] for p in parts]).astype(np.float32)[order]
        if self.source.format == "images":
            files = [self.source.name(shard.file + i) for i in range(shard.rows)]
            rows = np.zeros(shard.rows, np.int64)
        else:
            files = [self.source.name(shard.file)] * shard.rows
            rows = np.arange(shard.start, shard.stop, dtype=np.int64)
        table = pa.table({
            "id": ids, "file": pa.array(files, pa.string()), "row": rows, "label": labels,
            "probabilities": pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), self.classes),
        })
        info = {**self.meta, "shard": shard.index, "first_id": shard.first_id, "rows": shard.rows}
        table = table.replace_schema_metadata({"cnnrt": json.dumps(info)})
        path = self.dest / shard.name
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.written.add(shard.index)
        self.rows += shard.rows
        self.write_s += time.perf_counter() - t

    def missing(self) -> list:
        return [s for k, s in self.shards.items() if k not in self.written]


def run_batch(src, dest, model, backend: str = "auto", precision: str | None = None, fmt: str = "auto",
              column: str = "image", preprocess: str = "auto", address: str | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE, num_actors: int | None = None,
              cpus_per_actor: float | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
              progress: bool = False, verbose: bool = False,
              predictor=None, predictor_kwargs: dict | None = None, ray_stats: bool = False) -> dict:
    """The whole job; returns the summary `cnnrt batch --json` prints. Joins an already
    initialised Ray (tests, notebooks) as it is, else connects to `address` and leaves after."""
    import cnnrt

    from . import images, shards
    from . import ray as cray

    t0 = time.perf_counter()
    if batch_size < 1:
        raise CnnrtError(f"--batch-size must be at least 1, got {batch_size}")
    src, dest, model = Path(src), Path(dest), Path(model)
    meta_session = cnnrt.load(model, backend="numpy")  # the model's shape, classes and labels; checks the file
    shape = meta_session.input_shape
    recipe = preprocess
    if recipe == "auto":
        recipe = "mnist" if images.is_mnist_shaped(shape) else "resize"
    elif recipe == "mnist" and not images.is_mnist_shaped(shape):
        raise CnnrtError(f"--preprocess mnist needs a 28x28 single-channel model; {model} takes {shape} (H, W, C)")
    # absolute: read tasks run in other working directories, on other nodes
    source, plan = shards.plan(src.absolute(), fmt, shape, shard_size, column=column, recipe=recipe)
    if dest.exists() and not dest.is_dir():
        raise CnnrtError(f"{dest}: exists and is not a folder (DEST is a folder of Parquet shards)")
    dest.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(dest)
    pending = [s for s in plan if not _done(dest, s)]
    skipped = len(plan) - len(pending)
    summary = {"source": str(src), "format": source.format, "dest": str(dest), "model": str(model),
               "rows_total": source.total, "shards_total": len(plan), "shards_skipped": skipped,
               "shards_written": 0, "rows": 0, "shard_size": shard_size}
    want = {"format": source.format, "column": column if source.format == "parquet" else None,
            "preprocess": recipe if source.format in ("images", "parquet") else None,
            "shard_size": shard_size, "shards": len(plan), "rows": source.total,
            "source_digest": source.digest(), "model_digest": _model_digest(model)}
    manifest = _read_manifest(dest)
    _compare(dest, manifest, want)  # before Ray starts: a wrong DEST fails fast
    started = cray.connect(address, verbose=verbose) if pending else False
    try:
        have = cray.resources() if pending else None
        if pending:
            name = backend
            if name == "auto":
                name = "cuda" if have["GPU"] >= 1 else "numpy"
            actors, cpus, gpus = cray.plan_actors(name, num_actors, cpus_per_actor, have)
            prec = precision or _default_precision(name)
            want.update(backend=name, precision=prec)
            _compare(dest, manifest, want)
            if manifest is None:
                _atomic_write_bytes(dest / MANIFEST, (json.dumps(want, indent=2) + "\n").encode())
        else:  # nothing to compute: the shards were written by whatever the manifest says
            name, prec = (manifest or {}).get("backend"), (manifest or {}).get("precision")
            actors, cpus, gpus = 0, 0.0, 0.0
        summary.update(backend=name, precision=prec, actors=actors, cpus_per_actor=cpus,
                       gpus_per_actor=gpus, batch_size=batch_size, address=have["address"] if have else None,
                       nodes=have["nodes"] if have else 0, cluster_cpus=have["CPU"] if have else 0,
                       cluster_gpus=have["GPU"] if have else 0)
        t1 = time.perf_counter()
        summary["setup_seconds"] = t1 - t0
        meta = {"model": str(model), "backend": name, "precision": prec, "labels": meta_session.labels,
                "source": str(src)}
        writer = _Writer(dest, pending, source, meta, meta_session.num_classes)
        wait_s, first_s = 0.0, None
        if pending:
            shipped = replace(source, files=[], rows=[]) if source.format == "images" else source
            run = cray.Run([shards.shard_spec(s, source) for s in pending], json.dumps(asdict(shipped)), str(model.resolve()), name, prec, batch_size,
                           actors, cpus, gpus, predictor=predictor or cray.CnnrtPredictor,
                           predictor_kwargs=predictor_kwargs, progress=progress)
            it = iter(run)
            while True:
                t = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    wait_s += time.perf_counter() - t
                    break
                wait_s += time.perf_counter() - t
                if first_s is None:
                    first_s = time.perf_counter() - t1
                writer.add(batch)
            missing = writer.missing()
            if missing:
                raise CnnrtError(f"the run ended with {len(missing)} shard(s) incomplete (first: shard {missing[0].index}, "
                                 f"{writer.count.get(missing[0].index, 0)} of {missing[0].rows} rows); rerun to finish them")
            if ray_stats:
                summary["ray_stats"] = run.ray_stats()
        t2 = time.perf_counter()
    finally:
        if started:
            import ray

            ray.shutdown()
    run_s = t2 - t1
    summary.update(
        shards_written=len(writer.written), rows=writer.rows, run_seconds=run_s, seconds=time.perf_counter() - t0,
        images_per_second=writer.rows / run_s if writer.rows and run_s > 0 else 0.0,
        first_result_seconds=first_s or 0.0,
        read_seconds=writer.timing["_read_s"], inference_seconds=writer.timing["_infer_s"],
        inference_cpu_seconds=writer.timing["_infer_cpu_s"],
        actor_wait_seconds=writer.timing["_wait_s"], write_seconds=writer.write_s, driver_wait_seconds=wait_s,
        inference_batches=writer.batches,
        mean_batch_rows=writer.timing["_batch"] / writer.batches if writer.batches else 0.0,
    )
    return summary


def _default_precision(backend: str) -> str:
    from . import backends

    return backends._module(backend).DEFAULT_PRECISION


# ---------------------------------------------------------------- the command

def add_parser(sub) -> None:
    from .cli import DEFAULT_MODEL, _default

    p = sub.add_parser(
        "batch", help="run a model over a large input on Ray Data (a laptop or a cluster) into Parquet, resumably",
        description="Reads SRC (an IDX file, a folder of .npy arrays, Parquet files, or a folder of image files), "
                    "runs the model on a Ray actor pool (one actor per GPU with --backend cuda) and writes DEST/"
                    "part-NNNNNN.parquet: id, file, row, label, probabilities. Rerunning after a failure computes "
                    "only the shards not yet in DEST. Needs: pip install 'cnnrt[ray]'.")
    p.add_argument("src", metavar="SRC", help="an IDX file (raw or .gz), a .npy array or folder of them, a .parquet file "
                   "or folder of them, or a folder of image files (searched recursively, in sorted order)")
    p.add_argument("dest", metavar="DEST", help="output folder of Parquet shards (created; resumed if it exists)")
    p.add_argument("--model", default=_default(DEFAULT_MODEL), help="a model file (default: the shipped Deep MNIST)")
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "cuda"),
                   help="auto (default: cuda when the Ray cluster has GPUs, else numpy), numpy or cuda")
    p.add_argument("--precision", choices=("fp32", "fp16"), default=None,
                   help="default: fp32 on the CPU, fp16 on the GPU")
    p.add_argument("--address", default=None,
                   help="the Ray cluster: local (start one in this process), auto (the one `ray start` runs on this "
                        "machine) or HOST:6379 (a head node's GCS); default: $RAY_ADDRESS, else a cluster `ray start` "
                        "runs on this machine, else a new local one. See docs/ray.md")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="images per model call on an actor (default: %(default)s)")
    p.add_argument("--num-actors", type=int, default=None,
                   help="model replicas (default: one per GPU; on CPUs, one per node)")
    p.add_argument("--cpus-per-actor", type=float, default=None,
                   help="CPUs Ray reserves per actor (default: 1 per GPU actor; on CPUs, all of a node's but one, "
                        "left for reading; 1 when --num-actors is given)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help="rows per output shard, the unit of resuming (default: %(default)s); keep it when resuming")
    p.add_argument("--format", dest="fmt", default="auto", choices=("auto", "idx", "npy", "parquet", "images"),
                   help="the input's format (default: from SRC's name or contents)")
    p.add_argument("--column", default="image", help="Parquet: the image column (default: %(default)s)")
    p.add_argument("--preprocess", choices=("auto", "mnist", "resize"), default="auto",
                   help="encoded image files: as `cnnrt predict` (default auto: MNIST's recipe for 28x28x1 models)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    p.add_argument("--ray-stats", action="store_true", help="also print Ray Data's per-operator statistics")
    p.add_argument("--verbose", action="store_true", help="Ray's own log lines and the workers' output")
    p.set_defaults(func=command)


def command(a) -> int:
    summary = run_batch(a.src, a.dest, a.model, backend=a.backend, precision=a.precision, fmt=a.fmt, column=a.column,
                        preprocess=a.preprocess, address=a.address, batch_size=a.batch_size, num_actors=a.num_actors,
                        cpus_per_actor=a.cpus_per_actor, shard_size=a.shard_size, progress=sys.stderr.isatty(),
                        verbose=a.verbose, ray_stats=a.ray_stats)
    stats = summary.pop("ray_stats", None)
    if a.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
    if stats:
        print(stats, file=sys.stderr)
    return 0


def format_summary(s: dict) -> str:
    lines = [f"Input: {s['source']} ({s['format']}, {s['rows_total']:,} images in {s['shards_total']} shards of up to "
             f"{s['shard_size']:,})",
             f"Output: {s['dest']}: {s['shards_written']} shard(s) written, {s['shards_skipped']} already there (skipped)"]
    if not s["shards_written"]:
        lines.append("Nothing to compute.")
        return "\n".join(lines)
    lines += [
        f"Ray: cluster at {s['address']}, {s['nodes']} node(s), {s['cluster_cpus']:g} CPUs, {s['cluster_gpus']:g} GPUs",
        f"Backend: {s['backend']}, {s['precision']}; {s['actors']} actor(s) of {s['cpus_per_actor']:g} CPU"
        + (f" and {s['gpus_per_actor']:g} GPU" if s["gpus_per_actor"] else "")
        + f"; batches of up to {s['batch_size']} (mean {s['mean_batch_rows']:.0f} over {s['inference_batches']} calls)",
        f"Rows: {s['rows']:,} computed",
        f"Time: {s['run_seconds']:.2f} s ({s['images_per_second']:,.0f} images/s); setup before it "
        f"(Ray start, listing) {s['setup_seconds']:.2f} s; first results after {s['first_result_seconds']:.2f} s",
        f"Where the time went, summed over workers: reading {s['read_seconds']:.2f} s, inference "
        f"{s['inference_seconds']:.2f} s ({s.get('inference_cpu_seconds', 0.0):.2f} CPU-s), actors idle between batches {s['actor_wait_seconds']:.2f} s; "
        f"this process: writing {s['write_seconds']:.2f} s, waiting for results {s['driver_wait_seconds']:.2f} s",
    ]
    return "\n".join(lines)
