"""Keras (TensorFlow) models -> cnnrt Model. Needs the extra `cnnrt[tensorflow]`.

Handles the layers small CNNs are made of: Conv2D, MaxPooling2D, Flatten, Dense, Dropout (dropped:
inference only), ReLU/Softmax activations. Keras already computes in NHWC and flattens in HWC
order, so only the kernels move: Conv2D (kh, kw, in, out) -> (out, kh, kw, in), Dense (in, out) ->
(out, in).
"""
from __future__ import annotations

import numpy as np

from ..errors import FormatError
from ..model import Conv2D, Dense, MaxPool2D, Model, Softmax


def _activation(layer) -> str:
    act = getattr(layer, "activation", None)
    name = getattr(act, "__name__", str(act)) if act is not None else "linear"
    return {"relu": "relu", "linear": "none", "softmax": "softmax"}.get(name, name)


def from_keras(km, name: str | None = None, input_scale: float = 1.0 / 255.0, meta: dict | None = None) -> Model:
    """Convert a built Keras model whose layers run in sequence."""
    shape = tuple(int(v) for v in km.input_shape[1:])
    if len(shape) == 2:
        shape = shape + (1,)
    layers = []
    for kl in km.layers:
        cls = type(kl).__name__
        where = f"Keras layer {kl.name!r} ({cls})"
        act = _activation(kl)
        if cls in ("InputLayer", "Dropout", "Flatten", "Reshape"):
            if cls == "Reshape" and tuple(kl.target_shape)[:2] != shape[:2]:
                raise FormatError(f"{where}: only a reshape that adds the channel axis is supported")
            continue
        if cls == "Conv2D":
            if kl.data_format != "channels_last" or tuple(kl.dilation_rate) != (1, 1) or kl.groups != 1:
                raise FormatError(f"{where}: only channels_last, undilated, ungrouped convolutions are supported")
            if kl.strides[0] != kl.strides[1]:
                raise FormatError(f"{where}: unequal strides {kl.strides} are not supported")
            w, *b = kl.get_weights()
            b = b[0] if b else np.zeros(w.shape[-1], np.float32)
            layers.append(Conv2D(kl.name, np.ascontiguousarray(w.transpose(3, 0, 1, 2)), b,
                                 stride=int(kl.strides[0]), padding=kl.padding,
                                 activation="none" if act == "softmax" else act))
        elif cls == "MaxPooling2D":
            if kl.pool_size[0] != kl.pool_size[1] or kl.strides[0] != kl.strides[1]:
                raise FormatError(f"{where}: only square pools with equal strides are supported")
            layers.append(MaxPool2D(kl.name, size=int(kl.pool_size[0]), stride=int(kl.strides[0]), padding=kl.padding))
            continue
        elif cls == "Dense":
            w, *b = kl.get_weights()
            b = b[0] if b else np.zeros(w.shape[-1], np.float32)
            layers.append(Dense(kl.name, np.ascontiguousarray(w.T), b, activation="none" if act == "softmax" else act))
        elif cls == "Softmax":
            act = "softmax"
        elif cls in ("Activation", "ReLU"):
            if cls == "ReLU" or act != "softmax":
                raise FormatError(f"{where}: a separate {act} layer is not supported; fuse it into the layer before")
        else:
            raise FormatError(f"{where}: layer type not supported by cnnrt")
        if act == "softmax":  # a Softmax layer keeps its name; one fused into a Dense gets a suffix
            layers.append(Softmax(kl.name if cls in ("Softmax", "Activation") else f"{kl.name}_softmax"))
        elif act not in ("relu", "none"):
            raise FormatError(f"{where}: activation {act!r} not supported")
    return Model(input_shape=shape, layers=layers, input_scale=input_scale,
                 name=name or km.name, meta=meta or {})
