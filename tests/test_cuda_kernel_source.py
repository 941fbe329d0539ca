"""The Deep MNIST kernels' source (cuda_kernels/deep_mnist.cu) compiled on the CPU by NVRTC, when a
NVRTC library is at hand: with the constants cuda.py passes it compiles, and a P_SMEM_BYTES that
does not match the file's own shared-memory layout, or a missing constant, is a compile error (so
the two files cannot drift apart silently). GPU runs of these kernels are in tests/test_cuda.py."""
from __future__ import annotations

import pytest

from cnnrt.backends import cuda as C


def _compile(defines):
    from cnnrt.testing.nvrtc import compile_ptx, find_library

    if find_library() is None:
        pytest.skip("no NVRTC library here (pip install nvidia-cuda-nvrtc to check the CUDA source on the CPU)")
    return compile_ptx(C.KERNEL_FILE.read_text(), options=("--std=c++17",) + tuple(defines))


def test_compiles_with_the_constants_of_cuda_py():
    ptx, _ = _compile(C.KERNEL_DEFINES)
    for name in ("features_persistent_u8", "features_small_u8", "fc12_small", "fc2_softmax"):
        assert name in ptx
    assert C.P_THREADS == 32 * C.P_WARPS


def test_a_drifted_constant_does_not_compile():
    wrong = tuple(d if not d.startswith("-DP_SMEM_BYTES=") else f"-DP_SMEM_BYTES={C.P_SMEM_BYTES + 16}"
                  for d in C.KERNEL_DEFINES)
    with pytest.raises(Exception, match="P_SMEM_BYTES"):
        _compile(wrong)
    with pytest.raises(Exception, match="load_module"):
        _compile(tuple(d for d in C.KERNEL_DEFINES if not d.startswith("-DFC2_MAXC")))
