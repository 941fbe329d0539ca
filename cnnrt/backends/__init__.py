"""Backends by name. Each is a small module behind the interface in base.py, imported on demand."""
from __future__ import annotations

import importlib

from ..errors import BackendUnavailable, CnnrtError

BACKENDS = {"numpy": "numpy_backend", "cuda": "cuda"}


def _module(name: str):
    if name not in BACKENDS:
        raise CnnrtError(f"unknown backend {name!r} (expected auto or one of {', '.join(BACKENDS)})")
    try:
        return importlib.import_module(f".{BACKENDS[name]}", __name__)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(__name__):
            raise BackendUnavailable(f"backend {name!r} is not part of this cnnrt build") from None
        raise


def resolve(name: str = "auto") -> tuple[str, str | None]:
    """(backend name, note): 'auto' takes the GPU when it can run, else NumPy, and says why."""
    if name != "auto":
        return name, None
    try:
        reason = _module("cuda").available()
    except BackendUnavailable as e:
        reason = str(e)
    if reason is None:
        return "cuda", "auto: using the GPU (cuda)"
    return "numpy", f"auto: using numpy ({reason})"


def prepare(model, backend: str = "auto", precision: str | None = None):
    """A Runner for `model` (a Graph, or a layer-chain Model) on the named backend ('auto' picks),
    at its default precision if None. Each backend runs a graph that is a classic layer chain
    on its hand-tuned kernels and any other graph on its generic ones."""
    name, _ = resolve(backend)
    mod = _module(name)
    reason = mod.available()
    if reason is not None:
        raise BackendUnavailable(f"backend {name!r} cannot run here: {reason}")
    return mod.prepare(model, precision or mod.DEFAULT_PRECISION)
