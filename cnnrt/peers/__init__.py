"""Peers for `cnnrt bench`: the runtimes a user would otherwise pick, running *our* model.

Each peer is a small adapter that builds the peer's own model from a cnnrt `Model` (that is, from
our exported bundle), so every runtime computes the same function on the same weights. Adapters
import their framework only inside their methods: `import cnnrt.peers` costs nothing and a peer
whose package is missing says so from `missing()` instead of failing.

The adapters are also the seed of real importers/exporters (Keras, ONNX, PyTorch, JAX).

Interface: a peer's `prepare(model)` returns `infer(x, batch_size) -> probabilities`, where `x` is
float32 NHWC already scaled (the same array for every runtime) and the result is (N, classes)
float32. Any layout change a runtime needs (NHWC -> NCHW) happens inside `infer`, so it is timed.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import shutil
from typing import Callable

Infer = Callable[["object", int], "object"]


class Peer:
    """One runtime. Subclasses set the class attributes and implement `prepare`."""

    name = "?"  # short id, used by --peers
    label = "?"  # what the table shows
    modules: tuple[str, ...] = ()  # import names that must be present
    distributions: tuple[str, ...] = ()  # installed distributions whose size (with dependencies) we count
    import_statement = "pass"  # what a user's program imports to run it (timed in a fresh process)
    install_hint = "pip install 'cnnrt[bench]'"
    device = "cpu"
    fresh_cache_env: str | None = None  # env variable naming an on-disk compile cache, emptied for a cold start

    def missing(self) -> str | None:
        """None when the peer can run here, else why not (without importing anything heavy)."""
        for m in self.modules:
            try:
                found = importlib.util.find_spec(m) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return f"{m} is not installed ({self.install_hint})"
        return None

    def version(self) -> str:
        for d in self.distributions:
            try:
                return f"{d} {importlib.metadata.version(d)}"
            except importlib.metadata.PackageNotFoundError:
                continue
        return "?"

    def installed_distribution(self) -> str | None:
        for d in self.distributions:
            try:
                importlib.metadata.distribution(d)
                return d
            except importlib.metadata.PackageNotFoundError:
                continue
        return None

    chain_only = True  # builds the framework's model from a layer chain (check_supported)

    def unsupported(self, model) -> str | None:
        """None when this peer can build `model` (a Graph or a Model), else why not."""
        return chain_only_note(model) if self.chain_only else None

    def prepare(self, model) -> Infer:
        raise NotImplementedError

    # Cold start in a fresh process: the parent writes whatever file a user would deploy
    # (`export`), the child imports the framework, loads that file and answers one image (`load`).
    def export(self, model, bundle: str, workdir: str) -> str:
        return bundle

    def load(self, artifact: str) -> Infer:
        from ..formats import load_model

        return self.prepare(load_model(artifact))


def batched(fn) -> Infer:
    """infer(x, bs) from a function of one batch."""
    import numpy as np

    def infer(x, batch_size: int):
        outs = [np.asarray(fn(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    return infer


def check_supported(model):
    """The layer chain of `model` (a Model, or a Graph that is one): what the chain adapters build
    from (Conv2D, MaxPool2D, Dense, Softmax, relu/none); a clear error for anything else."""
    from ..errors import FormatError
    from ..ir.chain import as_chain
    from ..model import Conv2D, Dense, MaxPool2D, Softmax

    model = as_chain(model, "this bench peer")
    for layer in model.layers:
        if not isinstance(layer, (Conv2D, MaxPool2D, Dense, Softmax)):
            raise FormatError(f"bench peers: layer {layer.name!r} ({layer.kind}) is not supported")
    return model


def chain_only_note(model) -> str | None:
    """Why a peer that builds its model from a layer chain cannot run `model` (None if it can)."""
    from ..ir.chain import match
    from ..ir.graph import Graph

    if not isinstance(model, Graph) or match(model) is not None:
        return None
    ops = sorted({n.op for n in model.nodes} - {"Conv", "MaxPool", "Dense", "Relu", "Softmax", "Flatten"})
    return (f"skipped: this peer builds its model from a layer chain (convolutions, max-pools, dense layers, ReLU, "
            f"softmax in sequence) and this graph is not one ({', '.join(ops) or 'branches'}); "
            f"cnnrt and onnxruntime run any graph")


def pads(n: int, k: int, s: int, padding: str) -> tuple[int, int]:
    from ..model import same_pads

    return same_pads(n, k, s) if padding == "same" else (0, 0)


def dense_weight_nchw(weight, in_shape):
    """A Dense weight whose inputs are in NHWC flatten order -> NCHW (C, H, W) flatten order."""
    if len(in_shape) != 3:
        return weight
    h, w, c = in_shape
    return weight.reshape(len(weight), h, w, c).transpose(0, 3, 1, 2).reshape(len(weight), -1)


class CnnrtPeer(Peer):
    """cnnrt itself: the baseline every ratio is taken against."""

    name = "cnnrt"
    label = "cnnrt numpy fp32"
    chain_only = False
    modules = ("numpy",)
    distributions = ("cnnrt",)
    import_statement = "import cnnrt.backends.numpy_backend"

    def __init__(self, backend: str = "numpy", precision: str = "fp32"):
        self.backend, self.precision = backend, precision
        self.label = f"cnnrt {backend} {precision}"

    def version(self) -> str:
        from .. import __version__

        return f"cnnrt {__version__}"

    def prepare(self, model) -> Infer:
        from .. import backends

        runner = backends.prepare(model, self.backend, self.precision)
        return lambda x, bs: runner.probabilities(x, batch_size=bs)


def _all() -> list[Peer]:
    from .jax_peer import JaxJit
    from .onnx_peer import OnnxRuntime
    from .tf_peer import KerasPredict, TfFunction
    from .torch_peer import TorchCompile, TorchEager

    return [KerasPredict(), TfFunction(), OnnxRuntime(), TorchEager(), TorchCompile(), JaxJit()]


def peers() -> list[Peer]:
    """Every peer cnnrt knows, installed or not (cnnrt itself not included)."""
    return _all()


def get(name: str) -> Peer:
    if name == "cnnrt":
        return CnnrtPeer()
    for p in _all():
        if p.name == name:
            return p
    from ..errors import CnnrtError

    raise CnnrtError(f"unknown peer {name!r} (known: cnnrt, {', '.join(p.name for p in _all())})")


def have_cxx() -> bool:
    return any(shutil.which(c) for c in ("c++", "g++", "clang++"))
