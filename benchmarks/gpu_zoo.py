"""GPU model-zoo benchmark: cnnrt's CUDA backend (fp16 and fp32) against PyTorch eager,
torch.compile, PyTorch with a CUDA graph (batch 1) and JAX jit, on the same card, same weights.

    PYTHONPATH=. python3 benchmarks/gpu_zoo.py --json bench/out/gpu_zoo.json [--models lenet5,resnet20]
        [--compile-mode default|max-autotune|none] [--reps 20] [--quick]

Each model is a cnnrt Graph: the ONNX zoo (cnnrt/testing/zoo/*.onnx, weights regenerated from a
seed) when an importer for it is installed, else the same architectures built by
cnnrt.testing.graphs. Every peer is converted from that graph (cnnrt.peers.graph_torch /
graph_jax), so all runtimes compute the same net with the same weights. Times are host to host:
uint8 NHWC images in host memory to float32 outputs in host memory, medians of `--reps` warm runs.
The large batch starts in pinned memory for every runtime (PyTorch's `pin_memory()`, cnnrt's
`cuda.pinned_empty`; JAX takes the NumPy array); cnnrt is also timed from an ordinary (pageable)
NumPy array, the usual case for a user. fp32 means fp32 arithmetic: TF32 off in PyTorch, Precision.HIGHEST in JAX, none in cnnrt.
Prints a table with each peer's time over cnnrt fp16's, and writes everything as JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX shares the GPU with CuPy and PyTorch

# model: (large batch, graph builder kwargs); sizes as issue 9 sets them
MODELS = {
    "deep_mnist": 10000, "lenet5": 10000, "resnet20": 10000, "mobilenet_v2": 2048, "resnet18": 256,
    "mobilenet_v3_small": 256,
}
ONNX_NAMES = {"lenet5": "lenet5", "resnet20": "resnet20", "mobilenet_v2": "mobilenet_v2_96", "resnet18": "resnet18",
              "mobilenet_v3_small": "mobilenet_v3_small"}


def zoo_graph(name: str, source: str = "auto"):
    """(graph, where it came from)."""
    from cnnrt.testing import graphs as TG

    if source in ("auto", "onnx") and name in ONNX_NAMES:
        try:
            from cnnrt.testing import zoo  # the ONNX importer's helper: weights regenerated from a seed

            from cnnrt.importers.onnx import from_onnx

            return from_onnx(zoo.load(ONNX_NAMES[name], seed=0), name=name), f"cnnrt/testing/zoo/{ONNX_NAMES[name]}.onnx"
        except Exception as e:  # noqa: BLE001 - no importer yet: the builders
            if source == "onnx":
                raise
            note = f"{type(e).__name__}: {e}"[:120]
    else:
        note = ""
    kw = {"mobilenet_v2": {"size": 96}}.get(name, {})
    return TG.ZOO[name](0, **kw), "cnnrt.testing.graphs" + (f" (ONNX zoo not loadable: {note})" if note else "")


def wall(fn, reps: int, warmup: int = 3) -> float:
    """Median seconds of `reps` calls after `warmup`."""
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t)


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return {"argmax_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "max_abs_diff": float(np.abs(a - b).max()), "max_abs_ref": float(np.abs(b).max())}


# ------------------------------------------------------------------------------------ runtimes

def bench_cnnrt(g, precision, xs1, xl, reps, huge: int = 0):
    """cnnrt's times: batch 1, the large batch from a pageable and from a pinned array; with `huge`,
    also that many images from pinned memory and the pageable copy of the large batch alone (the
    Deep MNIST targets of issue 9)."""
    from cnnrt.backends import cuda as cuda_backend

    t0 = time.perf_counter()
    r = cuda_backend.prepare(g, precision)
    build = time.perf_counter() - t0
    out = r.probabilities(xl)
    res = {"name": f"cnnrt {precision}", "build_s": build, "compile_s": getattr(r, "compile_seconds", None),
           "runner": type(r).__name__, "kernels": r.summary(len(xl)) if hasattr(r, "summary") else None}
    res["b1_h2h_ms"] = wall(lambda: r.probabilities(xs1), 20 * reps, 10) * 1e3
    res["large_h2h_ms"] = wall(lambda: r.probabilities(xl), reps) * 1e3
    xl_p = cuda_backend.pinned_empty(xl.shape, xl.dtype)
    xl_p[...] = xl
    res["large_h2h_pinned_ms"] = wall(lambda: r.probabilities(xl_p), reps) * 1e3
    if huge:
        import cupy

        xh = cuda_backend.pinned_empty((huge,) + xl.shape[1:], xl.dtype)
        xh[...] = np.resize(xl, xh.shape)
        res["huge_batch"] = huge
        res["huge_h2h_pinned_ms"] = wall(lambda: r.probabilities(xh), max(3, reps // 2), 2) * 1e3
        res["huge_vs_large"] = res["huge_h2h_pinned_ms"] / res["large_h2h_pinned_ms"]
        dev = cupy.empty(xl.shape, xl.dtype)

        def copy():
            dev.set(xl)
            cupy.cuda.Device().synchronize()
        res["pageable_copy_ms"] = wall(copy, reps) * 1e3  # the large batch's host-to-device copy alone
        del xh, dev
    return res, out


def bench_torch(g, precision, xs1, xl, reps, compile_mode=None):
    import torch

    from cnnrt.peers.graph_torch import to_torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dt = torch.float16 if precision == "fp16" else torch.float32
    net = to_torch(g, dt, "cuda").eval()
    name = f"PyTorch eager {precision}"
    t0 = time.perf_counter()
    if compile_mode:
        # a fresh dynamo cache for each model, static shapes (batch 1 and the large batch each get
        # their own compile): the zoo's nets share one forward, and past the recompile limit dynamo
        # silently runs them eagerly
        torch._dynamo.reset()
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        net = torch.compile(net, mode=compile_mode, dynamic=False)
        name = f"torch.compile {compile_mode} {precision}"
    xl_p = torch.from_numpy(xl).pin_memory()
    x1_p = torch.from_numpy(xs1).pin_memory()

    def run(xp):
        with torch.no_grad():
            return net(xp.cuda(non_blocking=True)).float().cpu()

    out = run(xl_p).numpy()
    res = {"name": name}
    if compile_mode:
        run(x1_p)
        res["compile_s"] = time.perf_counter() - t0
    res["large_h2h_ms"] = wall(lambda: run(xl_p), reps) * 1e3
    res["b1_h2h_ms"] = wall(lambda: run(x1_p), 10 * reps, 10) * 1e3
    if not compile_mode:  # batch 1 with a CUDA graph: the best PyTorch offers for latency
        static = x1_p.cuda()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.no_grad():
            for _ in range(3):
                net(static)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            gout = net(static)

        def replay():
            static.copy_(x1_p, non_blocking=True)
            graph.replay()
            return gout.float().cpu()
        res["b1_h2h_graph_ms"] = wall(replay, 20 * reps, 10) * 1e3
    return res, out


def bench_jax(g, precision, xs1, xl, reps):
    import jax

    from cnnrt.peers.graph_jax import to_jax

    fn = jax.jit(to_jax(g, "float16" if precision == "fp16" else "float32"))

    def run(x):
        return np.asarray(fn(jax.device_put(x))).astype(np.float32)

    t0 = time.perf_counter()
    out = run(xl)
    run(xs1)
    res = {"name": f"JAX jit {precision} ({jax.__version__})", "compile_s": time.perf_counter() - t0}
    res["large_h2h_ms"] = wall(lambda: run(xl), reps) * 1e3
    res["b1_h2h_ms"] = wall(lambda: run(xs1), 10 * reps, 10) * 1e3
    return res, out


# ------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="where to write the results")
    ap.add_argument("--table-from", default=None, metavar="JSON",
                    help="measure nothing: print the table of a JSON this script wrote (for docs/benchmarks.md)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated, from " + ", ".join(MODELS))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode for the fp16 large-batch peer ('none' to skip; max-autotune takes minutes)")
    ap.add_argument("--source", choices=("auto", "onnx", "builders"), default="auto")
    ap.add_argument("--peers", default="torch,jax", help="comma-separated: torch, jax (or 'none')")
    ap.add_argument("--quick", action="store_true", help="large batches / 8, 5 reps: a smoke run")
    ap.add_argument("--cold-start", action="store_true",
                    help="also time a new process preparing each model, with an empty and with a warm kernel cache")
    ap.add_argument("--cold-start-only", action="store_true",
                    help="time only the cold start (--cold-start), no runs")
    a = ap.parse_args(argv)
    if a.table_from:
        print_table(json.loads(Path(a.table_from).read_text()))
        return 0
    if not a.json:
        ap.error("--json is required when measuring")

    from cnnrt.backends.cuda import available, device_name

    reason = available()
    if reason is not None:
        print(f"gpu_zoo: needs CuPy and an NVIDIA GPU: {reason}", file=sys.stderr)
        return 2
    reps = 5 if a.quick else a.reps
    out = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": device_name(),
           "host_to_host": "uint8 NHWC in host memory -> float32 outputs in host memory", "models": {}}
    try:
        import cupy
        out["cupy"] = cupy.__version__
    except Exception:  # noqa: BLE001
        pass
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)

    def save():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2))
        os.replace(tmp, path)

    peers = [p for p in a.peers.split(",") if p and p != "none"]
    rng = np.random.default_rng(0)
    for name in a.models.split(","):
        g, source = zoo_graph(name, a.source)
        n = MODELS[name] // (8 if a.quick else 1)
        shape = tuple(g.input_shape)
        xl = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
        xs1 = xl[:1].copy()
        entry = {"source": source, "large_batch": n, "input": list(shape),
                 "mflop_per_image": g.flops_per_image() / 1e6, "results": []}
        out["models"][name] = entry
        print(f"== {name}: {source}, input {shape}, large batch {n}, {entry['mflop_per_image']:.1f} MFLOP/image",
              flush=True)
        if a.cold_start or a.cold_start_only:
            entry["cold_start"] = cold_start(name, a.source)
            print(f"   cold start: {entry['cold_start']}", flush=True)
            save()
            if a.cold_start_only:
                continue
        ours = {}
        jobs = [("cnnrt", p, None) for p in ("fp16", "fp32")]
        if "torch" in peers:
            jobs += [("torch", p, None) for p in ("fp16", "fp32")]
            if a.compile_mode != "none":
                jobs.append(("torch", "fp16", a.compile_mode))
        if "jax" in peers:
            jobs += [("jax", p, None) for p in ("fp16", "fp32")]
        for who, precision, mode in jobs:
            t0 = time.perf_counter()
            try:
                if who == "cnnrt":
                    huge = 10 * n if name == "deep_mnist" and precision == "fp16" else 0
                    res, o = bench_cnnrt(g, precision, xs1, xl, reps, huge)
                    ours[precision] = o
                elif who == "torch":
                    res, o = bench_torch(g, precision, xs1, xl, reps, mode)
                else:
                    res, o = bench_jax(g, precision, xs1, xl, reps)
                if who == "cnnrt" and precision == "fp32" and "fp16" in ours:
                    res["vs_cnnrt_fp16"] = agreement(o, ours["fp16"])
                elif who != "cnnrt" and "fp32" in ours:
                    res["vs_cnnrt_fp32"] = agreement(o, ours["fp32"])
            except Exception as e:  # noqa: BLE001 - a peer that fails is reported, the run goes on
                res = {"name": f"{who} {precision}" + (f" {mode}" if mode else ""), "error": f"{type(e).__name__}: {e}"[:400]}
                traceback.print_exc()
            res["wall_s"] = time.perf_counter() - t0
            entry["results"].append(res)
            print(f"   {res['name']}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in res.items() if k != "name"), flush=True)
            save()
            _free()
    print_table(out)
    save()
    return 0


COLD_CODE = """
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
from benchmarks.gpu_zoo import zoo_graph
from cnnrt.backends import cuda as C
import cupy
g, _ = zoo_graph({name!r}, {source!r})
cupy.cuda.Device().synchronize()
t1 = time.perf_counter()
r = C.prepare(g, "fp16")
cupy.cuda.Device().synchronize()
t2 = time.perf_counter()
print("COLD", t2 - t1, t2 - t0, type(r).__name__)
print("BREAKDOWN", json.dumps(getattr(r, "prepare_breakdown", {{}})))
"""


def cold_start(name: str, source: str) -> dict:
    """Issue 9's cold start: a new process prepares the fp16 model twice over one fresh kernel cache
    directory (CuPy's and cnnrt's own, where the sm_90a cubins go), so the first run compiles every
    kernel and the second loads them from the cache.
    prepare_s: the model's planning, compiling and loading (CUDA context already up); process_s: the
    whole process to that point (Python, imports, graph, context)."""
    import subprocess
    import tempfile

    root = str(Path(__file__).resolve().parents[1])
    res = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, CUPY_CACHE_DIR=cache, CNNRT_CACHE_DIR=cache)  # (cnnrt's: the sm_90a cubins)
        for key in ("first", "cached"):
            p = subprocess.run([sys.executable, "-c", COLD_CODE.format(root=root, name=name, source=source)],
                               env=env, capture_output=True, text=True, timeout=300)
            line = next((x for x in p.stdout.splitlines() if x.startswith("COLD")), None)
            if line is None:
                return {"error": p.stderr[-300:]}
            _, prep, proc, runner = line.split()
            res[key] = {"prepare_s": float(prep), "process_s": float(proc), "runner": runner}
            parts = next((x for x in p.stdout.splitlines() if x.startswith("BREAKDOWN")), None)
            if parts:  # the runner's own split: planning (Python) and compiling or loading kernels
                res[key].update(json.loads(parts.split(None, 1)[1]))
    return res


def _free():
    try:
        import cupy
        cupy.get_default_memory_pool().free_all_blocks()
    except Exception:  # noqa: BLE001
        pass
    try:
        import torch
        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def print_table(out) -> None:
    print(f"\nModel zoo, host to host; {out['device']}; {out['date']}")
    hdr = (f"| {'model':<18} | {'runtime':<34} | {'batch 1':>16} | {'large batch, pinned in':>26} "
           f"| {'from a pageable array':>21} |")
    print(hdr)
    print("|" + "|".join("-" * len(p) for p in hdr.split("|")[1:-1]) + "|")
    for name, e in out["models"].items():
        base = next((r for r in e["results"] if r.get("name") == "cnnrt fp16" and "error" not in r), None)
        for r in e["results"]:
            if "error" in r:
                print(f"| {name:<18} | {r['name']:<34} | not run: {r['error'][:70]}")
                continue

            def cell(key, unit_ms=True):
                v = r.get(key)
                if v is None:
                    return "-"
                bk = "b1_h2h_ms" if key.startswith("b1") else key
                if base is not None and key == "large_h2h_ms" and "large_h2h_pinned_ms" in base:
                    bk = "large_h2h_pinned_ms"  # the peers' large batch starts pinned: compare with ours pinned
                ratio = "" if base is None or r is base or not base.get(bk) else f" ({v / base[bk]:.2f}x)"
                return (f"{v * 1e3:.0f} us" if key.startswith("b1") else f"{v:.3g} ms") + ratio
            b1 = cell("b1_h2h_graph_ms") if "b1_h2h_graph_ms" in r else cell("b1_h2h_ms")
            label = r["name"] + (" +graph b1" if "b1_h2h_graph_ms" in r else "")
            if r["name"].startswith("cnnrt"):  # (JSON from before the pinned timing: '-')
                large, pageable = cell("large_h2h_pinned_ms"), cell("large_h2h_ms")
            else:
                large, pageable = cell("large_h2h_ms"), ""
            large += " (n=%d)" % e["large_batch"]
            print(f"| {name:<18} | {label:<34} | {b1:>16} | {large:>26} | {pageable:>21} |")
    print("ratios: the runtime's time over cnnrt fp16's on the same model (above 1: cnnrt is faster); large batch: "
          "over cnnrt fp16's from pinned memory. PyTorch eager's batch-1 cell is its CUDA-graph replay. "
          "JAX's large batch starts as a NumPy array.")
    for name, e in out["models"].items():
        for r in e["results"]:
            if r.get("huge_batch"):
                print(f"{name}, {r['name']}: {r['huge_batch']:,} images from pinned memory {r['huge_h2h_pinned_ms']:.3g} ms "
                      f"({r['huge_vs_large']:.2f}x the {e['large_batch']:,}-image time); the {e['large_batch']:,}-image "
                      f"pageable copy alone {r['pageable_copy_ms']:.3g} ms, cnnrt from that pageable array "
                      f"{r['large_h2h_ms']:.3g} ms ({r['large_h2h_ms'] / r['pageable_copy_ms']:.2f}x)")
    cold = {n: e["cold_start"] for n, e in out["models"].items() if "first" in e.get("cold_start", {})}
    if cold:
        print("cold start, fp16, a new process (prepare: plan + compile + load, CUDA context up; process: from "
              "Python's start): " + "; ".join(
                  f"{n} {c['first']['prepare_s']:.2f} s first ({c['first']['process_s']:.2f} s process), "
                  f"{c['cached']['prepare_s']:.2f} s cached ({c['cached']['process_s']:.2f} s)" + _split(c['cached'])
                  for n, c in cold.items()))


def _split(run: dict) -> str:
    """' [plan 0.10 s, cuBLAS and streams 0.05 s, kernels 0.20 s]' where the runner reported its split."""
    if "plan_s" not in run:
        return ""
    blas = f", cuBLAS and streams {run['cublas_s']:.2f} s" if "cublas_s" in run else ""
    return f" [plan {run['plan_s']:.2f} s{blas}, kernels {run['compile_s']:.2f} s]"


if __name__ == "__main__":
    sys.exit(main())
