"""Statistics of timing samples: median and spread (quartiles, min, max). Pure Python."""
from __future__ import annotations

import math


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (NumPy's default 'linear' method)."""
    if not sorted_values:
        raise ValueError("quantile of no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be in [0, 1], got {q}")
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples) -> dict:
    """{'n', 'median', 'q1', 'q3', 'iqr', 'min', 'max', 'spread'}; spread = (max - min) / median."""
    s = sorted(float(v) for v in samples)
    if not s:
        raise ValueError("no samples to summarize")
    if not all(math.isfinite(v) for v in s):
        raise ValueError("samples must be finite numbers")
    med = quantile(s, 0.5)
    q1, q3 = quantile(s, 0.25), quantile(s, 0.75)
    return {
        "n": len(s), "median": med, "q1": q1, "q3": q3, "iqr": q3 - q1, "min": s[0], "max": s[-1],
        "spread": (s[-1] - s[0]) / med if med else 0.0,
    }


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, or None when either is missing or the base is zero."""
    if value is None or base is None or base == 0:
        return None
    return value / base
