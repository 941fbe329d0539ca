"""cnnrt's CPU path against ONNX Runtime and PyTorch eager on the model zoo, in one run; and a
thread-scaling curve on Deep MNIST.

    PYTHONPATH=. python3 benchmarks/cpu_zoo.py --json docs/cpu_zoo.json            # the zoo table
    PYTHONPATH=. python3 benchmarks/cpu_zoo.py --scaling --json docs/cpu_scaling.json
    PYTHONPATH=. python3 benchmarks/cpu_zoo.py --render docs/cpu_zoo.json docs/cpu_scaling.json \
        --chart docs/cpu_scaling.png --markdown -                                  # table + chart

(`make bench-cpu-zoo` does all three.) Models: the shipped Deep MNIST (on the MNIST test images)
and cnnrt.testing.cpu_graphs' ResNet-20 (CIFAR), MobileNetV2 (96x96) and ResNet-18 (224x224), with
random weights (seed 0) on random images. Every runtime computes the same function on the same
weights and the same float32 NHWC input: cnnrt directly, ONNX Runtime through
cnnrt.exporters.onnx (NHWC -> NCHW Transpose at the input, timed), PyTorch eager through a
node-by-node NCHW interpreter of the graph (torch.nn.functional, under torch.inference_mode; the
input permutation timed). Each runtime uses all the cores this process may run on (its own
default). Rounds alternate between runtimes; medians with min and max; the outputs are checked
against cnnrt's (and cnnrt's against the float64 reference on a few images).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# model, images, images per call (the same for every runtime); --quick shrinks the counts
CASES = [("deep_mnist", 10000, 1000), ("deep_mnist", 1, 1), ("resnet20", 10000, 500), ("resnet20", 1, 1),
         ("mobilenet_v2_96", 64, 64), ("mobilenet_v2_96", 1, 1), ("resnet18", 64, 64), ("resnet18", 1, 1)]
QUICK = {("resnet20", 10000): 256, ("deep_mnist", 10000): 2000}
THREADS = (1, 2, 4, 8, 16)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load(name: str):
    from cnnrt.testing import cpu_graphs as graphs

    if name == "deep_mnist":
        from cnnrt.formats import load_model
        return load_model(ROOT / "models" / "deep_mnist" / "deep_mnist.safetensors")
    return graphs.build(name, seed=0)


def images(g, n: int) -> np.ndarray:
    """float32 NHWC, already scaled (what every runtime gets)."""
    if g.name.startswith("deep_mnist"):
        from cnnrt.idx import read_idx
        raw = read_idx(ROOT / "data" / "mnist" / "t10k-images-idx3-ubyte.gz")[:n, :, :, None]
        return np.ascontiguousarray(raw.astype(np.float32) * np.float32(g.input_scale))
    rng = np.random.default_rng(1)
    return rng.random((n, *g.input_shape), dtype=np.float32)


# ---------------------------------------------------------------- runtimes

def cnnrt_runtime(g, threads=None, compiled=True):
    from cnnrt.backends import graph_kernels, numpy_backend, numpy_graph

    graph_kernels.NATIVE = compiled  # read when the plan is compiled (and by the chain/graph choice)
    try:
        r = numpy_backend.prepare(g, "fp32", threads=threads)  # what `cnnrt eval` gets
    finally:
        graph_kernels.NATIVE = True
    out = g.outputs[0]
    if isinstance(r, numpy_graph.GraphRunner):
        return (lambda x: r.run({g.input_name: x})[out]), r
    return (lambda x: r.probabilities(x, batch_size=len(x))), r


def cnnrt_numpy_runtime(g, threads=None):
    """cnnrt with its NumPy kernels alone (what runs where no C compiler is found: for a layer
    chain, the staged engine)."""
    return cnnrt_runtime(g, threads, compiled=False)


def ort_runtime(g, threads=None):
    import onnxruntime as ort

    from cnnrt.exporters.onnx import to_onnx

    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
    s = ort.InferenceSession(to_onnx(g).SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = g.input_name
    return lambda x: s.run(None, {name: x})[0]


def torch_runtime(g, threads=None):
    import torch
    import torch.nn.functional as F

    if threads is not None:
        torch.set_num_threads(threads)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in g.params.items()}
    conv_w = {n.inputs[1]: t[n.inputs[1]].permute(0, 3, 1, 2).contiguous() for n in g.nodes if n.op == "Conv"}
    nchw = {}  # tensor -> True when held as NCHW

    def run(x):
        env = {g.input_name: torch.from_numpy(x).permute(0, 3, 1, 2)}
        nchw[g.input_name] = True
        for n in g.nodes:
            a, op = n.attrs, n.op
            ins = [env[i] if i in env else t[i] for i in n.inputs]
            if op == "Conv":
                pt, pl, pb, pr = a["pads"]
                x0 = ins[0]
                if (pt, pl) != (pb, pr):
                    x0, pad = F.pad(x0, (pl, pr, pt, pb)), 0
                else:
                    pad = (pt, pl)
                y = F.conv2d(x0, conv_w[n.inputs[1]], ins[2] if len(ins) > 2 else None, tuple(a["strides"]), pad,
                             tuple(a["dilations"]), int(a["group"]))
            elif op == "MaxPool":
                pt, pl, pb, pr = a["pads"]
                x0 = ins[0]
                if (pt, pl) != (pb, pr):
                    x0, pad = F.pad(x0, (pl, pr, pt, pb), value=-float("inf")), 0
                else:
                    pad = (pt, pl)
                y = F.max_pool2d(x0, tuple(a["kernel_shape"]), tuple(a["strides"]), pad, tuple(a["dilations"]),
                                 bool(a["ceil_mode"]))
            elif op == "GlobalAveragePool":
                y = F.adaptive_avg_pool2d(ins[0], 1)
            elif op == "Relu":
                y = F.relu(ins[0])
            elif op == "Clip":
                y = torch.clamp(ins[0], a["min"], a["max"])
            elif op == "Add":
                y = ins[0] + ins[1]
            elif op in ("Flatten", "Reshape"):
                x0 = ins[0]
                if nchw.get(n.inputs[0]) and x0.dim() == 4 and x0.shape[2] * x0.shape[3] != 1:
                    x0 = x0.permute(0, 2, 3, 1)
                y = torch.flatten(x0, 1)
            elif op == "Dense":
                y = F.linear(ins[0], ins[1], ins[2] if len(ins) > 2 else None)
            elif op == "Softmax":
                y = torch.softmax(ins[0], dim=-1)
            else:
                raise NotImplementedError(f"torch interpreter: {op}")
            env[n.outputs[0]] = y
            nchw[n.outputs[0]] = op in ("Conv", "MaxPool", "GlobalAveragePool") or (
                op in ("Relu", "Clip", "Add") and nchw.get(n.inputs[0], False))
        y = env[g.outputs[0]]
        return y.numpy()

    def infer(x):
        with torch.inference_mode():
            return run(x)
    return infer


RUNTIMES = {"cnnrt": cnnrt_runtime, "cnnrt-numpy": cnnrt_numpy_runtime, "onnxruntime": ort_runtime,
            "torch": torch_runtime}


def versions() -> dict:
    v = {"python": platform.python_version(), "numpy": np.__version__}
    for m in ("onnxruntime", "torch", "onnx"):
        try:
            v[m] = __import__(m).__version__
        except Exception:  # noqa: BLE001 - a missing peer is reported, not fatal
            v[m] = None
    return v


def machine() -> dict:
    from cnnrt.bench.system import cpu_model
    return {"cpu": cpu_model(), "cores": cores(), "system": f"{platform.system()} {platform.release()}",
            **versions()}


def timed(fn, x, rounds, batch=None):
    """Seconds per pass over x, in calls of `batch` images."""
    b = batch or len(x)
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(0, len(x), b):
            fn(x[i:i + b])
        ts.append(time.perf_counter() - t)
    return ts


def summary(ts):
    return {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "samples": ts}


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# ---------------------------------------------------------------- the zoo table

def zoo(args, log) -> dict:
    from cnnrt.ir.graph import run_reference

    from cnnrt.bench.system import CpuUse

    busy = CpuUse()
    names = [r for r in args.runtimes.split(",") if r]
    res = {"kind": "zoo", "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": " ".join(["python3", "benchmarks/cpu_zoo.py"] + sys.argv[1:]), "cases": []}
    models = {}
    for model, n, batch in CASES:
        if args.models and model not in args.models.split(","):
            continue
        if args.quick:
            n = QUICK.get((model, n), n)
        if model not in models:
            g = load(model)
            models[model] = {"graph": g, "runtimes": {}, "skipped": {}}
            for r in names:
                try:
                    t0 = time.perf_counter()
                    models[model]["runtimes"][r] = RUNTIMES[r](g)
                    log(f"{model}: {r} ready in {time.perf_counter() - t0:.2f} s")
                except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported
                    models[model]["skipped"][r] = f"{type(e).__name__}: {e}"
                    log(f"{model}: skip {r}: {e}")
        m = models[model]
        g = m["graph"]
        x = images(g, n)
        batch = min(batch, n)
        case = {"model": model, "images": n, "batch": batch, "flops_per_image": g.flops_per_image(), "results": {},
                "skipped": dict(m["skipped"])}
        rt = m["runtimes"]
        outs = {}
        for r, fn in rt.items():
            fn0 = fn[0] if isinstance(fn, tuple) else fn
            outs[r] = np.asarray(fn0(x[:min(n, 64)]))  # warm-up (and the output check)
            timed(fn0, x, 1, batch)
        ref = run_reference(g, {g.input_name: x[:2].astype(np.float64)}, np.float64)[g.outputs[0]]
        cn = outs.get("cnnrt")
        if cn is not None:
            case["cnnrt_vs_float64"] = rel(cn[:2], ref)
        for r, o in outs.items():
            if cn is not None and r != "cnnrt":
                case.setdefault("vs_cnnrt", {})[r] = rel(o, cn)
        calls = args.latency_calls if n == 1 else 1
        samples = {r: [] for r in rt}
        if n == 1 and not args.same_process:
            # one image: each runtime timed in a process of its own, as a user runs it (in one
            # process, the others' idle thread pools take the cores from a runtime's own threads)
            case["isolated"] = True
            for r in list(rt)[len(res["cases"]) % len(rt):] + list(rt)[:len(res["cases"]) % len(rt)]:
                samples[r] = isolated(model, r, args.rounds, calls)
        for k in range(0 if n == 1 and not args.same_process else args.rounds):
            order = list(rt)[k % len(rt):] + list(rt)[:k % len(rt)]
            for r in order:
                fn = rt[r][0] if isinstance(rt[r], tuple) else rt[r]
                # a pause between runtimes: the last one's idle threads stop spinning (PyTorch's
                # OpenMP threads spin for milliseconds after a call) before the next is timed
                time.sleep(0.3)
                samples[r] += timed(fn, x, calls, batch)
        for r, ts in samples.items():
            case["results"][r] = summary(ts)
        if isinstance(rt.get("cnnrt"), tuple):
            runner = rt["cnnrt"][1]
            if hasattr(runner, "describe"):
                case["cnnrt_kernels"] = sorted({d[2] for d in runner.describe()})
                case["compiled_kernels"] = runner.compiled_kernels() if hasattr(runner, "compiled_kernels") else []
            else:
                case["cnnrt_kernels"] = ["staged engine (numpy_backend.NumpyRunner)"]
        line = "  ".join(f"{r} {v['median'] * 1e3:9.2f} ms" for r, v in case["results"].items())
        log(f"{model:16s} {n:6d} images: {line}")
        res["cases"].append(case)
    res["other_load"] = busy.stop()
    return res


def isolated(model: str, runtime: str, rounds: int, calls: int) -> list:
    """One image's call times for one runtime, in a fresh process (see one_image)."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one-image", model, runtime,
                        "--rounds", str(rounds), "--latency-calls", str(calls)],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{model} {runtime} one image, in its own process: failed\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def one_image(model: str, runtime: str, rounds: int, calls: int) -> list:
    """The child of `isolated`: the runtime alone in this process, warmed up, then `rounds` rounds
    of `calls` one-image calls with a pause between rounds."""
    g = load(model)
    fn = RUNTIMES[runtime](g)
    fn = fn[0] if isinstance(fn, tuple) else fn
    x = images(g, 1)
    fn(images(g, 64))
    timed(fn, x, calls)
    out = []
    for _ in range(rounds):
        time.sleep(0.3)
        out += timed(fn, x, calls)
    return out


