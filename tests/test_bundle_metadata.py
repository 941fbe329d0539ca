"""Bundle metadata values of the wrong type or meaning are refused with a FormatError naming the
file and the field, never coerced (int("2x2") traceback) and never silently accepted (NCHW)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cnnrt.errors import FormatError
from cnnrt.formats import load_model


def _desc_and_tensors(tmp_path, model):
    """A version-1 bundle's description (a list of layers), as earlier cnnrt wrote them; version 2's
    graph descriptions are checked in test_ir.py."""
    from cnnrt.formats import _layer_json

    desc = {"format": "cnnrt", "version": 1, "name": model.name,
            "input": {"shape": list(model.input_shape), "scale": model.input_scale, "layout": "NHWC"},
            "layers": [_layer_json(layer) for layer in model.layers], "meta": model.meta}
    return desc, dict(model.params())


def _write(tmp_path, tensors, desc):
    from safetensors.numpy import save_file

    p = tmp_path / "bad.safetensors"
    save_file(tensors, str(p), metadata={"cnnrt": json.dumps(desc)})
    return p


def _layer(desc, kind):
    return next(d for d in desc["layers"] if d["type"] == kind)


CASES = [
    ("scale abc", lambda d: d["input"].__setitem__("scale", "abc"), r"input: 'scale' must be a number, got \"abc\""),
    ("pool size 2x2", lambda d: _layer(d, "maxpool2d").__setitem__("size", "2x2"),
     r"layer 'pool1': 'size' must be a whole number, got \"2x2\""),
    ("pool stride 2.5", lambda d: _layer(d, "maxpool2d").__setitem__("stride", 2.5),
     r"layer 'pool1': 'stride' must be a whole number, got 2.5"),
    ("conv stride string", lambda d: _layer(d, "conv2d").__setitem__("stride", "1"),
     r"layer 'conv1': 'stride' must be a whole number, got \"1\""),
    ("NCHW", lambda d: d["input"].__setitem__("layout", "NCHW"), r"layout 'NCHW' is not supported"),
    ("unknown format", lambda d: d.__setitem__("format", "onnx"), r"unknown format \"onnx\""),
    ("shape of strings", lambda d: d["input"].__setitem__("shape", ["28", 28, 1]), r"'shape' must be 3 whole numbers"),
    ("version string", lambda d: d.__setitem__("version", "1"), r"'version' must be a whole number"),
    ("layers not a list", lambda d: d.__setitem__("layers", {"a": 1}), r"'layers' must be a list"),
    ("meta not an object", lambda d: d.__setitem__("meta", [1]), r"'meta' must be an object"),
    ("activation number", lambda d: _layer(d, "dense").__setitem__("activation", 3), r"'activation' must be a string"),
    ("no input", lambda d: d.pop("input"), r"missing 'input'"),
]


@pytest.mark.parametrize("what,edit,message", CASES, ids=[c[0] for c in CASES])
def test_bad_metadata_value_is_a_format_error(tmp_path, random_model, what, edit, message):
    desc, tensors = _desc_and_tensors(tmp_path, random_model)
    edit(desc)
    p = _write(tmp_path, tensors, desc)
    with pytest.raises(FormatError, match=message) as e:
        load_model(p)
    assert str(e.value).startswith(str(p))


def test_the_untouched_description_still_loads(tmp_path, random_model):
    """The control for the cases above: the same helper without an edit gives the same model."""
    desc, tensors = _desc_and_tensors(tmp_path, random_model)
    m = load_model(_write(tmp_path, tensors, desc))
    assert m.input_shape == (28, 28, 1) and m.name == "random"
    np.testing.assert_array_equal(m.params["fc1.weight"], random_model.params()["fc1.weight"])
