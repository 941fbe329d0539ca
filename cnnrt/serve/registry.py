"""Which models a server holds, under which names: from `--model [NAME=]PATH` flags.

A PATH is a model file, an article-format directory, or a folder of .safetensors bundles (every
one of them is served). A model is served under NAME, else its file's stem (the directory's name
for an article directory). Names go into URLs, so they are checked, and two models may not share one.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import CnnrtError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def model_paths(specs: list[str]) -> dict[str, Path]:
    """--model values -> {served name: path}, in the order given."""
    found: dict[str, tuple[Path, str]] = {}
    for spec in specs:
        name, path = None, spec
        if "=" in spec and not Path(spec).exists():
            name, path = spec.split("=", 1)
        p = Path(path)
        if not p.exists():
            raise CnnrtError(f"--model {spec}: {p} does not exist (expected a .safetensors bundle, an "
                             f"article-format directory, or a folder of .safetensors bundles)")
        bundles = sorted(p.glob("*.safetensors")) if p.is_dir() else []
        if bundles:
            if name is not None:
                raise CnnrtError(f"--model {spec}: {p} is a folder of {len(bundles)} models; NAME= names one "
                                 f"model, so pass each file as NAME=FILE instead")
            entries = [(b.stem, b) for b in bundles]
        else:
            entries = [(name if name is not None else (p.name if p.is_dir() else p.stem), p)]
        for n, f in entries:
            if not NAME.fullmatch(n):
                raise CnnrtError(f"--model {spec}: {n!r} cannot be a model name (letters, digits, '_', '.', '-'; "
                                 f"not starting with a symbol); pass --model NAME={f}")
            if n in found:
                raise CnnrtError(f"two models would be served as '{n}': {found[n][0]} and {f}; "
                                 f"name one with --model NAME={f}")
            found[n] = (f, spec)
    return {n: f for n, (f, _) in found.items()}


def load_sessions(paths: dict[str, Path], backend: str = "auto", precision: str | None = None) -> dict:
    """Load every model with cnnrt.load; on a failure, close what was loaded and re-raise."""
    from ..session import load

    sessions = {}
    try:
        for name, path in paths.items():
            sessions[name] = load(path, backend=backend, precision=precision)
    except BaseException:
        for s in sessions.values():
            s.close()
        raise
    return sessions
