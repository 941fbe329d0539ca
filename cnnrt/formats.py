"""Model files: the article's 8 raw float32 tensors, and our own one-file bundle.

Article format: a directory holding W_conv1 b_conv1 W_conv2 b_conv2 W_fc1 b_fc1 W_fc2 b_fc2, raw
little-endian float32 in C order, weights as [out][kh][kw][in] (W_fc1 as [1024][7][7][64], W_fc2 as
[10][1][1][1024]). It has no header, so the byte count is the only check there is, and it is exact.
cnnrt writes a sidecar `cnnrt.json` beside them (name, provenance, class names) and reads it back
when present; a directory of the 8 files alone still loads.

Bundle: one safetensors file (tensors in the engine layout) whose metadata holds, under the key
"cnnrt", a JSON description with a format version. Version 2 (written now) describes a graph
(cnnrt.ir.serialize); version 1 (a plain list of layers) still loads. A reader refuses a newer
version. Every loader returns a `cnnrt.ir.Graph`.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np

from .errors import FormatError
from .ir import serialize
from .ir.chain import as_graph, match, to_graph
from .ir.graph import Graph
from .fileio import StagedDir, atomic_write
from .model import Conv2D, Dense, MaxPool2D, Model, Softmax, deep_mnist

BUNDLE_VERSION = 2
BUNDLE_KEY = "cnnrt"
MAX_JSON_DEPTH = 64  # a description nests 5 levels; far deeper is damage (and would exhaust the stack)

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
# beside the 8 files: what the raw format has no place for (name, provenance, class names)
ARTICLE_SIDECAR = "cnnrt.json"
SIDECAR_FORMAT, SIDECAR_VERSION = "cnnrt-article", 1
MAX_SIDECAR_BYTES = 1 << 20  # a training run's provenance is a few hundred bytes


def load_model(path: str | os.PathLike):
    """A bundle file, a directory in the article's format, or another framework's file (.onnx,
    .keras, .h5) through its importer (cnnrt.importers, needing that framework's extra)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FormatError(f"{path}: no such model file or directory (expected a .safetensors bundle, an .onnx, "
                          f".keras or .h5 file, or a directory of the article's 8 raw tensors)") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot open the model ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        if not any(os.path.lexists(path / n) for n in (*ARTICLE_TENSORS, ARTICLE_SIDECAR)):
            raise FormatError(f"{path}: a directory that is not a model: not a cnnrt bundle (.safetensors), an ONNX or "
                              f"Keras file (.onnx, .keras, .h5), nor an article-format directory (none of the 8 "
                              f"raw files {' '.join(ARTICLE_TENSORS)} is in it)")
        return load_article(path)
    return _load_file(path)


def _load_file(path: Path):
    """Dispatch by suffix: importers for other frameworks' files, the bundle reader for the rest."""
    from . import importers

    if importers.importable(path):
        return importers.load_file(path)
    importers.check_suffix(path)
    return load_bundle(path)


# ---------------------------------------------------------------- article format

def article_model_name(directory: Path) -> str:
    """The raw format stores no name: the directory's, or its parent's for `NAME/article/` (the
    layout `cnnrt train` writes)."""
    d = directory.resolve()
    return d.parent.name if d.name == "article" and d.parent.name else d.name


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
        try:
            t = np.fromfile(f, dtype="<f4").astype(np.float32).reshape(shape)
        except OSError as e:
            raise FormatError(f"{f}: cannot read ({e.strerror or e})") from None
        _check_finite(t, f)
        if key.startswith("fc") and key.endswith("weight"):
            t = t.reshape(shape[0], -1)
        params[key] = t
    g = to_graph(deep_mnist(params, name=article_model_name(directory)))
    side = read_sidecar(directory)
    if side is not None:
        g.name, g.meta = side.get("name", g.name), side.get("meta", {})
        if side.get("labels") is not None:
            if len(side["labels"]) != g.num_classes:
                raise FormatError(f"{directory / ARTICLE_SIDECAR}: {len(side['labels'])} labels for the net's "
                                  f"{g.num_classes} classes")
            g.labels = side["labels"]
    return g


