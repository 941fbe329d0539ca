"""Shared fixtures. Tests use only the repository's own files (data/mnist, cnnrt/data), never ../shared."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import os

# The engine of a layer chain in fp32 is measured per machine (cnnrt/backends/chain_engine.py); the
# tests pin it to the planner (inherited by the commands they run), so that what they check does not
# depend on the machine. tests/test_chain_engine.py tests the measured choice itself.
os.environ.setdefault("CNNRT_CHAIN_ENGINE", "graph")

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "data" / "mnist"
SHIPPED = ROOT / "cnnrt" / "data" / "deep_mnist"  # the package data (models/deep_mnist links here)


def random_deep_mnist_params(rng: np.random.Generator, scale: float = 0.1) -> dict[str, np.ndarray]:
    """Random Deep MNIST tensors in the engine layout (conv OHWI, dense (out, in))."""
    shapes = {
        "conv1.weight": (32, 5, 5, 1), "conv1.bias": (32,),
        "conv2.weight": (64, 5, 5, 32), "conv2.bias": (64,),
        "fc1.weight": (1024, 3136), "fc1.bias": (1024,),
        "fc2.weight": (10, 1024), "fc2.bias": (10,),
    }
    return {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in shapes.items()}


@pytest.fixture
def rng(request) -> np.random.Generator:
    # fresh inputs on every run, but the seed is printed on failure so a failure can be replayed
    # (CNNRT_TEST_SEED=<seed> replays it)
    env = os.environ.get("CNNRT_TEST_SEED", "")
    seed = int(env) if env.isdigit() else int(np.random.SeedSequence().entropy % (2**32))
    request.node.user_properties.append(("seed", seed))
    print(f"random seed: {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def mnist_test():
    from cnnrt.idx import load_mnist

    return load_mnist(MNIST / "t10k-images-idx3-ubyte.gz", MNIST / "t10k-labels-idx1-ubyte.gz")


@pytest.fixture
def random_model(rng):
    from cnnrt.model import deep_mnist

    return deep_mnist(random_deep_mnist_params(rng), name="random")
