"""benchmarks/cuda_host_overhead.py end to end on the CPU fake of CuPy: it runs, restores what it
patches, and writes its JSON (the times themselves are a benchmark's, not checked here)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_host_overhead_benchmark_writes_its_json(tmp_path):
    out = tmp_path / "h.json"
    p = subprocess.run([sys.executable, "benchmarks/cuda_host_overhead.py", "--json", str(out), "--ab",
                        "--models", "lenet5", "--calls", "20", "--rounds", "2"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["models"]) == {"lenet5"}
    assert set(r["models"]["lenet5"]) == {"math.prod (now)", "np.prod (before)"}
    assert all(v > 0 for v in r["models"]["lenet5"].values())
    assert "lenet5" in p.stdout
