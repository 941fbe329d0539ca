"""Importers: other frameworks' models into a cnnrt Graph. All layout permutations live here.

`load_file(path)` reads a file by its suffix (.onnx, .keras, .h5), through the importer for it,
imported only then: each needs its extra, and says which when it is missing.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import CnnrtError, FormatError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
ONNX_SUFFIXES = (".onnx",)
SUFFIXES = KERAS_SUFFIXES + ONNX_SUFFIXES
# files people try that no importer reads, and what to do instead
FOREIGN = {
    ".pt": "a PyTorch file: load the module in PyTorch and use cnnrt.from_torch(module, example_input), "
           "or export it to ONNX",
    ".pth": "a PyTorch file: load the module in PyTorch and use cnnrt.from_torch(module, example_input), "
            "or export it to ONNX",
    ".pb": "a TensorFlow SavedModel or frozen graph: save the Keras model as .keras, or convert it to ONNX",
    ".tflite": "a TensorFlow Lite model: convert the original model to .keras or ONNX",
    ".pkl": "a pickle, which cnnrt never loads (it can run code)",
    ".pickle": "a pickle, which cnnrt never loads (it can run code)",
}


def importable(path) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


def check_suffix(path) -> None:
    """A clear error for a file type cnnrt does not read."""
    path = Path(path)
    why = FOREIGN.get(path.suffix.lower())
    if why is not None:
        raise FormatError(f"{path}: cnnrt does not read {path.suffix} files ({why}); it reads .safetensors bundles, "
                          f".onnx, .keras and .h5 files, and directories in the article's raw format")


def _missing(path, e: ModuleNotFoundError, extra: str, what: str):
    raise FormatError(f"{path}: reading {what} files needs the {e.name!r} package: pip install 'cnnrt[{extra}]'") from None


def _onnx_graph(path):
    try:
        from .onnx import from_onnx  # noqa: PLC0415
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.onnx":
            raise FormatError(f"{path}: this cnnrt has no ONNX importer") from None
        _missing(path, e, "onnx", "ONNX")
    try:
        return from_onnx(os.fspath(path))
    except ModuleNotFoundError as e:
        _missing(path, e, "onnx", "ONNX")
    except CnnrtError as e:  # BackendUnavailable when the onnx package is missing: a bad input here
        msg = str(e)
        raise FormatError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def load_file(path, *, input_scale: float | None = None, mean=None, std=None):
    """An .onnx, .keras or .h5 file as an optimized Graph. input_scale, mean and std say how uint8
    pixels become the model's input, (pixels * input_scale - mean) / std (default 1/255)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FormatError(f"{path}: no such model file")
    if suffix in KERAS_SUFFIXES:
        from .keras import load_keras_file  # noqa: PLC0415 - imports nothing heavy until called
        return load_keras_file(path, input_scale=input_scale, mean=mean, std=std)
    if suffix in ONNX_SUFFIXES:
        from ..ir.passes import optimize  # noqa: PLC0415
        from .preprocess import compose  # noqa: PLC0415

        g = _onnx_graph(path)
        channels = g.input_shape[-1] if g.input_shape else None
        g.preprocess = compose(input_scale, mean, std, channels=channels, where=str(path))
        return optimize(g)
    raise FormatError(f"{path}: no importer reads {suffix or 'suffix-less'} files (expected one of {', '.join(SUFFIXES)})")
