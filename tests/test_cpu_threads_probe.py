"""benchmarks/cpu_threads.py end to end on a tiny run: the per-step timing of the compiled
programs (cnnrt_program_profile in kernels.c) names every step and measures each, and the JSON
holds what was printed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_cpu_threads_probe_runs_and_times_every_step(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from cnnrt.backends import native

    if native.lib() is None:
        pytest.skip(f"no compiled kernels here: {native.why()}")
    out = tmp_path / "threads.json"
    p = subprocess.run([sys.executable, "benchmarks/cpu_threads.py", "--one", "deep_mnist", "--threads", "1,2",
                        "--reps", "5", "--calls", "deep_mnist:40:40,7", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads(out.read_text())
    rows = d["one_image"]["deep_mnist"]
    assert [r["threads"] for r in rows] == [1, 2] and all(r["cnnrt_ms"] > 0 and r["ort_ms"] > 0 for r in rows)
    steps = d["steps"]["deep_mnist"]
    timed = [s for s in steps if s["us"] is not None]
    # conv1, pool1, conv2, pool2, fc1, fc2 and softmax: one program, every step timed
    assert len(timed) == 7 and all(s["us"] > 0 for s in timed), steps
    assert [s["step"].split("+")[0] for s in timed[:2]] == ["native.conv.direct", "native.maxpool"]
    calls = d["calls"]["deep_mnist"]
    assert [c["per_call"] for c in calls] == [40, 7] and all(c["cnnrt_s"] > 0 for c in calls)
    assert [f.name for f in tmp_path.iterdir()] == ["threads.json"]  # no temporary file left
