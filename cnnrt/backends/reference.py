"""The definition of every op, in plain NumPy: NHWC activations, [out][kh][kw][in] weights.

Written to be read, not to be fast: every other backend is tested against these functions, and in
float64 they are the independent reference. Semantics are TensorFlow's: SAME padding puts the odd
pixel after, and max-pool takes the maximum over the valid pixels of a window only (padding never
wins, as the article's clamp edge mode gives).
"""
from __future__ import annotations

import numpy as np

from ..model import Conv2D, Dense, MaxPool2D, Model, Softmax, out_size, same_pads


def _pads(n: int, k: int, s: int, padding: str) -> tuple[int, int]:
    return same_pads(n, k, s) if padding == "same" else (0, 0)


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1, padding: str = "same") -> np.ndarray:
    """x (N, H, W, C), w (O, KH, KW, C), b (O,) -> (N, Ho, Wo, O), in x's dtype."""
    n, h, wd, c = x.shape
    o, kh, kw, _ = w.shape
    ho, wo = out_size(h, kh, stride, padding), out_size(wd, kw, stride, padding)
    (pt, pb), (pl, pr) = _pads(h, kh, stride, padding), _pads(wd, kw, stride, padding)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out = np.zeros((n * ho * wo, o), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + (ho - 1) * stride + 1:stride, j:j + (wo - 1) * stride + 1:stride, :]
            # one (pixels x C) @ (C x O) product a tap: a 4-D matmul runs as many small ones
            out += patch.reshape(-1, c) @ w[:, i, j, :].T.astype(x.dtype)
    return out.reshape(n, ho, wo, o) + b.astype(x.dtype)


def maxpool2d(x: np.ndarray, size: int = 2, stride: int = 2, padding: str = "same") -> np.ndarray:
    n, h, w, c = x.shape
    ho, wo = out_size(h, size, stride, padding), out_size(w, size, stride, padding)
    (pt, pb), (pl, pr) = _pads(h, size, stride, padding), _pads(w, size, stride, padding)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-np.inf)
    out = np.full((n, ho, wo, c), -np.inf, dtype=x.dtype)
    for i in range(size):
        for j in range(size):
            np.maximum(out, xp[:, i:i + (ho - 1) * stride + 1:stride, j:j + (wo - 1) * stride + 1:stride, :], out=out)
    return out


def dense(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x (N, ...) flattened in NHWC order, w (O, I) -> (N, O)."""
    return x.reshape(len(x), -1) @ w.T.astype(x.dtype) + b.astype(x.dtype)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def forward(model: Model, x: np.ndarray, dtype=np.float64, fp16_storage: bool = False) -> np.ndarray:
    """Run the model on x (N, H, W, C), already scaled, computing in `dtype`.

    fp16_storage rounds the weights, the input and every layer's output to float16, as the
    article's half-precision pipeline stores them, while the arithmetic stays in `dtype`.
    """
    q = (lambda a: a.astype(np.float16).astype(dtype)) if fp16_storage else (lambda a: a.astype(dtype, copy=False))
    x = q(x)
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            x = conv2d(x, q(layer.weight), q(layer.bias), layer.stride, layer.padding)
        elif isinstance(layer, Dense):
            x = dense(x, q(layer.weight), q(layer.bias))
        elif isinstance(layer, MaxPool2D):
            x = maxpool2d(x, layer.size, layer.stride, layer.padding)
        elif isinstance(layer, Softmax):
            x = softmax(x)
            continue
        if getattr(layer, "activation", "none") == "relu":
            x = relu(x)
        x = q(x)
    return x
