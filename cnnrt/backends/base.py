"""What every backend shares: input checks, batching, and the narrow Runner interface.

A backend is one module with `NAME`, `available() -> str | None` (None when usable, else the
reason it is not) and `prepare(model, precision) -> Runner`. A Runner holds the model's weights in
whatever form the backend wants and turns images into probabilities.
"""
from __future__ import annotations

import numpy as np

from ..errors import FormatError

PRECISIONS = ("fp32", "fp16")


def check_images(x, model, where: str = "images") -> np.ndarray:
    """Accept (N, H, W) when the model has one channel, or (N, H, W, C); uint8 or float.

    uint8 pixels are scaled by the model's input scale by the backend; float input is taken as
    already scaled. Returns an (N, H, W, C) view, never a silent reinterpretation.
    """
    x = np.asarray(x)
    if len(model.input_shape) != 3:  # not an image model: (N, *input_shape)
        if x.shape[1:] != tuple(model.input_shape):
            raise FormatError(f"{where}: expected an array of shape (N, {', '.join(map(str, model.input_shape))}), got {x.shape}")
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise FormatError(f"{where}: expected uint8 or float values, got dtype {x.dtype}")
        if x.dtype != np.uint8 and x.size and not np.isfinite(x).all():
            raise FormatError(f"{where}: holds NaN or Inf values")
        return x
    h, w, c = model.input_shape
    given = x.shape
    if x.ndim == 3 and c == 1:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (h, w, c):
        want = f"(N, {h}, {w}, {c})" + (f" or (N, {h}, {w})" if c == 1 else "")
        raise FormatError(f"{where}: expected an array of shape {want}, got {given}")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise FormatError(f"{where}: expected uint8 pixels or float values, got dtype {x.dtype}")
    if x.dtype != np.uint8 and x.size and not np.isfinite(x).all():
        raise FormatError(f"{where}: holds NaN or Inf values")
    return x


class Runner:
    """A model prepared for one backend and precision."""

    backend = "?"

    def __init__(self, model, precision: str):
        if precision not in PRECISIONS:
            raise FormatError(f"unknown precision {precision!r} (expected one of {PRECISIONS})")
        self.model = model
        self.precision = precision

    def probabilities(self, x, batch_size: int | None = None, progress=None) -> np.ndarray:
        """(N, classes) float32 probabilities (or the last layer's output if it is no softmax)."""
        x = check_images(x, self.model)
        bs = self.default_batch_size if batch_size is None else batch_size
        if bs < 1:
            raise FormatError(f"batch size must be at least 1, got {bs}")
        self.batch_size_used = min(bs, len(x))
        out = np.empty((len(x), self.model.num_classes), dtype=np.float32)
        for start in range(0, len(x), bs):
            out[start:start + bs] = self._forward(x[start:start + bs])
            if progress is not None:
                progress(min(start + bs, len(x)))
        return out

    def predict(self, x, batch_size: int | None = None, progress=None) -> np.ndarray:
        return self.probabilities(x, batch_size, progress).argmax(axis=1)

    default_batch_size = 256
    # the images per batch of the last call, as the runner really ran them (None before a call):
    # what a program reports as its batch size, not the one it asked for
    batch_size_used: int | None = None

    def _forward(self, x: np.ndarray) -> np.ndarray:  # x (n, H, W, C) uint8 or float
        raise NotImplementedError

    def scaled(self, x: np.ndarray, dtype=np.float32) -> np.ndarray:
        if x.dtype == np.uint8:
            return x.astype(dtype) * dtype(self.model.input_scale)
        return x.astype(dtype, copy=False)
