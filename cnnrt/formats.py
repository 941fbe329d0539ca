"""Model files: the article's 8 raw float32 tensors, and our own one-file bundle.

Article format: a directory holding W_conv1 b_conv1 W_conv2 b_conv2 W_fc1 b_fc1 W_fc2 b_fc2, raw
little-endian float32 in C order, weights as [out][kh][kw][in] (W_fc1 as [1024][7][7][64], W_fc2 as
[10][1][1][1024]). It has no header, so the byte count is the only check there is, and it is exact.

Bundle: one safetensors file (tensors in the engine layout) whose metadata holds, under the key
"cnnrt", a JSON description with a format version. Version 2 (written now) describes a graph
(cnnrt.ir.serialize); version 1 (a plain list of layers) still loads. A reader refuses a newer
version. Every loader returns a `cnnrt.ir.Graph`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import FormatError
from .ir import serialize
from .ir.chain import as_graph, match, to_graph
from .ir.graph import Graph
from .model import Conv2D, Dense, MaxPool2D, Model, Softmax, deep_mnist

BUNDLE_VERSION = 2
BUNDLE_KEY = "cnnrt"

# article file name -> (engine tensor name, shape in the article's file)
ARTICLE_TENSORS = {
    "W_conv1": ("conv1.weight", (32, 5, 5, 1)),
    "b_conv1": ("conv1.bias", (32,)),
    "W_conv2": ("conv2.weight", (64, 5, 5, 32)),
    "b_conv2": ("conv2.bias", (64,)),
    "W_fc1": ("fc1.weight", (1024, 7, 7, 64)),
    "b_fc1": ("fc1.bias", (1024,)),
    "W_fc2": ("fc2.weight", (10, 1, 1, 1024)),
    "b_fc2": ("fc2.bias", (10,)),
}


def load_model(path: str | os.PathLike):
    """A bundle file, a directory in the article's format, or another framework's file (.onnx,
    .keras, .h5) through its importer (cnnrt.importers, needing that framework's extra)."""
    path = Path(path)
    if path.is_dir():
        return load_article(path)
    if not path.exists():
        raise FormatError(f"{path}: no such model file or directory (expected a .safetensors bundle, an .onnx, "
                          f".keras or .h5 file, or a directory of the article's 8 raw tensors)")
    return _load_file(path)


def _load_file(path: Path):
    """Dispatch by suffix: importers for other frameworks' files, the bundle reader for the rest."""
    from . import importers

    if importers.importable(path):
        return importers.load_file(path)
    importers.check_suffix(path)
    return load_bundle(path)


# ---------------------------------------------------------------- article format

def load_article(directory: str | os.PathLike):
    directory = Path(directory)
    params = {}
    for fname, (key, shape) in ARTICLE_TENSORS.items():
        f = directory / fname
        if not f.is_file():
            raise FormatError(f"{f}: missing (an article-format model directory holds the 8 files "
                              f"{' '.join(ARTICLE_TENSORS)})")
        expected = 4 * int(np.prod(shape))
        size = f.stat().st_size
        if size != expected:
            raise FormatError(f"{f}: holds {size} bytes, expected {expected} "
                              f"({'x'.join(map(str, shape))} little-endian float32)")
        t = np.fromfile(f, dtype="<f4").astype(np.float32).reshape(shape)
        _check_finite(t, f)
        if key.startswith("fc") and key.endswith("weight"):
            t = t.reshape(shape[0], -1)
        params[key] = t
    return to_graph(deep_mnist(params, name=directory.name))


def save_article(model, directory: str | os.PathLike) -> None:
    """Write the 8 files. Only the article's own net fits this header-less format."""
    directory = Path(directory)
    chain = match(model) if isinstance(model, Graph) else model
    if chain is None:
        raise FormatError(f"model {model.name!r} is not the article's Deep MNIST net (the raw format stores only "
                          f"its 8 tensors, so any other net would come back wrong); save it as a bundle instead")
    model = chain
    params = model.params()
    sizes_fit = all(key in params and params[key].size == int(np.prod(shape)) for key, shape in ARTICLE_TENSORS.values())
    if not sizes_fit or _describe(deep_mnist({k: params[k] for k, _ in ARTICLE_TENSORS.values()})) != _describe(model):
        raise FormatError(f"model {model.name!r} is not the article's Deep MNIST net (the raw format stores only "
                          f"its 8 tensors, so any other net would come back wrong); save it as a bundle instead")
    directory.mkdir(parents=True, exist_ok=True)
    for fname, (key, shape) in ARTICLE_TENSORS.items():
        np.ascontiguousarray(params[key], dtype="<f4").reshape(shape).tofile(directory / fname)


# ---------------------------------------------------------------- bundle

def _layer_json(layer) -> dict:
    d = {"type": layer.kind, "name": layer.name}
    if isinstance(layer, Conv2D):
        d.update(stride=layer.stride, padding=layer.padding, activation=layer.activation)
    elif isinstance(layer, MaxPool2D):
        d.update(size=layer.size, stride=layer.stride, padding=layer.padding)
    elif isinstance(layer, Dense):
        d.update(activation=layer.activation)
    return d


def _describe(model: Model) -> tuple:
    """Everything but the weights: what a header-less format must take on trust."""
    return (model.input_shape, model.input_scale, [_layer_json(layer) for layer in model.layers])


def save_bundle(model, path: str | os.PathLike) -> None:
    """Write a version-2 bundle (a Graph, or a layer-chain Model turned into one)."""
    from safetensors.numpy import save_file

    g = as_graph(model)
    desc = {"format": "cnnrt", "version": BUNDLE_VERSION, "name": g.name, **serialize.to_json(g), "meta": g.meta}
    tensors = {k: np.ascontiguousarray(v) for k, v in g.params.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={BUNDLE_KEY: json.dumps(desc)})


def load_bundle(path: str | os.PathLike):
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="np") as f:
            raw = (f.metadata() or {}).get(BUNDLE_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"{path}: not a readable safetensors bundle ({e})") from None
    if raw is None:
        raise FormatError(f"{path}: a safetensors file without cnnrt's '{BUNDLE_KEY}' metadata "
                          f"(not a cnnrt bundle; use an importer for other frameworks' files)")
    try:
        desc = json.loads(raw)
        version = int(desc["version"])
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"{path}: the '{BUNDLE_KEY}' metadata is not a valid cnnrt description ({e})") from None
    if version > BUNDLE_VERSION:
        raise FormatError(f"{path}: bundle format version {version} is newer than this cnnrt reads "
                          f"(version {BUNDLE_VERSION}); upgrade cnnrt")
    if version < 1:
        raise FormatError(f"{path}: bad bundle format version {version}")
    if desc.get("format", "cnnrt") != "cnnrt":
        raise FormatError(f"{path}: metadata format {desc.get('format')!r} is not 'cnnrt'")
    if version == 2:
        meta = desc.get("meta", {})
        name = desc.get("name", path.stem)
        if not isinstance(meta, dict) or not isinstance(name, str):
            raise FormatError(f"{path}: 'name' must be a string and 'meta' an object")
        for k, t in tensors.items():
            if t.dtype not in (np.float32, np.int64):
                raise FormatError(f"{path}: tensor {k!r} is {t.dtype}, expected float32 or int64")
        return serialize.from_json(desc, tensors, str(path), name=name, meta=meta)

    used = set()

    def tensor(name: str) -> np.ndarray:
        if name not in tensors:
            raise FormatError(f"{path}: tensor {name!r} is missing")
        used.add(name)
        t = tensors[name]
        if t.dtype != np.float32:
            raise FormatError(f"{path}: tensor {name!r} is {t.dtype}, expected float32")
        _check_finite(t, f"{path}: tensor {name!r}")
        return t

    layers = []
    try:
        for d in desc["layers"]:
            kind, name = d["type"], d["name"]
            if kind == "conv2d":
                layers.append(Conv2D(name, tensor(f"{name}.weight"), tensor(f"{name}.bias"),
                                     stride=int(d.get("stride", 1)), padding=d.get("padding", "same"),
                                     activation=d.get("activation", "none")))
            elif kind == "maxpool2d":
                layers.append(MaxPool2D(name, size=int(d.get("size", 2)), stride=int(d.get("stride", 2)),
                                        padding=d.get("padding", "same")))
            elif kind == "dense":
                layers.append(Dense(name, tensor(f"{name}.weight"), tensor(f"{name}.bias"),
                                    activation=d.get("activation", "none")))
            elif kind == "softmax":
                layers.append(Softmax(name))
            else:
                raise FormatError(f"{path}: layer {name!r} has unknown type {kind!r}")
        inp = desc["input"]
        extra = set(tensors) - used
        if extra:
            raise FormatError(f"{path}: tensors {sorted(extra)} are not used by any layer")
        model = Model(input_shape=tuple(inp["shape"]), input_scale=float(inp.get("scale", 1.0)),
                      layers=layers, name=desc.get("name", path.stem), meta=desc.get("meta", {}))
        model = to_graph(model)
    except (KeyError, TypeError) as e:
        raise FormatError(f"{path}: incomplete layer description (missing {e})") from None
    except FormatError as e:
        msg = str(e)
        raise FormatError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    return model


def _check_finite(t: np.ndarray, where) -> None:
    bad = ~np.isfinite(t)
    if bad.any():
        idx = tuple(int(v) for v in np.argwhere(bad)[0])
        raise FormatError(f"{where}: holds {int(bad.sum())} NaN or Inf values (first at index {idx})")
