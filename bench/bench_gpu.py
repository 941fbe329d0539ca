"""GPU benchmark: cnnrt's CUDA backend against PyTorch eager, torch.compile and JAX, same weights.

    PYTHONPATH=. python3 bench/bench_gpu.py --json out.json [--skip-compile] [--reps 50]

Every peer is built from our bundle (the same fp16 weights) and runs the same net in fp16 on the
10,000-image MNIST test set. Timings are medians after warm-up: device-side ones (input already
on the GPU) with CUDA events where the framework exposes them (JAX: host clock around
block_until_ready), host-to-host ones (uint8 images in pinned host memory to labels in host memory)
with the host clock, because that is what a caller waits for. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX must share the GPU

BUNDLE = ROOT / "models" / "deep_mnist" / "deep_mnist.safetensors"
SPIN_CYCLES = 400_000  # ~0.2 ms queued ahead of each device-side measurement


def wall(fn, reps, warmup=5):
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t) * 1e3


def compile_times() -> dict:
    """First-run (empty kernel cache) and second-run compile+load seconds, in fresh processes."""
    code = ("import sys; sys.path.insert(0, %r); from cnnrt.formats import load_model; "
            "from cnnrt.backends.cuda import FusedRunner; "
            "print(FusedRunner(load_model(%r)).compile_seconds)") % (str(ROOT), str(BUNDLE))
    out = {}
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, CUPY_CACHE_DIR=d)
        for what in ("first_run_s", "second_run_s"):
            p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            out[what] = float(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
    return out


def bench_cnnrt(model, x, y, reps):
    import cupy as cp

    from cnnrt.backends.cuda import FusedRunner, device_name, load_module, pinned_empty

    r = FusedRunner(model)
    xp = pinned_empty(x.shape, np.uint8)
    xp[:] = x
    labels = r.predict(xp)
    res = {"name": "cnnrt (cuda, fp16)", "device": device_name(), "accuracy": float((labels == y).mean())}
    res["h2h_10k_ms"] = wall(lambda: r.predict(xp), reps)
    res["h2h_10k_pageable_ms"] = wall(lambda: r.predict(x), max(5, reps // 5))
    r.device_input(x)
    s0 = r.streams[0]
    spin = load_module().get_function("spin")

    def dev(n, reps):
        for _ in range(5):
            r.run_device(n)
        t = []
        for _ in range(reps):
            a, b = cp.cuda.Event(), cp.cuda.Event()
            with s0:  # keep the GPU busy while the host enqueues: events then time the device alone
                spin((1,), (1,), (np.int64(SPIN_CYCLES),))
            a.record(s0)
            r.run_device(n)
            b.record(s0)
            b.synchronize()
            t.append(cp.cuda.get_elapsed_time(a, b))
        return statistics.median(t)

    res["dev_10k_ms"] = dev(len(x), reps)
    one = pinned_empty((1, 28, 28), np.uint8)
    one[:] = x[:1]
    res["h2h_1_us"] = wall(lambda: r.predict(one), 20 * reps, warmup=50) * 1e3
    one_pageable = x[:1].copy()
    res["h2h_1_pageable_us"] = wall(lambda: r.predict(one_pageable), 10 * reps, warmup=50) * 1e3
    r.device_input(x[:1])
    res["dev_1_us"] = dev(1, 10 * reps) * 1e3
    res["labels"] = labels
    return res


def torch_net(model):
    import torch
    import torch.nn.functional as F

    c1, _, c2, _, f1, f2, _ = model.layers
    t = lambda a: torch.tensor(np.ascontiguousarray(a)).cuda().half()  # noqa: E731
    W1 = t(c1.weight.transpose(0, 3, 1, 2)).contiguous(memory_format=torch.channels_last)
    W2 = t(c2.weight.transpose(0, 3, 1, 2)).contiguous(memory_format=torch.channels_last)
    b1, b2, FW1, fb1, FW2, fb2 = t(c1.bias), t(c2.bias), t(f1.weight), t(f1.bias), t(f2.weight), t(f2.bias)
    scale = float(model.input_scale)

    def net(xu8):  # (n, 28, 28) uint8 on the GPU -> labels
        x = (xu8.unsqueeze(1).half() * scale).contiguous(memory_format=torch.channels_last)
        x = F.max_pool2d(F.relu(F.conv2d(x, W1, b1, padding=2)), 2)
        x = F.max_pool2d(F.relu(F.conv2d(x, W2, b2, padding=2)), 2)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # NHWC flatten order, as our weights
        x = F.relu(F.linear(x, FW1, fb1))
        p = torch.softmax(F.linear(x, FW2, fb2).float(), dim=1)
        return p.argmax(1)
    return net


def bench_torch(model, x, y, reps, mode):
    import torch

    net = torch_net(model)
    name = "PyTorch eager (fp16)"
    if mode != "eager":
        t0 = time.perf_counter()
        net = torch.compile(net, mode=mode)
        name = f"torch.compile {mode} (fp16)"
    xd = torch.from_numpy(x).cuda()
    with torch.no_grad():
        labels = net(xd).cpu().numpy()
    res = {"name": name, "accuracy": float((labels == y).mean()), "labels": labels}
    if mode != "eager":
        res["compile_s"] = time.perf_counter() - t0

    def ev(fn, reps):
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        t = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(SPIN_CYCLES)  # device-side time only, as for cnnrt
            a.record()
            fn()
            b.record()
            b.synchronize()
            t.append(a.elapsed_time(b))
        return statistics.median(t)

    with torch.no_grad():
        res["dev_10k_ms"] = ev(lambda: net(xd), reps)
        xp = torch.from_numpy(x).pin_memory()
        res["h2h_10k_ms"] = wall(lambda: net(xp.cuda(non_blocking=True)).cpu(), reps)
        if mode == "eager":
            one = torch.from_numpy(x[:1].copy()).pin_memory()
            res["h2h_1_us"] = wall(lambda: net(one.cuda(non_blocking=True)).cpu(), 10 * reps, 20) * 1e3
            # and with a CUDA graph, the best PyTorch offers for latency
            static = torch.from_numpy(x[:1].copy()).cuda()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    net(static)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = net(static)
            res["dev_1_us_graph"] = ev(g.replay, 10 * reps) * 1e3

            def h2h_graph():
                static.copy_(one, non_blocking=True)
                g.replay()
                return out.cpu()
            res["h2h_1_us_graph"] = wall(h2h_graph, 10 * reps, 20) * 1e3
            res["dev_1_us"] = ev(lambda: net(static), 10 * reps) * 1e3
    return res


def bench_jax(model, x, y, reps):
    import jax
    import jax.numpy as jnp
    from jax import lax

    c1, _, c2, _, f1, f2, _ = model.layers
    h = lambda a: jnp.asarray(np.asarray(a, np.float16))  # noqa: E731
    W1, W2 = h(c1.weight.transpose(1, 2, 3, 0)), h(c2.weight.transpose(1, 2, 3, 0))  # HWIO
    b1, b2, FW1, fb1, FW2, fb2 = h(c1.bias), h(c2.bias), h(f1.weight), h(f1.bias), h(f2.weight), h(f2.bias)
    scale = np.float16(model.input_scale)
    dn = ("NHWC", "HWIO", "NHWC")

    def pool(v):
        return lax.reduce_window(v, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    @jax.jit
    def net(xu8):
        v = xu8[..., None].astype(jnp.float16) * scale
        v = pool(jax.nn.relu(lax.conv_general_dilated(v, W1, (1, 1), "SAME", dimension_numbers=dn) + b1))
        v = pool(jax.nn.relu(lax.conv_general_dilated(v, W2, (1, 1), "SAME", dimension_numbers=dn) + b2))
        v = jax.nn.relu(v.reshape(v.shape[0], -1) @ FW1.T + fb1)
        p = jax.nn.softmax((v @ FW2.T + fb2).astype(jnp.float32), axis=1)
        return jnp.argmax(p, axis=1)

    xd = jax.device_put(x)
    labels = np.asarray(net(xd))
    res = {"name": f"JAX jit (fp16, {jax.__version__})", "accuracy": float((labels == y).mean()), "labels": labels}
    res["dev_10k_ms"] = wall(lambda: net(xd).block_until_ready(), reps)
    res["dev_timing"] = "host clock around block_until_ready, input on the GPU"
    res["h2h_10k_ms"] = wall(lambda: np.asarray(net(jax.device_put(x))), reps)
    one = x[:1].copy()
    np.asarray(net(jax.device_put(one)))
    res["h2h_1_us"] = wall(lambda: np.asarray(net(jax.device_put(one))), 10 * reps, 20) * 1e3
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--skip-compile", action="store_true", help="leave out torch.compile (slow to build)")
    ap.add_argument("--skip-peers", action="store_true")
    a = ap.parse_args(argv)

    from cnnrt.formats import load_model
    from cnnrt.idx import load_mnist

    model = load_model(BUNDLE)
    d = ROOT / "data" / "mnist"
    x, y = load_mnist(d / "t10k-images-idx3-ubyte.gz", d / "t10k-labels-idx1-ubyte.gz")
    out = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "images": int(len(x)), "model": str(BUNDLE.relative_to(ROOT)), "results": []}
    out["compile"] = compile_times()
    res = bench_cnnrt(model, x, y, a.reps)
    ours = res.pop("labels")
    out["device"] = res["device"]
    out["results"].append(res)

    def save():
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2))

    save()
    peers = [] if a.skip_peers else [("torch eager", lambda: bench_torch(model, x, y, a.reps, "eager")),
                                     ("jax", lambda: bench_jax(model, x, y, a.reps))]
    if not a.skip_peers and not a.skip_compile:
        peers.append(("torch.compile", lambda: bench_torch(model, x, y, a.reps, "max-autotune")))
    for label, fn in peers:
        try:
            r = fn()
            r["agreement_with_cnnrt"] = float((r.pop("labels") == ours).mean())
        except Exception as e:  # a peer missing on the device is reported, not fatal
            r = {"name": label, "error": f"{type(e).__name__}: {e}"[:300]}
        out["results"].append(r)
        save()
    print_table(out)
    save()
    return 0


def print_table(out) -> None:
    base = out["results"][0]
    print(f"\nDeep MNIST, {out['images']} MNIST test images, fp16; {out['device']}; {out['date']}")
    c = out.get("compile", {})
    print(f"cnnrt kernel compile+load: first run {c.get('first_run_s')} s, second run (cached) {c.get('second_run_s')} s")
    hdr = (f"| {'':<34} | {'10k, input on GPU':>18} | {'10k host->host':>15} | {'1 image, on GPU':>16} | "
           f"{'1 image host->host':>19} | {'accuracy':>8} |")
    print(hdr)
    print("|" + "|".join("-" * (len(p)) for p in hdr.split("|")[1:-1]) + "|")
    for r in out["results"]:
        if "error" in r:
            print(f"| {r['name']:<34} | {'not run: ' + r['error'][:60]}")
            continue

        def cell(key, unit, scale=1.0):
            v = r.get(key)
            if v is None:
                return "-"
            ratio = "" if r is base or base.get(key) is None else f" ({v / base[key]:.1f}x)"
            return f"{v * scale:.3g} {unit}{ratio}"
        dev1 = "dev_1_us_graph" if "dev_1_us_graph" in r else "dev_1_us"
        h2h1 = "h2h_1_us_graph" if "h2h_1_us_graph" in r else "h2h_1_us"
        print(f"| {r['name']:<34} | {cell('dev_10k_ms', 'ms'):>18} | {cell('h2h_10k_ms', 'ms'):>15} | "
              f"{cell(dev1, 'us'):>16} | {cell(h2h1, 'us'):>19} | {r['accuracy']:.4f} |")
    print("ratios: the peer's time over cnnrt's. PyTorch's 1-image columns use a CUDA graph (its best);"
          " JAX's device times are host-clock times around block_until_ready.")
    for r in out["results"]:
        extra = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                 if k not in ("name", "dev_10k_ms", "h2h_10k_ms", "accuracy")}
        print(f"  {r['name']}: {extra}")


if __name__ == "__main__":
    sys.exit(main())