def read_sidecar(directory: Path) -> dict | None:
    """The article directory's cnnrt.json (None when there is none), every field checked: the
    raw files carry no header, so this is all that names the model and says where it came from."""
    f = directory / ARTICLE_SIDECAR
    if not os.path.lexists(f):
        return None
    try:
        if f.is_dir():
            raise FormatError(f"{f}: is a directory (expected the JSON file cnnrt writes beside the 8 raw files)")
        size = f.stat().st_size
        if size > MAX_SIDECAR_BYTES:
            raise FormatError(f"{f}: holds {size} bytes, far more than a name and provenance take "
                              f"(at most {MAX_SIDECAR_BYTES})")
        raw = f.read_bytes()
    except OSError as e:
        raise FormatError(f"{f}: cannot read ({e.strerror or e})") from None
    try:
        try:
            d = json.loads(raw.decode("utf-8"))
        except RecursionError:
            raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
        if _json_depth(d) > MAX_JSON_DEPTH:
            raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{f}: not valid JSON ({e}); expected the object cnnrt writes beside the article's "
                          f"8 raw files (delete it to load the raw files alone)") from None
    if not isinstance(d, dict):
        raise FormatError(f"{f}: expected a JSON object, got {type(d).__name__}")
    if d.get("format") != SIDECAR_FORMAT:
        raise FormatError(f"{f}: 'format' must be {json.dumps(SIDECAR_FORMAT)}, got {json.dumps(d.get('format'))}")
    version = d.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError(f"{f}: 'version' must be a whole number from 1, got {json.dumps(version)}")
    if version > SIDECAR_VERSION:
        raise FormatError(f"{f}: version {version} is newer than this cnnrt reads (version {SIDECAR_VERSION}); "
                          f"upgrade cnnrt")
    if "name" in d and not (isinstance(d["name"], str) and d["name"]):
        raise FormatError(f"{f}: 'name' must be a non-empty string, got {json.dumps(d['name'])}")
    if not isinstance(d.get("meta", {}), dict):
        raise FormatError(f"{f}: 'meta' must be an object, got {json.dumps(d['meta'])}")
    labels = d.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise FormatError(f"{f}: 'labels' must be a list of strings")
    return d


def save_article(model, directory: str | os.PathLike, overwrite: bool = True) -> None:
    """Write the 8 files. Only the article's own net fits this header-less format (a Graph that
    is that chain, or the chain itself).

    The files are written in a temporary directory beside `directory` and moved in when all 8
    are complete; other files in `directory` are kept. With overwrite=False, existing files of
    those names are refused. The format has no place for the model's name, provenance (meta) and
    class names: they go in the sidecar cnnrt.json, written with the 8 files (and always, so that
    no older model's sidecar is left beside new weights)."""
    directory = Path(directory)
    side = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "meta": dict(model.meta or {})}
    if model.name:
        side["name"] = model.name
    labels = getattr(model, "labels", None) or (model.meta or {}).get("labels")
    if labels:
        side["labels"] = list(labels)
    chain = match(model) if isinstance(model, Graph) else model
    if chain is None:
        raise FormatError(f"model {model.name!r} is not the article's Deep MNIST net (the raw format stores only "
                          f"its 8 tensors, so any other net would come back wrong); save it as a bundle instead")
    model = chain
    params = model.params()
    sizes_fit = all(key in params and params[key].size == int(np.prod(shape)) for key, shape in ARTICLE_TENSORS.values())
    if not sizes_fit or _describe(deep_mnist({k: params[k] for k, _ in ARTICLE_TENSORS.values()}), names=False) \
            != _describe(model, names=False):
        raise FormatError(f"model {model.name!r} is not the article's Deep MNIST net (the raw format stores only "
                          f"its 8 tensors, so any other net would come back wrong); save it as a bundle instead")
    with StagedDir(directory, overwrite=overwrite) as staged:
        staged.check([*ARTICLE_TENSORS, ARTICLE_SIDECAR])
        for fname, (key, shape) in ARTICLE_TENSORS.items():
            np.ascontiguousarray(params[key], dtype="<f4").reshape(shape).tofile(staged.path / fname)
        (staged.path / ARTICLE_SIDECAR).write_text(json.dumps(side, indent=1) + "\n", encoding="utf-8")
        staged.commit()


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


def _describe(model: Model, names: bool = True) -> tuple:
    """Everything but the weights: what a header-less format must take on trust. Layer names
    (which the raw format does not store; tensors are matched by the parameter keys) optional."""
    layers = [_layer_json(layer) for layer in model.layers]
    if not names:
        layers = [{k: v for k, v in d.items() if k != "name"} for d in layers]
    return (model.input_shape, model.input_scale, layers)


def save_bundle(model, path: str | os.PathLike, overwrite: bool = True) -> None:
    """Write a version-2 bundle (a Graph, or a layer-chain Model turned into one) atomically (a
    temporary file beside `path`, then one rename), with the umask's mode. With overwrite=False
    an existing `path` is refused."""
    from safetensors.numpy import save_file

    g = as_graph(model)
    desc = {"format": "cnnrt", "version": BUNDLE_VERSION, "name": g.name, **serialize.to_json(g), "meta": g.meta}
    tensors = {k: np.ascontiguousarray(v) for k, v in g.params.items()}
    with atomic_write(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={BUNDLE_KEY: json.dumps(desc)})


def _field(d: dict, key: str, kind, default, where: str):
    """One metadata value, of the JSON type the format says (never coerced from a string)."""
    if key not in d and default is None:
        raise FormatError(f"{where}: missing '{key}'")
    v = d.get(key, default)
    ok = isinstance(v, kind) and not isinstance(v, bool)
    if kind is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    if not ok:
        want = {int: "a whole number", float: "a number", str: "a string", dict: "an object", list: "a list"}[kind]
        raise FormatError(f"{where}: '{key}' must be {want}, got {json.dumps(v)}")
    return float(v) if kind is float else v


