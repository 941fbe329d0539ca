"""dev/cuda/sanitize.py's reading of compute-sanitizer output (no GPU): reports in our kernels count,
the vendor's are listed by name, error reports that name no kernel count, notes do not."""
from __future__ import annotations

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load():
    spec = importlib.util.spec_from_file_location("sanitize", os.path.join(ROOT, "dev", "cuda", "sanitize.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


LOG = """========= COMPUTE-SANITIZER
ran lenet5 fp16 n=1 (tensor-core convs) in 0.5 s
========= Invalid __global__ read of size 16 bytes
=========     at mma_conv_abc123+0x1a0 in generated.cu:3
=========     by thread (0,0,0) in block (0,0,0)
=========
========= Error: Race reported between Write access at void cutlass::Kernel2<cutlass_80_wmma>(T1::Params)+0x1a0
=========     and Read access at void cutlass::Kernel2<cutlass_80_wmma>(T1::Params)+0x2b0 [128 hazards]
=========
========= Uninitialized __global__ memory read of size 16 bytes
=========     at 0x9f0 in features_persistent_u8
========= Barrier error detected. Divergent thread(s) in warp
=========     at 0x10 in sm90_xmma_gemm_f16f16
========= Program hit an illegal state
========= Device not tracked
========= ERROR SUMMARY: 5 errors
"""


def test_reports_are_attributed_by_kernel_name():
    S = load()
    r = S.classify(LOG, {"mma_conv_abc123", "features_persistent_u8"})
    assert r["ours"] == 2
    assert r["vendor_kernels"] == {"void cutlass::Kernel2<cutlass_80_wmma>(T1::Params)": 1, "sm90_xmma_gemm_f16f16": 1}
    assert r["unnamed"] == 1 and "illegal" in r["unnamed_examples"][0]
    assert r["notes"] == ["Device not tracked"]
    assert r["error_summary"] == 5 and r["printed"] == 5


def test_missing_sanitizer_says_where_it_looked(tmp_path, monkeypatch):
    import subprocess
    import sys

    env = dict(os.environ, PATH="/nonexistent", CNNRT_SANITIZER="")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "dev", "cuda", "sanitize.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env)
    if p.returncode == 2:
        assert "compute-sanitizer not found; looked in" in p.stderr and (tmp_path / "sanitize.json").exists()
    else:  # a machine with the sanitizer but no GPU: the tools fail, never pass
        assert p.returncode != 0
