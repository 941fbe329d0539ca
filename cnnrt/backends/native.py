"""The optional compiled kernels of the CPU path: cpu_native/kernels.c, built at first use.

NumPy stays the default path's only requirement: when no C compiler is found, or the build
fails, or CNNRT_NATIVE=0 is set, `lib()` returns None (and `why()` says why) and the planner keeps
its NumPy kernels. The compiler is $CC, else cc, gcc or clang on the PATH, else the Zig toolchain
that the `ziglang` wheel brings (`pip install 'cnnrt[native]'`: it installs from the package index
alone). The library is built for the CPU that builds it (-march=native) and cached under
$CNNRT_CACHE_DIR (default ~/.cache/cnnrt), keyed by the source, the flags, the compiler and the
CPU, so a later process loads it in milliseconds; `info()` reports the first build's time.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SOURCE = Path(__file__).with_name("cpu_native") / "kernels.c"
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-pthread", "-ffp-contract=fast", "-fno-math-errno", "-std=c11", "-lm"]

_lock = threading.Lock()
_state: dict = {}


class Epi(ctypes.Structure):
    _fields_ = [("n", ctypes.c_int), ("code", ctypes.c_int * 8), ("a", ctypes.c_float * 8),
                ("b", ctypes.c_float * 8), ("bias", ctypes.c_void_p), ("res", ctypes.c_void_p)]


E_BIAS, E_RELU, E_CLIP, E_LEAKY, E_HSWISH, E_HSIG, E_ADD = range(1, 8)


class Task(ctypes.Structure):
    """One part of one step of a program (cnnrt_run_program in kernels.c)."""
    _fields_ = [("kind", ctypes.c_int), ("i0", ctypes.c_int), ("i1", ctypes.c_int), ("r0", ctypes.c_int),
                ("r1", ctypes.c_int), ("b0", ctypes.c_int), ("b1", ctypes.c_int), ("cpad_or_avg", ctypes.c_int),
                ("x", ctypes.c_void_p), ("w", ctypes.c_void_p), ("zeros", ctypes.c_void_p), ("inv", ctypes.c_void_p),
                ("y", ctypes.c_void_p), ("geo", ctypes.c_void_p), ("e", ctypes.c_void_p)]


K_DEPTHWISE, K_POOL = 5, 6  # Task.kind; 1, 2, 4: the direct convolution with that many vectors per block


def cache_dir() -> Path:
    d = os.environ.get("CNNRT_CACHE_DIR")
    if d:
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cnnrt"


def _compiler() -> list[str] | None:
    cc = os.environ.get("CC")
    if cc and shutil.which(cc.split()[0]):
        return cc.split()
    for c in ("cc", "gcc", "clang"):
        if shutil.which(c):
            return [c]
    try:
        if importlib_util().find_spec("ziglang") is not None:
            return [sys.executable, "-m", "ziglang", "cc"]
    except (ImportError, ValueError):
        pass
    return None


def importlib_util():
    import importlib.util
    return importlib.util


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _tuning() -> list[str]:
    """Register-blocking choices that differ by CPU (measured; see kernels.c): -D flags."""
    try:
        with open("/proc/cpuinfo") as f:
            amd = any(line.startswith("vendor_id") and "AuthenticAMD" in line for line in f)
    except OSError:
        amd = False
    flags = ["-DDIRECT_G1_PX=8"] if amd else []
    # for A/B runs of other blockings: CNNRT_NATIVE_DEFINES="DIRECT_G2_PX=12 DIRECT_G4_PX=4"
    flags += ["-D" + d for d in os.environ.get("CNNRT_NATIVE_DEFINES", "").split() if d.replace("=", "").replace("_", "").isalnum()]
    return flags


def _direct_kernels(lib) -> list:
    """The direct convolutions with 1, 2, 3 and 4 vectors of output channels a block (older
    sources, which benchmarks/cpu_ab.py loads, lack the 3)."""
    return [getattr(lib, f"conv_direct_g{g}") for g in (1, 2, 3, 4) if hasattr(lib, f"conv_direct_g{g}")]


def _wino_kernels(lib) -> list:
    """Winograd F(2x2, 3x3) and F(4x4, 3x3) with 1-4 vectors of output channels a block (absent from
    older sources)."""
    return [getattr(lib, f"conv_wino{m}_g{g}") for m in (2, 4) for g in (1, 2, 3, 4)
            if hasattr(lib, f"conv_wino{m}_g{g}")]


def _build() -> tuple[ctypes.CDLL | None, str | None, dict]:
    if os.environ.get("CNNRT_NATIVE", "1") == "0":
        return None, "CNNRT_NATIVE=0", {}
    cc = _compiler()
    if cc is None:
        return None, "no C compiler (install one, or pip install 'cnnrt[native]' for the Zig toolchain)", {}
    src = SOURCE.read_bytes()
    try:
        ver = subprocess.run(cc + ["--version"], capture_output=True, text=True, timeout=60).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"C compiler {' '.join(cc)} does not run ({e})", {}
    flags = FLAGS + _tuning()
    key = hashlib.sha256(src + repr((flags, ver, _cpu_id(), platform.machine())).encode()).hexdigest()[:16]
    d = cache_dir()
    path = d / f"kernels-{key}.so"
    info = {"compiler": " ".join(cc), "library": str(path), "compiled_now": False, "compile_seconds": None}
    if not path.exists():
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=d, prefix=".kernels-", suffix=".so")
            os.close(fd)
            t0 = time.perf_counter()
            p = subprocess.run(cc + flags + ["-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                os.unlink(tmp)
                return None, f"C build failed: {p.stderr.strip()[:400]}", info
            os.replace(tmp, path)  # atomic: a concurrent process sees the whole library or none
            info.update(compiled_now=True, compile_seconds=time.perf_counter() - t0)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"C build failed ({e})", info
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        return None, f"cannot load {path} ({e})", info
    P, I = ctypes.c_void_p, ctypes.c_int
    for f in _direct_kernels(lib):
        f.argtypes = [P, P, P, P, I, I, I, I, I, I, P, P]
    for f in _wino_kernels(lib):
        f.argtypes = [P, P, P, P, I, I, I, I, I, I, P]
        f.restype = None
    lib.conv_depthwise.argtypes = [P, P, P, P, I, I, I, I, I, P]
    lib.pool2d.argtypes = [P, I, I, I, I, I, I, I, I, I, I, I, P, I, I, I, I, I, I, I, P, P]
    for f in (*_direct_kernels(lib), lib.conv_depthwise, lib.pool2d):
        f.restype = None
    lib.cnnrt_vector_width.restype = I
    if hasattr(lib, "cnnrt_direct_px"):
        lib.cnnrt_direct_px.argtypes = [I]
        lib.cnnrt_direct_px.restype = I
    if hasattr(lib, "dense_block"):  # (older sources, in benchmarks/cpu_ab.py, lack it)
        lib.dense_block.argtypes = [P, P, P, P, I, I, I, I, I, P]
        lib.dense_block.restype = None
        lib.cnnrt_dense_strip.restype = I
    if hasattr(lib, "softmax_rows"):
        lib.softmax_rows.argtypes = [P, P, P, I, I, I]
        lib.softmax_rows.restype = None
    if hasattr(lib, "cnnrt_run_program"):  # (benchmarks/cpu_ab.py loads older sources without it)
        lib.cnnrt_run_program.argtypes = [P, P, I, I]
        lib.cnnrt_run_program.restype = I
        lib.cnnrt_task_size.restype = I
        if lib.cnnrt_task_size() != ctypes.sizeof(Task):
            return None, f"{path}: its Task is {lib.cnnrt_task_size()} bytes, not {ctypes.sizeof(Task)}", info
        if hasattr(lib, "cnnrt_set_spin_ns"):  # CNNRT_SPIN_US: how long idle C threads spin before sleeping
            lib.cnnrt_set_spin_ns.argtypes = [ctypes.c_long]
            try:
                lib.cnnrt_set_spin_ns(int(float(os.environ.get("CNNRT_SPIN_US", "100")) * 1000))
            except ValueError:
                pass
        if hasattr(lib, "cnnrt_program_profile"):  # per-step times of programs (benchmarks/cpu_threads.py)
            lib.cnnrt_program_profile.argtypes = [P, I]
            lib.cnnrt_program_profile.restype = None
    info["vector_width"] = lib.cnnrt_vector_width()
    return lib, None, info


def reset() -> None:
    """Forget the loaded library (the next `lib()` looks again: for tests)."""
    with _lock:
        _state.clear()


def lib():
    """The loaded kernel library, built on first call (None when it cannot be)."""
    with _lock:
        if "lib" not in _state:
            _state["lib"], _state["why"], _state["info"] = _build()
        return _state["lib"]


def why() -> str | None:
    lib()
    return _state["why"]


def info() -> dict:
    lib()
    return dict(_state["info"])
