"""Where the GPU time of a zoo model goes: every launch of cnnrt's CUDA plan timed on the device.

    PYTHONPATH=. python3 benchmarks/gpu_profile.py --json bench/out/gpu_profile.json \
        [--models resnet18,mobilenet_v2] [--precision fp16] [--batches 1,large] [--reps 20]

For each model and batch size the plan's launches run one by one on a stream kept busy by a spin
kernel queued first, with a CUDA event between launches, so each gap between two events is that
launch's device time (not the host's time to enqueue it). Prints, per model and batch, the total,
the time by kernel family and the slowest launches with their labels, and writes it all as JSON.
The sum is the plan's device time without the CUDA graph; a graph replay adds no work but saves
the per-launch gaps.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPIN_SRC = r"""
extern "C" __global__ void spin(long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
}
"""


def profile_plan(r, n: int, reps: int, spin) -> list[dict]:
    """[{label, family, ms}] for every launch of r's plan for n uint8 images (median of reps)."""
    import cupy as cp

    plan = r.program.plan(n, "u8")
    lane = r.lanes[0]
    lane.ensure(plan)
    bound = r._bind(0, plan)
    for _ in range(3):
        r._enqueue(lane, plan, bound, copies=False)
    lane.stream.synchronize()
    times = [[] for _ in bound]
    for _ in range(reps):
        ev = [cp.cuda.Event() for _ in range(len(bound) + 1)]
        with lane.stream:
            spin((1,), (1,), (np.int64(2_000_000 + 200_000 * len(bound)),))
        ev[0].record(lane.stream)
        for i, b in enumerate(bound):
            r._enqueue(lane, plan, [b], copies=False)
            ev[i + 1].record(lane.stream)
        ev[-1].synchronize()
        for i in range(len(bound)):
            times[i].append(cp.cuda.get_elapsed_time(ev[i], ev[i + 1]))
    rows = []
    for l, t in zip(plan.launches, times):
        fam = l.kernel.family if l.kernel is not None else l.kind
        if fam == "mma_conv" and l.kernel.static.get("splitk"):
            fam = "mma_conv splitk"
        rows.append({"label": l.label, "family": fam, "grid": list(l.grid), "ms": statistics.median(t)})
    return rows


def main(argv=None) -> int:
    from benchmarks.gpu_zoo import MODELS, zoo_graph

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--batches", default="1,large", help="comma-separated sizes; 'large' is the zoo's large batch")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--top", type=int, default=8)
    a = ap.parse_args(argv)

    import cupy as cp

    from cnnrt.backends.cuda_graph import GraphRunner

    spin = cp.RawModule(code=SPIN_SRC).get_function("spin")
    dev = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    out = {"device": dev, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "precision": a.precision, "models": {}}
    for name in a.models.split(","):
        g, src = zoo_graph(name)
        r = GraphRunner(g, a.precision)
        res = {"source": src, "batches": {}}
        for b in a.batches.split(","):
            n = MODELS[name] if b == "large" else int(b)
            n = min(n, r.max_chunk)
            rows = profile_plan(r, n, a.reps, spin)
            total = sum(x["ms"] for x in rows)
            fam = collections.Counter()
            for x in rows:
                fam[x["family"]] += x["ms"]
            res["batches"][str(n)] = {"total_ms": total, "launches": len(rows), "by_family_ms": dict(fam), "rows": rows}
            print(f"{name} {a.precision} n={n}: {total:.3f} ms device in {len(rows)} launches; by family: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in fam.most_common()), flush=True)
            for x in sorted(rows, key=lambda x: -x["ms"])[:a.top]:
                print(f"    {x['ms'] * 1e3:9.1f} us  grid {tuple(x['grid'])}  {x['label']}", flush=True)
        out["models"][name] = res
        r.close()
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(a.json).with_suffix(".tmp")
            tmp.write_text(json.dumps(out, indent=1))
            os.replace(tmp, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
