"""Real architectures nobody here wrote, as ONNX graphs with their weights regenerated from a seed.

The files in `zoo/` were exported by PyTorch from torchvision's constructors (random weights,
nothing downloaded; see benchmarks/export_zoo.py and zoo/index.json for versions). Float
initializers of more than 16 values were stripped to their dims plus the mean and std of the
exported tensor ("cnnrt-stripped {...}" in the doc_string); `load` refills them from a seeded
normal draw with those statistics, so every test sees the same well-scaled random network.
BatchNormalization variances are drawn as |x| so they stay positive. Needs the `onnx` package.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from ..errors import FormatError

ZOO_DIR = Path(__file__).with_name("zoo")
_TAG = "cnnrt-stripped "


def names() -> list[str]:
    """The models in the zoo, smallest input first as listed in index.json."""
    return list(json.loads((ZOO_DIR / "index.json").read_text()))


def info(name: str) -> dict:
    """index.json's entry: NCHW input shape of the export, parameter count, exporter, opset, ops, versions."""
    idx = json.loads((ZOO_DIR / "index.json").read_text())
    if name not in idx:
        raise FormatError(f"{ZOO_DIR}: no zoo model {name!r} (have {', '.join(idx)})")
    return idx[name]


def path(name: str) -> Path:
    info(name)
    return ZOO_DIR / f"{name}.onnx"


def load(name: str, seed: int = 0):
    """The zoo model `name` as an onnx.ModelProto with every stripped initializer refilled."""
    import onnx  # noqa: PLC0415
    from onnx import numpy_helper  # noqa: PLC0415

    m = onnx.load(str(path(name)))
    positive = {n.input[4] for n in m.graph.node if n.op_type == "BatchNormalization" and len(n.input) > 4}
    for t in m.graph.initializer:
        if not t.doc_string.startswith(_TAG):
            continue
        st = json.loads(t.doc_string[len(_TAG):])
        rng = np.random.default_rng([seed, zlib.crc32(t.name.encode())])
        a = rng.standard_normal(list(t.dims)) * st["std"] + st["mean"]
        if t.name in positive:
            a = np.abs(a) + 1e-3
        t.CopyFrom(numpy_helper.from_array(a.astype(st.get("dtype", "float32")), t.name))
    return m
