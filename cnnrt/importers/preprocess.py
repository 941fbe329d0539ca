"""How uint8 pixels become a graph's input, for importers and `cnnrt import`.

A user describes their model's input as `x = (pixels * scale - mean) / std` (per channel mean and
std, as torchvision's Normalize; 1/255 and no normalisation by default). An importer may have
folded the model's first affine layer (Keras's Rescaling) into the preprocessing: the graph's
input is then `x * a + b`. `compose` merges both into the graph's `preprocess` in one canonical
form: a scale, a mean only when some channel's is non-zero, a std only when the channels differ
(a uniform std is moved into the scale and mean), so a plain model keeps a plain `{"scale": s}`
and still runs on the fused layer-chain kernels.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import FormatError

DEFAULT_SCALE = 1.0 / 255.0


def _vector(v, what: str, positive: bool = False) -> np.ndarray | None:
    if v is None:
        return None
    a = np.atleast_1d(np.asarray(v, dtype=np.float64)).reshape(-1)
    if a.size == 0 or not np.isfinite(a).all() or positive and (a <= 0).any():
        raise FormatError(f"{what} must be {'positive ' if positive else ''}finite numbers, got {v!r}")
    return a


def parse_numbers(text: str, what: str) -> list[float]:
    """'0.485,0.456,0.406' or '1/255' -> floats (a fraction is allowed in each item)."""
    out = []
    for item in str(text).split(","):
        item = item.strip()
        try:
            if "/" in item:
                num, den = item.split("/", 1)
                v = float(num) / float(den)
            else:
                v = float(item)
        except (ValueError, ZeroDivisionError):
            raise FormatError(f"{what}: {item!r} is not a number (expected e.g. 0.5, 1/255 or 0.485,0.456,0.406)") from None
        if not math.isfinite(v):
            raise FormatError(f"{what}: {item!r} is not a finite number")
        out.append(v)
    return out


def compose(scale: float | None = None, mean=None, std=None, affine=None, channels: int | None = None,
            where: str = "model") -> dict:
    """The graph's `preprocess` for pixels -> (p*scale - mean)/std -> [x*a + b] -> graph input."""
    scale = DEFAULT_SCALE if scale is None else float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise FormatError(f"{where}: input scale must be a positive number, got {scale}")
    m = _vector(mean, f"{where}: mean")
    s = _vector(std, f"{where}: std", positive=True)
    a, b = (None, None) if affine is None else affine
    a = _vector(a, f"{where}: input rescaling")
    b = _vector(b, f"{where}: input offset")
    if a is not None and (a == 0).any():
        raise FormatError(f"{where}: the input rescaling multiplies by 0")
    sizes = {v.size for v in (m, s, a, b) if v is not None and v.size > 1}
    if len(sizes) > 1 or channels is not None and sizes and sizes != {channels}:
        raise FormatError(f"{where}: per-channel values of different lengths {sorted(sizes)}"
                          + (f" for {channels} channels" if channels is not None else ""))
    m = np.zeros(1) if m is None else m
    s = np.ones(1) if s is None else s
    a = np.ones(1) if a is None else a
    b = np.zeros(1) if b is None else b
    # g = ((p*scale - m)/s)*a + b = (p*scale - (m - b*s/a)) / (s/a)
    mean2, std2 = m - b * s / a, s / a
    if np.allclose(std2, std2.flat[0], rtol=1e-12, atol=0):  # a uniform std goes into scale and mean
        c = float(std2.flat[0])
        scale, mean2, std2 = scale / c, mean2 / c, None
    if std2 is not None and (std2 < 0).any() or std2 is None and scale < 0:
        raise FormatError(f"{where}: the input rescaling flips the sign of the pixels, which cnnrt's "
                          f"preprocessing cannot express")
    out = {"scale": float(scale)}
    if np.any(mean2 != 0):
        out["mean"] = [float(v) for v in mean2]
    if std2 is not None:
        out["std"] = [float(v) for v in std2]
    return out
