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


def test_each_part_holds_exactly_its_kernels():
    # load_module compiles the file once per DEEP_MNIST_PARTS entry (-DCNNRT_PART=k): each part's
    # PTX defines exactly the kernels listed for it, and together they are every kernel of the file
    import re

    whole = set(re.findall(r"\.entry\s+(\w+)", _compile(C.KERNEL_DEFINES)[0]))
    seen = set()
    for k, names in enumerate(C.DEEP_MNIST_PARTS):
        entries = set(re.findall(r"\.entry\s+(\w+)", _compile(C.KERNEL_DEFINES + (f"-DCNNRT_PART={k}",))[0]))
        assert entries == set(names), (k, entries)
        seen |= entries
    assert seen == whole and len(whole) == 8, whole


def test_load_module_builds_every_part_and_names_a_missing_kernel(monkeypatch):
    # on a stand-in for CuPy: one module per part, compiled where get_function is first called
    # (inside the worker threads), and the FusedRunner's kernels all found
    import types

    from cnnrt.errors import CnnrtError

    built = []

    class RawModule:
        def __init__(self, code, options):
            self.part = next(o for o in options if o.startswith("-DCNNRT_PART="))
            built.append(self.part)

        def get_function(self, name):
            return (self.part, name)

    class Dev:
        id = 0

        def __init__(self, *a):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    cp = types.SimpleNamespace(RawModule=RawModule, cuda=types.SimpleNamespace(Device=Dev))
    monkeypatch.setattr(C, "_cupy", lambda: cp)
    monkeypatch.setattr(C, "_modules", {})
    mod = C.load_module()
    assert sorted(built) == [f"-DCNNRT_PART={k}" for k in range(len(C.DEEP_MNIST_PARTS))]
    for k, names in enumerate(C.DEEP_MNIST_PARTS):
        for name in names:
            assert mod.get_function(name) == (f"-DCNNRT_PART={k}", name)
    with pytest.raises(CnnrtError, match="no CUDA kernel 'nope'"):
        mod.get_function("nope")
