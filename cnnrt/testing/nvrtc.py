"""Compile CUDA source with NVRTC through ctypes, without a GPU: the generated kernels are checked
for syntax, types and register use on a machine that has only the NVRTC library (pip install
nvidia-cuda-nvrtc; or set CNNRT_NVRTC to the libnvrtc.so path). Tests skip when none is found."""
from __future__ import annotations

import ctypes
import glob
import os
import site
import sys


def find_library() -> str | None:
    env = os.environ.get("CNNRT_NVRTC")
    if env and os.path.exists(env):
        return env
    roots = list(sys.path) + site.getsitepackages() + [site.getusersitepackages(), "/tmp/nvrtc"]
    for root in roots:
        for pat in ("nvidia/cu13/lib/libnvrtc.so.*", "nvidia/cuda_nvrtc/lib/libnvrtc.so.*", "nvidia/cu12/lib/libnvrtc.so.*"):
            for p in sorted(glob.glob(os.path.join(root, pat))):
                if "alt" not in p and "builtins" not in p:
                    return p
    for p in ("/usr/local/cuda/lib64/libnvrtc.so",):
        if os.path.exists(p):
            return p
    return None


def compile_ptx(source: str, arch: str = "compute_90", options=("--std=c++17",)) -> tuple[str, str]:
    """(ptx, log); raises RuntimeError with the log if compilation fails."""
    path = find_library()
    if path is None:
        raise FileNotFoundError("no libnvrtc found (pip install nvidia-cuda-nvrtc, or set CNNRT_NVRTC)")
    for b in sorted(glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so.*"))):
        if "alt" not in b:
            ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)  # NVRTC dlopens it by name
    lib = ctypes.CDLL(path)
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"generated.cu", 0, None, None)
    if rc:
        raise RuntimeError(f"nvrtcCreateProgram failed ({rc})")
    opts = [f"--gpu-architecture={arch}".encode()] + [o.encode() for o in options]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    log = buf.value.decode(errors="replace")
    if rc:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        raise RuntimeError(f"NVRTC compilation failed:\n{log}")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode(errors="replace"), log
