"""The machine a benchmark runs on: CPU, the matrix-product floor, installed sizes, fresh processes."""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

CORE_DEPENDENCIES = ("numpy", "safetensors")  # cnnrt's run-time requirements (pyproject.toml)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine() -> dict:
    import numpy as np

    return {
        "cpu": cpu_model(), "cores": cpu_count(), "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(), "numpy": np.__version__,
    }


def matmul_rate(n: int = 2048, repeats: int = 5) -> dict:
    """The best float32 matrix-product rate NumPy's BLAS reaches here, in FLOP/s (2 n^3 per product).

    A convolutional net is mostly matrix products, so FLOPs / this rate is the floor a runtime on
    this machine can hope for (a runtime with a better GEMM than NumPy's BLAS can beat it a little).
    """
    import numpy as np

    if n < 1 or repeats < 1:
        raise ValueError("matmul_rate needs n >= 1 and repeats >= 1")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = a @ b  # warm-up: threads started, pages touched
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return {"n": n, "repeats": repeats, "best_seconds": best, "flops_per_second": 2.0 * n ** 3 / best}


# ---------------------------------------------------------------- installed size

def _dist_size(dist) -> int:
    total = 0
    for f in dist.files or ():
        try:
            total += os.path.getsize(dist.locate_file(f))
        except OSError:
            pass
    return total


def _package_dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts)


def _requirements(dist) -> list[str]:
    """Names of the distributions `dist` needs at run time (no extras), markers evaluated here."""
    names = []
    try:
        from packaging.requirements import Requirement
    except ImportError:
        Requirement = None
    for req in dist.requires or ():
        if Requirement is not None:
            try:
                r = Requirement(req)
            except Exception:
                continue
            if r.marker is not None:
                try:
                    if not r.marker.evaluate({"extra": ""}):
                        continue
                except Exception:
                    continue
            names.append(r.name)
        else:  # crude fallback: skip anything conditional
            if ";" in req:
                continue
            names.append(re.split(r"[\s<>=!~\[(]", req.strip(), maxsplit=1)[0])
    return names


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_size(root: str) -> dict:
    """Bytes on disk of distribution `root` and everything it requires, recursively, each counted once.

    cnnrt itself may run from a checkout (not installed, or installed editable): then its package
    directory stands for its files and its core dependencies are added by name.
    """
    seen, total, missing = set(), 0, []
    todo = [root]
    while todo:
        name = todo.pop()
        key = _norm(name)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            if key == "cnnrt":
                total += _package_dir_size(Path(__file__).resolve().parent.parent)
                todo.extend(CORE_DEPENDENCIES)
            else:
                missing.append(name)
            continue
        size = _dist_size(dist)
        if key == "cnnrt" and size < 100_000:  # editable install: the files live in the checkout
            size += _package_dir_size(Path(__file__).resolve().parent.parent)
        total += size
        todo.extend(_requirements(dist))
    return {"bytes": total, "distributions": len(seen) - len(missing), "not_installed": sorted(missing)}


# ---------------------------------------------------------------- fresh processes

def fresh_process(peer_name: str, import_statement: str, artifact: str, input_shape, timeout: float = 600,
                  env_extra: dict | None = None) -> dict:
    """Import time and first answer (import + load + one image) of a peer in a new interpreter."""
    env = dict(os.environ)
    env.update(env_extra or {})
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cnnrt.bench.cold", peer_name, import_statement, artifact,
                           ",".join(str(int(v)) for v in input_shape)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"fresh process for {peer_name} failed (exit {proc.returncode}): {tail}")
    out = json.loads(lines[-1])
    out["process_seconds"] = wall
    return out


class CpuUse:
    """CPU time the whole machine spent while we ran, minus our own: the other load during the run."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            ticks = [int(v) for v in fields]
            hz = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        t = os.times()
        return {"busy": (sum(ticks[:8]) - idle) / hz, "wall": time.time(),
                "own": t.user + t.system + t.children_user + t.children_system}

    def stop(self) -> dict | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall = end["wall"] - self.start["wall"]
        busy = end["busy"] - self.start["busy"]
        own = end["own"] - self.start["own"]
        other = max(busy - own, 0.0)
        return {"wall_seconds": wall, "own_cpu_seconds": own, "other_cpu_seconds": other,
                "other_cores_average": other / wall if wall > 0 else 0.0}
