"""benchmarks/cpu_ab.py end to end: two builds of the compiled kernels (a git revision and a file)
planned and timed side by side in one process, written as JSON."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ab_of_a_revision_against_the_working_file(tmp_path):
    from cnnrt.backends import native

    if native.lib() is None:
        pytest.skip(f"no compiled kernels here: {native.why()}")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = tmp_path / "ab.json"
    p = subprocess.run([sys.executable, "benchmarks/cpu_ab.py", "--a", "HEAD", "--b", "cnnrt/backends/cpu_native/kernels.c",
                        "--rounds", "2", "deep_mnist:2", "resnet20:1", "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["kind"] == "cpu_ab" and r["a"] == "HEAD" and r["threads"] == 1
    assert [(c["model"], c["images"]) for c in r["cases"]] == [("deep_mnist", 2), ("resnet20", 1)]
    for c in r["cases"]:
        assert len(c["a_samples"]) == len(c["b_samples"]) == 2 and c["a_ms"] > 0 and c["b_ms"] > 0
        assert c["b_over_a"] == pytest.approx(c["b_ms"] / c["a_ms"])
    assert "deep_mnist:2" in p.stdout
