"""`cnnrt.load()`: the one object that the CLI, the server and Ray hold.

A Session is a model prepared on one backend and precision, like ONNX Runtime's
InferenceSession or Keras's `model.predict`. It says what it runs (backend, precision, the batch
size it really uses), describes its input and output, and is safe to call from several threads:
calls into one runner are serialised by a lock, since a runner owns its scratch buffers (NumPy)
or its streams and CUDA graphs (GPU). Run one Session per thread for parallel CPU work.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: name, shape with None for the batch axis, datatype (KServe v2 names)."""

    name: str
    shape: tuple
    datatype: str

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": [-1 if d is None else int(d) for d in self.shape],
                "datatype": self.datatype}


class Session:
    """A loaded model on a backend. Build it with `cnnrt.load(path)`."""

    def __init__(self, model, backend: str = "auto", precision: str | None = None, path: str | None = None):
        from . import backends

        self.model = model
        self.path = path
        name, self.backend_note = backends.resolve(backend)
        self._runner = backends.prepare(model, name, precision)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- what runs
    @property
    def name(self) -> str:
        return self.model.name

    @property
    def backend(self) -> str:
        return self._runner.backend

    @property
    def precision(self) -> str:
        return self._runner.precision

    @property
    def default_batch_size(self) -> int:
        return self._runner.default_batch_size

    @property
    def batch_size_used(self) -> int | None:
        """The images per batch the last call really ran (None before a call): on the CPU the
        chunk size, on the GPU's fused path the whole input."""
        return self._runner.batch_size_used

    @property
    def input_shape(self) -> tuple:
        """One image's shape (H, W, C), NHWC."""
        return tuple(self.model.input_shape)

    @property
    def input_scale(self) -> float:
        return float(self.model.input_scale)

    @property
    def preprocess(self) -> dict:
        """How uint8 pixels become the input: scale, then optional per-channel mean and std."""
        return dict(getattr(self.model, "preprocess", None) or {"scale": self.input_scale})

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def labels(self) -> list[str]:
        """Class names: the model's own if it stores them, else '0', '1', ..."""
        names = getattr(self.model, "labels", None) or (self.model.meta or {}).get("labels")
        if isinstance(names, list) and len(names) == self.num_classes:
            return [str(v) for v in names]
        return [str(i) for i in range(self.num_classes)]

    @property
    def inputs(self) -> list[TensorInfo]:
        """uint8 pixels are scaled by `input_scale`; float input is taken as already scaled."""
        return [TensorInfo("images", (None, *self.input_shape), "UINT8")]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [TensorInfo("probabilities", (None, self.num_classes), "FP32"),
                TensorInfo("label", (None,), "INT64")]

    # ---------------------------------------------------------------- running
    def probabilities(self, x, batch_size: int | None = None, progress=None) -> np.ndarray:
        """(N, classes) float32. x: (N, H, W, C) or (N, H, W) for one channel; uint8 or float."""
        with self._lock:
            return self._runner.probabilities(x, batch_size=batch_size, progress=progress)

    def predict(self, x, batch_size: int | None = None, progress=None) -> np.ndarray:
        """(N,) int64 class indices."""
        with self._lock:
            return np.asarray(self._runner.predict(x, batch_size=batch_size, progress=progress), dtype=np.int64)

    def run(self, x, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Both outputs by name, as `outputs` describes them."""
        p = self.probabilities(x, batch_size=batch_size)
        return {"probabilities": p, "label": p.argmax(axis=1).astype(np.int64)}

    def input_buffer(self, n: int, dtype=np.uint8) -> np.ndarray:
        """An (n, H, W, C) array in the memory this backend reads fastest, to fill with images and
        pass to probabilities/predict: page-locked on the GPU (large inputs are then copied in by
        the GPU's own streams, with no staging copy on the host), an ordinary array on the CPU."""
        shape = (int(n), *self.input_shape)
        if self.backend == "cuda":
            from .backends.cuda import pinned_empty

            return pinned_empty(shape, dtype)
        return np.empty(shape, dtype)

    def describe(self) -> dict:
        return {"name": self.name, "path": self.path, "backend": self.backend, "precision": self.precision,
                "batch_size": self.default_batch_size,
                "inputs": [t.as_dict() for t in self.inputs], "outputs": [t.as_dict() for t in self.outputs],
                "labels": self.labels}

    def close(self) -> None:
        close = getattr(self._runner, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"<cnnrt.Session {self.name!r} on {self.backend} {self.precision}, "
                f"input {self.input_shape}, {self.num_classes} classes>")


def load(path: str | os.PathLike, backend: str = "auto", precision: str | None = None) -> Session:
    """Load a model file (bundle, article directory, ...) and prepare it on `backend`."""
    from .formats import load_model

    return Session(load_model(path), backend=backend, precision=precision, path=str(path))
