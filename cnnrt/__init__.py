"""cnnrt: a small, fast inference runtime for convolutional networks.

`import cnnrt` loads only NumPy-free stubs; everything heavy is imported on first use.
"""
__version__ = "0.1.0"

__all__ = ["load", "Session", "load_model", "from_onnx", "from_torch", "from_keras", "Model", "CnnrtError", "FormatError", "__version__"]


def __getattr__(name):
    if name in ("load", "Session"):
        from . import session
        return getattr(session, name)
    if name == "load_model":
        from .formats import load_model
        return load_model
    if name == "from_torch":
        from .importers.torch import from_torch
        return from_torch
    if name == "from_keras":
        from .importers.keras import from_keras
        return from_keras
    if name == "Model":
        from .model import Model
        return Model
    if name == "from_onnx":
        from .importers.onnx import from_onnx
        return from_onnx
    if name in ("CnnrtError", "FormatError", "BackendUnavailable"):
        from . import errors
        return getattr(errors, name)
    raise AttributeError(f"module 'cnnrt' has no attribute {name!r}")
