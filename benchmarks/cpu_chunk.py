"""How the images per chunk (the per-thread arena of a chunk's tensors) move cnnrt's CPU time, on
one thread and on all cores: the same model and images, runners built with each chunk size,
timed in alternating rounds in one process. Writes one JSON.

    PYTHONPATH=. python3 benchmarks/cpu_chunk.py --model deep_mnist --chunks 8,16,32,64 --json /tmp/chunk.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deep_mnist")
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--chunks", default="8,16,32,64", help="images per chunk to compare")
    p.add_argument("--threads", default=None, help="comma-separated (default: 1 and all cores)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    from benchmarks.cpu_zoo import cores, images, load, machine
    from cnnrt.backends import numpy_graph
    from cnnrt.backends.numpy_graph import GraphRunner

    g = load(a.model)
    if not hasattr(g, "nodes"):  # the layer chain of the shipped Deep MNIST
        from cnnrt.ir.chain import as_graph
        g = as_graph(g)
    x = images(g, a.images)
    threads = [int(t) for t in a.threads.split(",")] if a.threads else sorted({1, cores()})
    chunks = [int(c) for c in a.chunks.split(",")]
    res = {"kind": "chunk", "machine": machine(), "model": a.model, "images": a.images,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": " ".join(["python3", "benchmarks/cpu_chunk.py"] + (argv if argv is not None else sys.argv[1:])),
           "default_chunk": None, "per_image_bytes": None, "results": {}}
    for t in threads:
        runners = {c: GraphRunner(g, "fp32", threads=t, chunk=c) for c in chunks}
        default = GraphRunner(g, "fp32", threads=t)
        res["default_chunk"], res["per_image_bytes"] = default.chunk, default.plan.per_image_bytes
        default.close()
        samples = {c: [] for c in chunks}
        for r in runners.values():
            r.probabilities(x[:2000])  # warm-up: buffers, programs
        for k in range(a.rounds):
            for c in chunks[k % len(chunks):] + chunks[:k % len(chunks)]:
                s = time.perf_counter()
                runners[c].probabilities(x)
                samples[c].append(time.perf_counter() - s)
        res["results"][str(t)] = {str(c): {"median": statistics.median(v), "min": min(v), "max": max(v), "samples": v,
                                           "batch_size_used": runners[c].batch_size_used} for c, v in samples.items()}
        for r in runners.values():
            r.close()
        print(f"{t:3d} threads: " + "  ".join(f"chunk {c}: {statistics.median(v) * 1e3:8.1f} ms"
                                             for c, v in samples.items()), file=sys.stderr)
    text = json.dumps(res, indent=2)
    if a.json:  # written whole or not at all
        from cnnrt.fileio import atomic_write

        with atomic_write(a.json, overwrite=True) as tmp:
            tmp.write_text(text + "\n")
    print(text if not a.json else f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
