"""The in-memory model: a plain list of layers with float32 weights in the engine's layout.

One layout everywhere inside the engine: activations NHWC, convolution weights [out][kh][kw][in]
(the article's GPU layout), dense weights [out][in] with `in` in NHWC flatten order. Importers
permute into this layout; backends may re-pack it once when they prepare a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import FormatError

ACTIVATIONS = ("relu", "none")


@dataclass
class Conv2D:
    name: str
    weight: np.ndarray  # (out, kh, kw, in)
    bias: np.ndarray  # (out,)
    stride: int = 1
    padding: str = "same"
    activation: str = "relu"
    kind = "conv2d"


@dataclass
class MaxPool2D:
    name: str
    size: int = 2
    stride: int = 2
    padding: str = "same"
    kind = "maxpool2d"


@dataclass
class Dense:
    name: str
    weight: np.ndarray  # (out, in), `in` in NHWC flatten order
    bias: np.ndarray  # (out,)
    activation: str = "relu"
    kind = "dense"


@dataclass
class Softmax:
    name: str = "softmax"
    kind = "softmax"


Layer = Conv2D | MaxPool2D | Dense | Softmax


def out_size(n: int, k: int, s: int, padding: str) -> int:
    """Spatial output size with TensorFlow's SAME/VALID rules."""
    return -(-n // s) if padding == "same" else (n - k) // s + 1


def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's SAME padding: the odd pixel goes after (bottom/right)."""
    total = max((out_size(n, k, s, "same") - 1) * s + k - n, 0)
    return total // 2, total - total // 2


@dataclass
class Model:
    input_shape: tuple[int, int, int]  # (H, W, C) of one image
    layers: list[Layer]
    input_scale: float = 1.0 / 255.0  # uint8 pixels are multiplied by this
    name: str = "model"
    meta: dict = field(default_factory=dict)  # free-form provenance (training command, accuracy, ...)

    def __post_init__(self):
        self.input_shape = tuple(int(v) for v in self.input_shape)
        self.shapes = self.validate()

    @property
    def num_classes(self) -> int:
        return self.shapes[-1][-1]

    def params(self) -> dict[str, np.ndarray]:
        """All weight tensors by their bundle name ('conv1.weight', ...)."""
        out = {}
        for layer in self.layers:
            if isinstance(layer, (Conv2D, Dense)):
                out[f"{layer.name}.weight"] = layer.weight
                out[f"{layer.name}.bias"] = layer.bias
        return out

    def flops_per_image(self) -> int:
        """Multiply-adds counted as 2 FLOPs, for conv and dense layers."""
        total = 0
        for layer, nxt in zip(self.layers, self.shapes[1:]):
            if isinstance(layer, Conv2D):
                o, kh, kw, i = layer.weight.shape
                total += 2 * nxt[0] * nxt[1] * o * kh * kw * i
            elif isinstance(layer, Dense):
                total += 2 * layer.weight.size
        return total

    def validate(self) -> list[tuple[int, ...]]:
        """Check every tensor's shape, dtype and values; return the activation shape after each layer."""
        shape: tuple[int, ...] = self.input_shape
        if len(shape) != 3 or min(shape) < 1:
            raise FormatError(f"model {self.name!r}: input shape must be (H, W, C) with positive sizes, got {shape}")
        if not (np.isfinite(self.input_scale) and self.input_scale > 0):
            raise FormatError(f"model {self.name!r}: input scale must be a positive number, got {self.input_scale}")
        shapes = [shape]
        names = set()
        for layer in self.layers:
            where = f"model {self.name!r}, layer {layer.name!r} ({layer.kind})"
            if layer.name in names:
                raise FormatError(f"{where}: duplicate layer name")
            names.add(layer.name)
            if isinstance(layer, (Conv2D, Dense)):
                for what in ("weight", "bias"):
                    t = getattr(layer, what)
                    if not isinstance(t, np.ndarray) or t.dtype != np.float32:
                        t = np.asarray(t, dtype=np.float32)
                        setattr(layer, what, t)
                    bad = ~np.isfinite(t)
                    if bad.any():
                        idx = tuple(int(v) for v in np.argwhere(bad)[0])
                        raise FormatError(
                            f"{where}: {what} holds {int(bad.sum())} NaN or Inf values (first at index {idx})"
                        )
                if layer.activation not in ACTIVATIONS:
                    raise FormatError(f"{where}: unknown activation {layer.activation!r} (expected one of {ACTIVATIONS})")
            if isinstance(layer, Conv2D):
                if len(shape) != 3:
                    raise FormatError(f"{where}: needs an (H, W, C) input, got {shape}")
                if layer.weight.ndim != 4 or layer.weight.shape[3] != shape[2]:
                    raise FormatError(f"{where}: weight must be (out, kh, kw, {shape[2]}), got {layer.weight.shape}")
                o, kh, kw, _ = layer.weight.shape
                if layer.bias.shape != (o,):
                    raise FormatError(f"{where}: bias must be ({o},), got {layer.bias.shape}")
                if layer.padding not in ("same", "valid") or layer.stride < 1:
                    raise FormatError(f"{where}: unsupported padding {layer.padding!r} / stride {layer.stride}")
                shape = (out_size(shape[0], kh, layer.stride, layer.padding),
                         out_size(shape[1], kw, layer.stride, layer.padding), o)
            elif isinstance(layer, MaxPool2D):
                if len(shape) != 3:
                    raise FormatError(f"{where}: needs an (H, W, C) input, got {shape}")
                if layer.padding not in ("same", "valid") or layer.stride < 1 or layer.size < 1:
                    raise FormatError(f"{where}: unsupported size {layer.size} / stride {layer.stride} / padding {layer.padding!r}")
                shape = (out_size(shape[0], layer.size, layer.stride, layer.padding),
                         out_size(shape[1], layer.size, layer.stride, layer.padding), shape[2])
            elif isinstance(layer, Dense):
                n_in = int(np.prod(shape))
                if layer.weight.ndim != 2 or layer.weight.shape[1] != n_in:
                    raise FormatError(f"{where}: weight must be (out, {n_in}) for an input of shape {shape}, got {layer.weight.shape}")
                if layer.bias.shape != (layer.weight.shape[0],):
                    raise FormatError(f"{where}: bias must be ({layer.weight.shape[0]},), got {layer.bias.shape}")
                shape = (layer.weight.shape[0],)
            elif isinstance(layer, Softmax):
                pass
            else:
                raise FormatError(f"model {self.name!r}: unknown layer {layer!r}")
            if min(shape) < 1:
                raise FormatError(f"{where}: output shape {shape} is empty")
            shapes.append(shape)
        if len(shapes[-1]) != 1:
            raise FormatError(f"model {self.name!r}: must end in a vector per image, ends in shape {shapes[-1]}")
        return shapes

    def summary(self) -> str:
        lines = [f"{self.name}: input {self.input_shape} x {self.input_scale:.6g}"]
        for layer, shape in zip(self.layers, self.shapes[1:]):
            extra = ""
            if isinstance(layer, Conv2D):
                o, kh, kw, i = layer.weight.shape
                extra = f"{kh}x{kw}x{i}->{o} stride {layer.stride} {layer.padding} {layer.activation}"
            elif isinstance(layer, MaxPool2D):
                extra = f"{layer.size}x{layer.size} stride {layer.stride} {layer.padding}"
            elif isinstance(layer, Dense):
                extra = f"{layer.weight.shape[1]}->{layer.weight.shape[0]} {layer.activation}"
            lines.append(f"  {layer.name:<8} {layer.kind:<10} {extra:<32} -> {shape}")
        lines.append(f"  {sum(p.size for p in self.params().values()):,} parameters, "
                     f"{self.flops_per_image() / 1e6:.1f} MFLOP per image")
        return "\n".join(lines)


def deep_mnist(params: dict[str, np.ndarray], name: str = "deep_mnist", meta: dict | None = None) -> Model:
    """The article's net, from tensors already in the engine layout (keys conv1.weight, ...)."""
    return Model(
        input_shape=(28, 28, 1),
        input_scale=1.0 / 255.0,
        name=name,
        meta=meta or {},
        layers=[
            Conv2D("conv1", params["conv1.weight"], params["conv1.bias"]),
            MaxPool2D("pool1"),
            Conv2D("conv2", params["conv2.weight"], params["conv2.bias"]),
            MaxPool2D("pool2"),
            Dense("fc1", params["fc1.weight"], params["fc1.bias"], activation="relu"),
            Dense("fc2", params["fc2.weight"], params["fc2.bias"], activation="none"),
            Softmax("softmax"),
        ],
    )