def load_bundle(path: str | os.PathLike):
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with open(path, "rb") as probe:  # the OS's own reason (permission, a directory) before the parser's
            probe.read(1)
    except OSError as e:
        raise FormatError(f"{path}: cannot read the model file ({e.strerror or e})") from None
    try:
        with safe_open(str(path), framework="np") as f:
            raw = (f.metadata() or {}).get(BUNDLE_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"{path}: not a readable safetensors bundle ({e})") from None
    if raw is None:
        raise FormatError(f"{path}: a safetensors file without cnnrt's '{BUNDLE_KEY}' metadata "
                          f"(not a cnnrt bundle; use an importer for other frameworks' files)")
    meta_where = f"{path}: the '{BUNDLE_KEY}' metadata"
    try:
        try:
            desc = json.loads(raw)
        except RecursionError:
            raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
        if _json_depth(desc) > MAX_JSON_DEPTH:  # the readers below recurse into lists (attributes)
            raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
        if not isinstance(desc, dict):
            raise ValueError(f"expected a JSON object, got {type(desc).__name__}")
        version = desc["version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"'version' must be a whole number, got {json.dumps(version)}")
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"{meta_where} is not a valid cnnrt description ({e})") from None
    if version > BUNDLE_VERSION:
        raise FormatError(f"{path}: bundle format version {version} is newer than this cnnrt reads "
                          f"(version {BUNDLE_VERSION}); upgrade cnnrt")
    if version < 1:
        raise FormatError(f"{path}: bad bundle format version {version}")
    if desc.get("format", "cnnrt") != "cnnrt":
        raise FormatError(f"{meta_where}: unknown format {json.dumps(desc.get('format'))} (expected \"cnnrt\")")
    if version == 2:
        meta = desc.get("meta", {})
        name = desc.get("name", path.stem)
        if not isinstance(meta, dict) or not isinstance(name, str):
            raise FormatError(f"{meta_where}: 'name' must be a string and 'meta' an object")
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
        for i, d in enumerate(_field(desc, "layers", list, None, meta_where)):
            if not isinstance(d, dict):
                raise FormatError(f"{meta_where}: layer {i} must be an object, got {json.dumps(d)}")
            kind = _field(d, "type", str, None, f"{meta_where}, layer {i}")
            name = _field(d, "name", str, None, f"{meta_where}, layer {i}")
            where = f"{meta_where}, layer {name!r}"
            if kind == "conv2d":
                layers.append(Conv2D(name, tensor(f"{name}.weight"), tensor(f"{name}.bias"),
                                     stride=_field(d, "stride", int, 1, where),
                                     padding=_field(d, "padding", str, "same", where),
                                     activation=_field(d, "activation", str, "none", where)))
            elif kind == "maxpool2d":
                layers.append(MaxPool2D(name, size=_field(d, "size", int, 2, where),
                                        stride=_field(d, "stride", int, 2, where),
                                        padding=_field(d, "padding", str, "same", where)))
            elif kind == "dense":
                layers.append(Dense(name, tensor(f"{name}.weight"), tensor(f"{name}.bias"),
                                    activation=_field(d, "activation", str, "none", where)))
            elif kind == "softmax":
                layers.append(Softmax(name))
            else:
                raise FormatError(f"{path}: layer {name!r} has unknown type {kind!r}")
        inp = _field(desc, "input", dict, None, meta_where)
        in_where = f"{meta_where}, input"
        shape = _field(inp, "shape", list, None, in_where)
        if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
            raise FormatError(f"{in_where}: 'shape' must be 3 whole numbers [H, W, C], got {json.dumps(shape)}")
        layout = _field(inp, "layout", str, "NHWC", in_where)
        if layout != "NHWC":
            raise FormatError(f"{in_where}: layout {layout!r} is not supported (cnnrt bundles hold NHWC models)")
        extra = set(tensors) - used
        if extra:
            raise FormatError(f"{path}: tensors {sorted(extra)} are not used by any layer")
        model = Model(input_shape=tuple(shape), input_scale=_field(inp, "scale", float, 1.0, in_where),
                      layers=layers, name=_field(desc, "name", str, path.stem, meta_where),
                      meta=_field(desc, "meta", dict, {}, meta_where))
        model = to_graph(model)
    except KeyError as e:
        raise FormatError(f"{path}: incomplete layer description (missing {e})") from None
    except FormatError as e:
        msg = str(e)
        raise FormatError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    return model


def _json_depth(v) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iteratively: no recursion limit)."""
    deepest, todo = 0, [(v, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            if d <= MAX_JSON_DEPTH:
                todo.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _check_finite(t: np.ndarray, where) -> None:
    bad = ~np.isfinite(t)
    if bad.any():
        idx = tuple(int(v) for v in np.argwhere(bad)[0])
        raise FormatError(f"{where}: holds {int(bad.sum())} NaN or Inf values (first at index {idx})")
