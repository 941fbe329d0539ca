"""`cnnrt batch` on Ray Data against one process, on the same million images (the MNIST test set
repeated), in images per second; writes one JSON.

    # the CPU (this machine): 1,000,000 images, Ray with 1 and 2 model actors
    python benchmarks/ray_scale.py --repeat 100 --actors 1,2 --json-out docs/ray_scale_cpu.json
    # the device: one process on 1 GPU, then Ray with 1, 2 (and 4) GPUs, one actor per GPU
    python benchmarks/ray_scale.py --repeat 100 --backend cuda --num-gpus 1,2 --json-out docs/ray_scale_gpu.json
    # a model whose inference, not Ray, sets the pace on a GPU: ResNet-18 (224x224, random weights
    # from cnnrt.testing.graphs), on random images
    python benchmarks/ray_scale.py --zoo resnet18 --images 40000 --shard-size 1000 --batch-size 256 \
        --backend cuda --num-gpus 1,2 --json-out docs/ray_scale_gpu_resnet18.json

Wall times on a shared machine move with the other load (recorded as the load average before and
after each run); CPU-seconds of the model's work much less: `cpu_seconds` of the single process
against `inference_cpu_seconds` (the model actors' processes, inside their model calls) of each
Ray run. (Ray's own processes are not counted: actors' workers are not reaped by this process, so
getrusage cannot see them.)

The input is written once as NumPy shards (one .npy file of 10,000 images per repeat) under
--work. The single process reads every shard and runs `cnnrt.load(model).predict` on it (reading
and inference timed apart); each Ray run is the real command, `python -m cnnrt batch SRC DEST
--json`, in a fresh process with a fresh DEST, so its time includes starting Ray. Labels of every
Ray run are checked against the single process's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def make_input(work: Path, repeat: int, x: np.ndarray) -> Path:
    src = work / f"mnist-x{repeat}"
    want = [src / f"part-{i:04d}.npy" for i in range(repeat)]
    if all(p.exists() for p in want) and len(list(src.glob("*.npy"))) == repeat:
        return src
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for p in want:
        np.save(p, x)
    return src


def make_zoo_input(work: Path, name: str, images: int, shard_size: int) -> tuple[Path, str]:
    """A zoo model saved as a bundle, and `images` random uint8 images of its input shape in .npy
    shards (seed 0), under work/; both are reused when they are already there."""
    from cnnrt.formats import save_bundle
    from cnnrt.testing import graphs as TG

    model = work / f"zoo-{name}.safetensors"
    g = TG.ZOO[name](0)
    if not model.exists():
        save_bundle(g, model)
    h, w, c = g.input_shape
    src = work / f"{name}-{images}"
    count = -(-images // shard_size)
    if not (src.is_dir() and len(list(src.glob("*.npy"))) == count):
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(count):
            n = min(shard_size, images - i * shard_size)
            np.save(src / f"part-{i:04d}.npy", rng.integers(0, 256, (n, h, w, c), dtype=np.uint8))
    return src, str(model)


def gpu_names() -> list[str]:
    try:
        p = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        return [v.strip() for v in p.stdout.splitlines() if v.strip()]
    except OSError:
        return []


def cpu_seconds(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def single_process(src: Path, model: str, backend: str, batch_size: int | None) -> dict:
    import cnnrt

    c0 = cpu_seconds(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    session = cnnrt.load(model, backend=backend)
    load_s = time.perf_counter() - t0
    read_s = infer_s = 0.0
    labels = []
    for p in sorted(src.glob("*.npy")):
        t = time.perf_counter()
        x = np.load(p, allow_pickle=False)
        read_s += time.perf_counter() - t
        t = time.perf_counter()
        labels.append(session.predict(x, batch_size=batch_size))
        infer_s += time.perf_counter() - t
    n = sum(len(v) for v in labels)
    return {"what": "one process: cnnrt.load(...).predict", "backend": session.backend, "precision": session.precision,
            "batch_size": batch_size or session.default_batch_size, "images": n, "load_seconds": load_s,
            "read_seconds": read_s, "inference_seconds": infer_s, "seconds": read_s + infer_s,
            "images_per_second": n / (read_s + infer_s), "inference_images_per_second": n / infer_s,
            "cpu_seconds": cpu_seconds(resource.RUSAGE_SELF) - c0, "_labels": np.concatenate(labels)}


def ray_run(src: Path, dest: Path, model: str, backend: str, actors: int, batch_size: int, shard_size: int,
            address: str | None, cpus_per_actor: float | None) -> dict:
    shutil.rmtree(dest, ignore_errors=True)
    cmd = [sys.executable, "-m", "cnnrt", "batch", str(src), str(dest), "--model", model, "--backend", backend,
           "--num-actors", str(actors), "--batch-size", str(batch_size), "--shard-size", str(shard_size), "--json"]
    if address:
        cmd += ["--address", address]
    if cpus_per_actor is not None:
        cmd += ["--cpus-per-actor", str(cpus_per_actor)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"cnnrt batch failed ({p.returncode}):\n{p.stderr[-3000:]}")
    s = json.loads(p.stdout)
    s["command"] = " ".join(cmd[1:]).replace(str(ROOT) + "/", "")
    s["process_seconds"] = wall
    s["what"] = f"cnnrt batch, {actors} actor(s)"
    return s


def labels_of(dest: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    t = pq.read_table(dest, columns=["id", "label"])
    ids, labels = t["id"].to_numpy(), t["label"].to_numpy()
    out = np.full(len(ids), -1, np.int64)
    out[ids] = labels
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=100, help="copies of the 10,000 MNIST test images (default 100: 1M)")
    ap.add_argument("--model", default=str(ROOT / "models/deep_mnist/deep_mnist.safetensors"))
    ap.add_argument("--zoo", default=None, help="instead of --model and MNIST: a model of cnnrt.testing.graphs.ZOO "
                    "(e.g. resnet18) on --images random images")
    ap.add_argument("--images", type=int, default=40000, help="with --zoo: how many random images")
    ap.add_argument("--backend", default="numpy", choices=("numpy", "cuda"))
    ap.add_argument("--actors", default="1", help="CPU: comma-separated model actor counts to run (default: 1)")
    ap.add_argument("--num-gpus", default=None, help="cuda: comma-separated GPU counts, one actor per GPU (e.g. 1,2,4)")
    ap.add_argument("--cpus-per-actor", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="images per model call, the same for both (default: 1024 on the CPU; on GPUs the shard size, "
                         "so that each shard is one call)")
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--address", default=None, help="a Ray cluster to join (default: start one per run)")
    ap.add_argument("--work", default="/tmp/cnnrt-ray-scale", help="where the input and outputs go")
    ap.add_argument("--no-single", action="store_true", help="skip the single-process baseline")
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()

    from cnnrt.idx import read_idx

    work = Path(a.work)
    t = time.perf_counter()
    if a.zoo:
        src, a.model = make_zoo_input(work, a.zoo, a.images, a.shard_size)
        total = a.images
        print(f"input: {src} ({a.images} random images for {a.zoo}; ready in {time.perf_counter() - t:.1f} s)", file=sys.stderr)
    else:
        x = read_idx(ROOT / "data/mnist/t10k-images-idx3-ubyte.gz")
        src = make_input(work, a.repeat, x)
        total = a.repeat * len(x)
        print(f"input: {src} ({a.repeat} x {len(x)} images; ready in {time.perf_counter() - t:.1f} s)", file=sys.stderr)
    batch = a.batch_size or (a.shard_size if a.backend == "cuda" else 1024)
    counts = [int(v) for v in (a.num_gpus if a.backend == "cuda" and a.num_gpus else a.actors).split(",")]
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__, "ray": ray_version,
              "gpus": gpu_names() if a.backend == "cuda" else [], "images": total, "model": a.zoo or Path(a.model).name, "backend": a.backend, "batch_size": batch, "shard_size": a.shard_size,
              "loadavg_before": loadavg(), "runs": []}
    reference = None
    if not a.no_single:
        r = single_process(src, a.model, a.backend, batch)
        reference = r.pop("_labels")
        r["loadavg_after"] = loadavg()
        result["runs"].append(r)
        print(f"{r['what']}: {r['images_per_second']:,.0f} images/s ({r['seconds']:.1f} s)", file=sys.stderr)
    for k in counts:
        dest = work / f"out-{a.backend}-{k}"
        r = ray_run(src, dest, a.model, a.backend, k, batch, a.shard_size, a.address, a.cpus_per_actor)
        r["loadavg_after"] = loadavg()
        if reference is not None:
            got = labels_of(dest)
            r["labels_equal_single_process"] = float(np.mean(got == reference))
        shutil.rmtree(dest, ignore_errors=True)
        result["runs"].append(r)
        print(f"{r['what']}: {r['images_per_second']:,.0f} images/s in the pipeline ({r['run_seconds']:.1f} s), "
              f"{r['rows'] / r['process_seconds']:,.0f} images/s counting Ray's start ({r['process_seconds']:.1f} s)",
              file=sys.stderr)
    ray_runs = [r for r in result["runs"] if "actors" in r]
    if ray_runs:
        base = ray_runs[0]
        for r in ray_runs:  # scaling efficiency: images/s per actor against the smallest run's
            r["scaling_efficiency"] = (r["images_per_second"] / r["actors"]) / (base["images_per_second"] / base["actors"])
    text = json.dumps(result, indent=2)
    if a.json_out:
        Path(a.json_out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
