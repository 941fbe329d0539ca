"""The benchmark peers built from a graph (cnnrt.peers.graph_torch / graph_jax) compute what the
float64 reference computes: the GPU zoo bench compares cnnrt with them, so they must be right."""
from __future__ import annotations

import numpy as np
import pytest

from cnnrt.ir.graph import run_reference
from cnnrt.testing import graphs as TG

GRAPHS = {"awkward_convs": lambda: TG.awkward_convs(1), "awkward_ops": lambda: TG.awkward_ops(2),
          "resnet20": lambda: TG.resnet20(3), "mobilenet_v3_small": lambda: TG.mobilenet_v3_small(4, size=48, classes=10),
          "lenet5": lambda: TG.lenet5(5)}


def reference(g, x):
    pp = g.preprocess
    xf = x.astype(np.float64) * pp["scale"]
    if pp.get("mean") is not None:
        xf = (xf - np.asarray(pp["mean"])) / np.asarray(pp["std"])
    return run_reference(g, {"images": xf})[g.outputs[0]]


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_torch_peer(rng, name):
    torch = pytest.importorskip("torch")
    from cnnrt.peers.graph_torch import to_torch

    g = GRAPHS[name]()
    if name == "awkward_ops":
        pytest.skip("asymmetric average-pool pads are not in the torch peer (no zoo model has them)")
    x = rng.integers(0, 256, (3,) + g.input_shape, dtype=np.uint8)
    out = to_torch(g, torch.float64)(torch.from_numpy(x)).detach().numpy()
    ref = reference(g, x)
    # BatchNormalization is folded in float32 (as cnnrt does): errors of float32 rounding
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_jax_peer(rng, name):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from cnnrt.peers.graph_jax import to_jax

    g = GRAPHS[name]()
    x = rng.integers(0, 256, (3,) + g.input_shape, dtype=np.uint8)
    out = np.asarray(jax.jit(to_jax(g, "float64"))(x))
    assert np.abs(out - reference(g, x)).max() / np.abs(reference(g, x)).max() < 1e-5


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_torch_peer_is_one_graph_for_torch_compile(name):
    # the zoo bench times torch.compile on this module: a graph break (once, a NumPy reduction in a
    # shape rule) made dynamo compile each op's frame apart until its recompile limit, then run the
    # net eagerly, so "torch.compile" timed slower than eager
    torch = pytest.importorskip("torch")
    from cnnrt.peers.graph_torch import to_torch

    g = GRAPHS[name]()
    net = to_torch(g, torch.float32, "cpu").eval()
    x = torch.zeros((2,) + tuple(g.input_shape), dtype=torch.uint8)
    torch._dynamo.reset()
    with torch.no_grad():
        ex = torch._dynamo.explain(net)(x)
    assert (ex.graph_count, ex.graph_break_count) == (1, 0), [b.reason.splitlines()[0] for b in ex.break_reasons]
