"""The wgmma conv lab (dev/cuda/wgmma_gemm.py) compiles for sm_90a: NVRTC to PTX, ptxas to SASS,
no spills, on a machine without a GPU (it ran on an H200 on 2026-11-28: docs/wgmma_gemm_2208.json)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wgmma_lab_compiles_for_sm90a():
    from cnnrt.testing.nvrtc import find_library

    if find_library() is None or shutil.which("ptxas") is None:
        pytest.skip("needs an NVRTC library and ptxas (pip install nvidia-cuda-nvrtc; CUDA's ptxas)")
    r = subprocess.run([sys.executable, str(ROOT / "dev/cuda/wgmma_gemm.py"), "--compile-only"],
                       capture_output=True, text=True, timeout=300, env=None)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [x for x in r.stdout.splitlines() if "ptxas rc" in x]
    assert len(lines) >= 5 and all("ptxas rc 0" in x and "0 bytes spill stores" in x for x in lines), r.stdout