# ---------------------------------------------------------------- thread scaling

def scaling(args, log) -> dict:
    from cnnrt.bench.system import CpuUse

    busy = CpuUse()
    g = load("deep_mnist")
    n = 2000 if args.quick else 10000
    x = images(g, n)
    res = {"kind": "scaling", "machine": machine(), "model": "deep_mnist", "images": n,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": " ".join(["python3", "benchmarks/cpu_zoo.py"] + sys.argv[1:]), "threads": {}}
    names = [r for r in args.runtimes.split(",") if r in ("cnnrt", "onnxruntime")]
    for k in [t for t in THREADS if t <= cores()]:
        row = {}
        for r in names:
            try:
                fn = RUNTIMES[r](g, threads=k)
            except Exception as e:  # noqa: BLE001
                log(f"skip {r}: {e}")
                continue
            fn = fn[0] if isinstance(fn, tuple) else fn
            fn(x[:500])
            row[r] = summary(timed(fn, x, args.rounds))
        res["threads"][str(k)] = row
        log(f"{k:3d} threads: " + "  ".join(f"{r} {v['median']:.3f} s" for r, v in row.items()))
    res["other_load"] = busy.stop()
    return res


# ---------------------------------------------------------------- rendering

LABEL = {"deep_mnist": "Deep MNIST", "resnet20": "ResNet-20 (CIFAR)", "mobilenet_v2_96": "MobileNetV2 96×96",
         "resnet18": "ResNet-18 224×224"}


def fmt_t(s):
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def markdown(results) -> str:
    out = []
    for res in results:
        m = res["machine"]
        ol = res.get("other_load")
        other = (f"  \nOther load during the run: {ol['other_cores_average']:.2f} of {m['cores']} cores on average "
                 f"({ol['other_cpu_seconds']:.0f} CPU-seconds of other processes in {ol['wall_seconds']:.0f} s)."
                 if ol else "")
        out.append(f"Machine: {m['cpu']}, {m['cores']} cores; onnxruntime {m.get('onnxruntime')}, torch "
                   f"{m.get('torch')}, numpy {m['numpy']}; {res['date']}.  \nCommand: `{res['command']}`{other}\n")
        if res["kind"] == "zoo":
            rts = []
            for c in res["cases"]:
                for r in c["results"]:
                    if r not in rts:
                        rts.append(r)
            out.append("| model | images (per call) | " + " | ".join(rts) + " | cnnrt / ORT | cnnrt vs float64 |")
            out.append("|---|---|" + "---|" * len(rts) + "---|---|")
            for c in res["cases"]:
                cells = []
                for r in rts:
                    v = c["results"].get(r)
                    cells.append(f"{fmt_t(v['median'])} [{fmt_t(v['min'])}–{fmt_t(v['max'])}]" if v else
                                 ("skipped" if r in c.get("skipped", {}) else "–"))
                ort = c["results"].get("onnxruntime")
                ratio = f"{c['results']['cnnrt']['median'] / ort['median']:.2f}×" if ort and "cnnrt" in c["results"] else "–"
                err = f"{c['cnnrt_vs_float64']:.1e}" if "cnnrt_vs_float64" in c else "–"
                per = f" ({c['batch']:,})" if c.get("batch", c["images"]) != c["images"] else ""
                out.append(f"| {LABEL.get(c['model'], c['model'])} | {c['images']:,}{per} | " + " | ".join(cells) +
                           f" | {ratio} | {err} |")
            out.append("")
            out.append("Times are medians [min–max] of the rounds (one pass over the images per round, in calls of the "
                       "size shown; for one image, every call of all rounds, each runtime alone in a process of its own (runs before 2026-11-28 13:45 UTC: all in one process, the order rotating each round, with a pause before each)). cnnrt-numpy: cnnrt with its NumPy kernels "
                       "alone, what runs where no C compiler is found (for Deep MNIST the staged NumPy engine; "
                       "'skipped' in runs from before the compiled kernels took layer chains too). "
                       "cnnrt vs float64: largest logit difference over the largest logit, on two images.\n")
            for c in res["cases"]:
                if c.get("compiled_kernels"):
                    out.append(f"cnnrt in this run: {c['compiled_kernels']}.\n")
                    break
        else:
            out.append(f"Thread scaling, Deep MNIST, {res['images']:,} images (median of rounds):\n")
            out.append("| threads | cnnrt | speed-up | ONNX Runtime | speed-up |")
            out.append("|---|---|---|---|---|")
            base = res["threads"].get("1", {})
            for k, row in res["threads"].items():
                cells = []
                for r in ("cnnrt", "onnxruntime"):
                    v = row.get(r)
                    if v:
                        b = base.get(r, {}).get("median")
                        cells += [fmt_t(v["median"]), f"{b / v['median']:.1f}×" if b else "–"]
                    else:
                        cells += ["–", "–"]
                out.append(f"| {k} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


def chart(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ks = [int(k) for k in res["threads"]]
    for r, style in (("cnnrt", "o-"), ("onnxruntime", "s--")):
        pts = [(k, res["threads"][str(k)][r]["median"]) for k in ks if r in res["threads"][str(k)]]
        if pts:
            base = pts[0][1] if pts[0][0] == 1 else None
            ax.plot([p[0] for p in pts], [base / p[1] if base else 0 for p in pts], style,
                    label=f"{r} ({fmt_t(pts[-1][1])} at {pts[-1][0]} threads)")
    ax.plot(ks, ks, ":", color="grey", label="ideal")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("threads")
    ax.set_ylabel("speed-up over 1 thread")
    ax.set_title(f"Deep MNIST, {res['images']:,} images, {res['machine']['cpu'][:40]}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scaling", action="store_true", help="the thread-scaling curve instead of the zoo table")
    p.add_argument("--quick", action="store_true", help="fewer images and rounds (a try, not a result)")
    p.add_argument("--models", default="", help="comma-separated subset of the zoo")
    p.add_argument("--runtimes", default="cnnrt,cnnrt-numpy,onnxruntime,torch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--latency-calls", type=int, default=20, help="one-image calls per round")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--same-process", action="store_true",
                   help="time one image of every runtime in this process too (default: each in its own)")
    p.add_argument("--one-image", nargs=2, metavar=("MODEL", "RUNTIME"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--render", nargs="*", default=None, metavar="JSON", help="measure nothing: render these JSON files")
    p.add_argument("--chart", default=None, help="the thread-scaling chart (PNG; needs matplotlib)")
    p.add_argument("--markdown", default=None, help="write the tables here ('-': stdout)")
    a = p.parse_args(argv)
    log = lambda *m: print(*m, file=sys.stderr, flush=True)  # noqa: E731
    if a.one_image:
        print(json.dumps(one_image(*a.one_image, a.rounds, a.latency_calls)))
        return 0
    if a.render is not None:
        results = [json.loads(Path(f).read_text()) for f in a.render]
    else:
        if a.quick:
            a.rounds = min(a.rounds, 3)
        results = [scaling(a, log) if a.scaling else zoo(a, log)]
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(a.json).with_suffix(".tmp")
            tmp.write_text(json.dumps(results[0], indent=1))
            os.replace(tmp, a.json)
    if a.chart:
        for r in results:
            if r["kind"] == "scaling":
                try:
                    chart(r, a.chart)
                except ImportError:
                    log(f"no chart: matplotlib is not installed (render it elsewhere: --render {a.json or 'JSON'} "
                        f"--chart {a.chart})")
    text = markdown(results)
    if a.markdown == "-" or a.markdown is None:
        print(text)
    else:
        Path(a.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
