"""The CPU backend: NumPy only, fp32 arithmetic, fp32 or fp16 storage."""
from __future__ import annotations

import numpy as np

from ..model import Model
from . import reference
from .base import Runner

NAME = "numpy"
DEFAULT_PRECISION = "fp32"


def available() -> str | None:
    return None


class NumpyRunner(Runner):
    backend = NAME

    def _forward(self, x: np.ndarray) -> np.ndarray:
        return reference.forward(self.model, self.scaled(x), dtype=np.float32,
                                 fp16_storage=self.precision == "fp16")


def prepare(model: Model, precision: str = DEFAULT_PRECISION) -> Runner:
    return NumpyRunner(model, precision)
