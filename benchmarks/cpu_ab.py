"""A/B of the compiled CPU kernels: kernels.c from two git revisions (or two files), both built and
loaded in one process, the same models planned on each, timed on one thread in alternating rounds
(so that the machine's drift hits both alike). Per case: the median of the rounds' summed step
times (GraphRunner.profile), and B / A.

    PYTHONPATH=. python3 benchmarks/cpu_ab.py --a ee0910f --b ef1248f resnet20:16 resnet18:1 \
        --json docs/cpu_ab/border_gather.json

A revision's kernels.c must export the kernels this checkout's planner calls (the program runner
is optional: profile() times the steps one by one either way).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SRC = "cnnrt/backends/cpu_native/kernels.c"


def source(spec: str, tmp: Path, tag: str) -> Path:
    """A file path as given, else a git revision's kernels.c written to tmp."""
    p = Path(spec)
    if p.is_file():
        return p
    text = subprocess.run(["git", "show", f"{spec}:{SRC}"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    out = tmp / f"kernels_{tag}.c"
    out.write_text(text)
    return out


def main(argv=None) -> int:
    from benchmarks.cpu_zoo import load, machine
    from cnnrt.backends import native
    from cnnrt.backends.numpy_graph import GraphRunner

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", nargs="+", help="model:images (cpu_zoo's models)")
    p.add_argument("--a", required=True, help="git revision or file: the baseline")
    p.add_argument("--b", default="HEAD", help="git revision or file: the change (default HEAD)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in a.cases]
    runners = {}
    with tempfile.TemporaryDirectory() as d:
        for tag, spec in (("A", a.a), ("B", a.b)):
            native.SOURCE = source(spec, Path(d), tag)
            native.reset()
            if native.lib() is None:
                raise SystemExit(f"{spec}: the kernels do not build or load: {native.why()}")
            for name, n in cases:
                g = load(name)
                runners[tag, name, n] = (GraphRunner(g, "fp32", threads=1), g)
    rng = np.random.default_rng(1)
    feeds = {}
    for name, n in cases:
        g = runners["A", name, n][1]
        feeds[name, n] = {g.input_name: rng.random((n, *g.input_shape), dtype=np.float32)}
    ms = {k: [] for k in runners}
    for _ in range(a.rounds):
        for k, (r, g) in runners.items():
            ms[k].append(1e3 * sum(s["seconds"] for s in r.profile(feeds[k[1:]], repeats=1)))
    res = {"kind": "cpu_ab", "a": a.a, "b": a.b, "machine": machine(), "rounds": a.rounds, "threads": 1,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": " ".join(["python3", "benchmarks/cpu_ab.py"] + (argv if argv is not None else sys.argv[1:])),
           "cases": []}
    for name, n in cases:
        ma, mb = statistics.median(ms["A", name, n]), statistics.median(ms["B", name, n])
        res["cases"].append({"model": name, "images": n, "a_ms": ma, "b_ms": mb, "b_over_a": mb / ma,
                             "a_samples": ms["A", name, n], "b_samples": ms["B", name, n]})
        print(f"{name}:{n}  A {ma:.2f} ms  B {mb:.2f} ms  B/A {mb / ma:.3f}")
    if a.json:
        from cnnrt.fileio import write_json
        write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
