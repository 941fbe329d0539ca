"""Every op of the graph IR, defined once: attributes with defaults, shape rule, FLOPs, NumPy reference.

The reference (`run`) is the living definition every backend is tested against: written to be
read, in the dtype of its inputs (float64 inputs make it the independent reference). Spatial ops
are NHWC with convolution weights (O, KH, KW, I/group); every other op follows ONNX semantics on
the tensors as the engine stores them. Importers translate each framework's layout into this.

An op is one `OpDef` in `OPS`. Adding an op: one entry here, plus the backends' kernels (a
backend that has none falls back to `run`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import FormatError


@dataclass
class OpDef:
    name: str
    attrs: dict  # attribute name -> default (None: required)
    n_inputs: tuple[int, int]  # (min, max)
    shape: Callable  # (input shapes, attrs) -> list of output shapes
    run: Callable  # (input arrays, attrs) -> list of output arrays
    flops: Callable = field(default=lambda ins, outs, a: 0)  # multiply-adds count 2
    n_outputs: int = 1
    doc: str = ""


OPS: dict[str, OpDef] = {}


def op(name, n_inputs=(1, 1), n_outputs=1, **attrs):
    """Register an op from a small class with `shape`, `run` and optional `flops` static methods."""
    def wrap(cls):
        OPS[name] = OpDef(name, attrs, n_inputs, staticmethod(cls.shape).__func__, staticmethod(cls.run).__func__,
                          getattr(cls, "flops", lambda ins, outs, a: 0), n_outputs, (cls.__doc__ or "").strip())
        return cls
    return wrap


class OpError(FormatError):
    """An op's inputs or attributes do not fit its definition."""


def _numel(s) -> int:
    # plain Python ints (not np.prod: the torch peer calls the shape rules inside torch.compile,
    # where a NumPy reduction is a graph break), held to int64 as np.prod was: a count past it is
    # an OverflowError, which the readers report as bad attributes
    n = 1
    for v in s:
        n *= int(v)
    if not -(1 << 63) <= n < (1 << 63):
        raise OverflowError(f"element count {n} does not fit in int64")
    return n


# ---------------------------------------------------------------- spatial helpers

def pool_out(n: int, k: int, s: int, d: int, p0: int, p1: int, ceil: bool) -> int:
    """Output length of a window sweep (ONNX/PyTorch rule: a ceil-mode window must start inside
    the input or its leading pad)."""
    eff = (k - 1) * d + 1
    span = n + p0 + p1 - eff
    if span < 0:
        raise OpError(f"window of {eff} does not fit an input of {n} with pads ({p0}, {p1})")
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + p0:
        out -= 1
    return out


def _spatial(a, rank=2):
    ks = a.get("kernel_shape")
    st = tuple(a.get("strides") or (1,) * rank)
    di = tuple(a.get("dilations") or (1,) * rank)
    pads = tuple(a.get("pads") or (0,) * (2 * rank))
    if len(st) != rank or len(di) != rank or len(pads) != 2 * rank or min(st) < 1 or min(di) < 1 or min(pads) < 0:
        raise OpError(f"strides {st}, dilations {di}, pads {pads} do not describe a 2-D window")
    return ks, st, di, pads


def _windows(xp, kh, kw, sh, sw, dh, dw, ho, wo):
    """Yield (i, j, view) for each kernel tap over a padded NHWC array."""
    for i in range(kh):
        for j in range(kw):
            r, c = i * dh, j * dw
            yield i, j, xp[:, r:r + (ho - 1) * sh + 1:sh, c:c + (wo - 1) * sw + 1:sw, :]


def _pad_hw(x, pads, value=0.0, extra=(0, 0)):
    pt, pl, pb, pr = pads
    return np.pad(x, ((0, 0), (pt, pb + extra[0]), (pl, pr + extra[1]), (0, 0)), constant_values=value)


# ---------------------------------------------------------------- convolution and dense

@op("Conv", n_inputs=(2, 3), strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0), group=1)
class Conv:
    """x (N, H, W, C), w (O, KH, KW, C/group), optional b (O,) -> (N, Ho, Wo, O). pads: (top, left, bottom, right)."""

    @staticmethod
    def shape(ins, a):
        x, w = ins[0], ins[1]
        if len(x) != 4 or len(w) != 4:
            raise OpError(f"needs a rank-4 NHWC input and (O, KH, KW, C/group) weights, got {x} and {w}")
        g = int(a["group"])
        o, kh, kw, cg = w
        if g < 1 or x[3] != cg * g or o % g:
            raise OpError(f"input channels {x[3]} do not match weights {w} with group {g}")
        if len(ins) > 2 and tuple(ins[2]) != (o,):
            raise OpError(f"bias must be ({o},), got {ins[2]}")
        _, (sh, sw), (dh, dw), (pt, pl, pb, pr) = _spatial({**a, "kernel_shape": (kh, kw)})
        return [(x[0], pool_out(x[1], kh, sh, dh, pt, pb, False), pool_out(x[2], kw, sw, dw, pl, pr, False), o)]

    @staticmethod
    def run(ins, a):
        x, w = ins[0], ins[1].astype(ins[0].dtype, copy=False)
        (sh, sw), (dh, dw), pads, g = a["strides"], a["dilations"], a["pads"], int(a["group"])
        n, h, wd, c = x.shape
        o, kh, kw, cg = w.shape
        ho = pool_out(h, kh, sh, dh, pads[0], pads[2], False)
        wo = pool_out(wd, kw, sw, dw, pads[1], pads[3], False)
        xp = _pad_hw(x, pads)
        og = o // g
        out = np.zeros((n, ho, wo, g, og), dtype=x.dtype)
        wg = w.reshape(g, og, kh, kw, cg)
        for i, j, v in _windows(xp, kh, kw, sh, sw, dh, dw, ho, wo):
            out += np.einsum("nhwgc,goc->nhwgo", v.reshape(n, ho, wo, g, cg), wg[:, :, i, j, :], optimize=True)
        out = out.reshape(n, ho, wo, o)
        if len(ins) > 2 and ins[2] is not None:
            out = out + ins[2].astype(x.dtype, copy=False)
        return [out]

    @staticmethod
    def flops(ins, outs, a):
        o, kh, kw, cg = ins[1]
        return 2 * _numel(outs[0][1:]) * kh * kw * cg


@op("Dense", n_inputs=(2, 3))
class Dense:
    """x (N, K), w (O, K), optional b (O,) -> (N, O): x @ w.T + b (ONNX Gemm with transB=1)."""

    @staticmethod
    def shape(ins, a):
        x, w = ins[0], ins[1]
        if len(x) != 2 or len(w) != 2 or x[1] != w[1]:
            raise OpError(f"needs (N, K) input and (O, K) weights, got {x} and {w}")
        if len(ins) > 2 and tuple(ins[2]) != (w[0],):
            raise OpError(f"bias must be ({w[0]},), got {ins[2]}")
        return [(x[0], w[0])]

    @staticmethod
    def run(ins, a):
        x = ins[0]
        out = x @ ins[1].astype(x.dtype, copy=False).T
        if len(ins) > 2 and ins[2] is not None:
            out = out + ins[2].astype(x.dtype, copy=False)
        return [out]

    @staticmethod
    def flops(ins, outs, a):
        return 2 * ins[1][0] * ins[1][1]


def matmul_shape(a, b) -> tuple:
    """numpy.matmul's result shape, worked out from the shapes alone (a shape read from a file may
    be far larger than memory: nothing of that size is allocated)."""
    a, b = tuple(a), tuple(b)
    if not a or not b:
        raise OpError(f"shapes {a} and {b} do not multiply (matmul needs at least 1 dimension)")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise OpError(f"shapes {a} and {b} do not multiply (inner dimensions {a2[-1]} and {b2[-2]})")
    try:
        batch = tuple(np.broadcast_shapes(a2[:-2], b2[:-2]))
    except ValueError as e:
        raise OpError(f"shapes {a} and {b} do not multiply ({e})") from None
    return batch + ((a2[-2],) if len(a) > 1 else ()) + ((b2[-1],) if len(b) > 1 else ())


@op("MatMul", n_inputs=(2, 2))
class MatMul:
    """numpy.matmul semantics (ONNX MatMul)."""

    @staticmethod
    def shape(ins, a):
        return [matmul_shape(ins[0], ins[1])]

    @staticmethod
    def run(ins, a):
        return [np.matmul(ins[0], ins[1].astype(ins[0].dtype, copy=False))]

    @staticmethod
    def flops(ins, outs, a):
        return 2 * _numel(outs[0][1:]) * (ins[0][-1] if ins[0] else 1)


@op("BatchNormalization", n_inputs=(5, 5), epsilon=1e-5, axis=-1)
class BatchNormalization:
    """Inference form: (x - mean) / sqrt(var + eps) * scale + bias over `axis` (NHWC: the last)."""

    @staticmethod
    def shape(ins, a):
        ax = int(a["axis"]) % len(ins[0])
        c = ins[0][ax]
        for s in ins[1:]:
            if tuple(s) != (c,):
                raise OpError(f"statistics must be ({c},), got {s}")
        return [ins[0]]

    @staticmethod
    def run(ins, a):
        x, s, b, m, v = ins
        ax = int(a["axis"]) % x.ndim
        shp = [1] * x.ndim
        shp[ax] = -1
        t = lambda q: q.astype(x.dtype, copy=False).reshape(shp)  # noqa: E731
        return [(x - t(m)) / np.sqrt(t(v) + x.dtype.type(a["epsilon"])) * t(s) + t(b)]

    @staticmethod
    def flops(ins, outs, a):
        return 2 * _numel(ins[0][1:])


# ---------------------------------------------------------------- pooling

def _pool(ins, a, kind):
    x = ins[0]
    (kh, kw), (sh, sw), (dh, dw), pads = _spatial(a)
    ceil = bool(a.get("ceil_mode", 0))
    n, h, wd, c = x.shape
    ho = pool_out(h, kh, sh, dh, pads[0], pads[2], ceil)
    wo = pool_out(wd, kw, sw, dw, pads[1], pads[3], ceil)
    # the ceil-mode overhang beyond the padded input never counts
    eh = max((ho - 1) * sh + (kh - 1) * dh + 1 - (h + pads[0] + pads[2]), 0)
    ew = max((wo - 1) * sw + (kw - 1) * dw + 1 - (wd + pads[1] + pads[3]), 0)
    if kind == "max":
        xp = _pad_hw(x, pads, -np.inf, (eh, ew))
        out = np.full((n, ho, wo, c), -np.inf, dtype=x.dtype)
        for _, _, v in _windows(xp, kh, kw, sh, sw, dh, dw, ho, wo):
            np.maximum(out, v, out=out)
        return [out]
    xp = _pad_hw(x, pads, 0.0, (eh, ew))
    inside = np.ones((1, h, wd, 1), dtype=x.dtype)
    if a.get("count_include_pad", 0):
        inside = _pad_hw(inside, pads, 1.0)
        inside = np.pad(inside, ((0, 0), (0, eh), (0, ew), (0, 0)))
    else:
        inside = _pad_hw(inside, pads, 0.0, (eh, ew))
    out = np.zeros((n, ho, wo, c), dtype=x.dtype)
    cnt = np.zeros((1, ho, wo, 1), dtype=x.dtype)
    for (_, _, v), (_, _, m) in zip(_windows(xp, kh, kw, sh, sw, dh, dw, ho, wo),
                                    _windows(inside, kh, kw, sh, sw, dh, dw, ho, wo)):
        out += v
        cnt += m
    return [out / np.maximum(cnt, 1)]


def _pool_shape(ins, a):
    x = ins[0]
    if len(x) != 4:
        raise OpError(f"needs a rank-4 NHWC input, got {x}")
    ks, (sh, sw), (dh, dw), pads = _spatial(a)
    if ks is None or len(ks) != 2 or min(ks) < 1:
        raise OpError(f"kernel_shape must be two positive sizes, got {ks}")
    ceil = bool(a.get("ceil_mode", 0))
    return [(x[0], pool_out(x[1], ks[0], sh, dh, pads[0], pads[2], ceil),
             pool_out(x[2], ks[1], sw, dw, pads[1], pads[3], ceil), x[3])]


@op("MaxPool", kernel_shape=None, strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0), ceil_mode=0)
class MaxPool:
    """NHWC max over windows; padding never wins (pads are -inf)."""
    shape = staticmethod(_pool_shape)

    @staticmethod
    def run(ins, a):
        return _pool(ins, a, "max")


@op("AveragePool", kernel_shape=None, strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0), ceil_mode=0,
    count_include_pad=0)
class AveragePool:
    """NHWC mean over windows; count_include_pad says whether pads count in the divisor."""
    shape = staticmethod(_pool_shape)

    @staticmethod
    def run(ins, a):
        return _pool(ins, a, "avg")

    @staticmethod
    def flops(ins, outs, a):
        return _numel(outs[0][1:]) * int(np.prod(a["kernel_shape"]))


def _gshape(ins, a):
    if len(ins[0]) < 3:
        raise OpError(f"needs an (N, spatial..., C) input, got {ins[0]}")
    x = ins[0]
    return [(x[0],) + (1,) * (len(x) - 2) + (x[-1],)]


@op("GlobalAveragePool")
class GlobalAveragePool:
    """(N, H, W, C) -> (N, 1, 1, C): mean over the spatial axes."""
    shape = staticmethod(_gshape)

    @staticmethod
    def run(ins, a):
        x = ins[0]
        return [x.mean(axis=tuple(range(1, x.ndim - 1)), keepdims=True)]


@op("GlobalMaxPool")
class GlobalMaxPool:
    """(N, H, W, C) -> (N, 1, 1, C): max over the spatial axes."""
    shape = staticmethod(_gshape)

    @staticmethod
    def run(ins, a):
        x = ins[0]
        return [x.max(axis=tuple(range(1, x.ndim - 1)), keepdims=True)]


# ---------------------------------------------------------------- elementwise

def _bshape(ins, a):
    try:
        return [tuple(np.broadcast_shapes(*[tuple(s) for s in ins]))]
    except ValueError:
        raise OpError(f"shapes {' and '.join(map(str, ins))} do not broadcast") from None


def _binary(name, fn):
    op(name, n_inputs=(2, 2))(type(name, (), {
        "__doc__": f"{name} with NumPy broadcasting.", "shape": staticmethod(_bshape),
        "run": staticmethod(lambda ins, a: [fn(ins[0], ins[1].astype(ins[0].dtype, copy=False))]),
        "flops": staticmethod(lambda ins, outs, a: _numel(outs[0][1:]))}))


_binary("Add", np.add)
_binary("Sub", np.subtract)
_binary("Mul", np.multiply)
_binary("Div", np.divide)
_binary("Max", np.maximum)
_binary("Min", np.minimum)
_binary("Pow", np.power)
_binary("PRelu", lambda x, slope: np.where(x < 0, x * slope, x))


def _erf(x):
    return np.vectorize(math.erf, otypes=[x.dtype])(x) if x.size else x


def _unary(name, fn, doc, **attrs):
    op(name, **attrs)(type(name, (), {
        "__doc__": doc, "shape": staticmethod(lambda ins, a: [ins[0]]),
        "run": staticmethod(lambda ins, a: [fn(ins[0], a)]),
        "flops": staticmethod(lambda ins, outs, a: _numel(outs[0][1:]))}))


def _t(x, v):
    return x.dtype.type(v)


_unary("Relu", lambda x, a: np.maximum(x, _t(x, 0)), "max(x, 0)")
_unary("LeakyRelu", lambda x, a: np.where(x >= 0, x, x * _t(x, a["alpha"])), "x, or alpha*x below 0", alpha=0.01)
_unary("Clip", lambda x, a: np.clip(x, _t(x, a["min"]), _t(x, a["max"])), "clamp to [min, max] (Relu6: 0, 6)",
       min=-math.inf, max=math.inf)
_unary("Sigmoid", lambda x, a: 1 / (1 + np.exp(-x)), "1 / (1 + exp(-x))")
_unary("HardSigmoid", lambda x, a: np.clip(x * _t(x, a["alpha"]) + _t(x, a["beta"]), 0, 1),
       "clip(alpha*x + beta, 0, 1)", alpha=0.2, beta=0.5)
_unary("HardSwish", lambda x, a: x * np.clip(x / 6 + _t(x, 0.5), 0, 1), "x * clip(x/6 + 1/2, 0, 1)")
_unary("Tanh", lambda x, a: np.tanh(x), "tanh")
_unary("Exp", lambda x, a: np.exp(x), "exp")
_unary("Sqrt", lambda x, a: np.sqrt(x), "square root")
_unary("Log", lambda x, a: np.log(x), "natural logarithm")
_unary("Reciprocal", lambda x, a: _t(x, 1) / x, "1 / x")
_unary("Neg", lambda x, a: -x, "negation")
_unary("Abs", lambda x, a: np.abs(x), "absolute value")
_unary("Erf", lambda x, a: _erf(x), "the error function")
_unary("Elu", lambda x, a: np.where(x > 0, x, _t(x, a["alpha"]) * np.expm1(np.minimum(x, 0))), "ELU", alpha=1.0)
_unary("Softplus", lambda x, a: np.logaddexp(x, _t(x, 0)), "log(1 + exp(x))")
_unary("Gelu", lambda x, a: (x * 0.5 * (1 + _erf(x / _t(x, math.sqrt(2))))) if a["approximate"] == "none" else
       (_t(x, 0.5) * x * (1 + np.tanh(_t(x, math.sqrt(2 / math.pi)) * (x + _t(x, 0.044715) * x ** 3)))),
       "x * Phi(x), exact (erf) or tanh-approximated", approximate="none")


def _axis(a, rank):
    ax = int(a["axis"])
    if not -rank <= ax < rank:
        raise OpError(f"axis {ax} is out of range for rank {rank}")
    return ax % rank


def _softmax(x, ax, log=False):
    m = x - x.max(axis=ax, keepdims=True)
    if log:
        return m - np.log(np.exp(m).sum(axis=ax, keepdims=True))
    e = np.exp(m)
    return e / e.sum(axis=ax, keepdims=True)


@op("Softmax", axis=-1)
class Softmax:
    """exp(x) / sum(exp(x)) along `axis` (ONNX opset 13 semantics)."""

    @staticmethod
    def shape(ins, a):
        _axis(a, len(ins[0]))
        return [ins[0]]

    @staticmethod
    def run(ins, a):
        return [_softmax(ins[0], _axis(a, ins[0].ndim))]


@op("LogSoftmax", axis=-1)
class LogSoftmax:
    """log(softmax(x)) along `axis`."""

    @staticmethod
    def shape(ins, a):
        _axis(a, len(ins[0]))
        return [ins[0]]

    @staticmethod
    def run(ins, a):
        return [_softmax(ins[0], _axis(a, ins[0].ndim), log=True)]


@op("LRN", size=None, alpha=1e-4, beta=0.75, bias=1.0, axis=-1)
class LRN:
    """Local response normalization across `axis` (NHWC: channels, the last), ONNX's definition:
    x / (bias + alpha / size * sum of x^2 over channels c - (size-1)//2 .. c + size//2) ** beta."""

    @staticmethod
    def shape(ins, a):
        _axis(a, len(ins[0]))
        if int(a["size"]) < 1:
            raise OpError(f"size must be positive, got {a['size']}")
        return [ins[0]]

    @staticmethod
    def run(ins, a):
        x = ins[0]
        ax, size = _axis(a, x.ndim), int(a["size"])
        sq = np.moveaxis(x * x, ax, -1)
        lo = (size - 1) // 2
        sqp = np.pad(sq, [(0, 0)] * (sq.ndim - 1) + [(lo, size - 1 - lo)])
        c = sq.shape[-1]
        s = sum(sqp[..., k:k + c] for k in range(size))
        d = (_t(x, a["bias"]) + _t(x, a["alpha"]) / size * s) ** _t(x, a["beta"])
        return [x / np.moveaxis(d, -1, ax)]

    @staticmethod
    def flops(ins, outs, a):
        return _numel(ins[0][1:]) * (int(a["size"]) + 4)


# ---------------------------------------------------------------- data movement

@op("Identity")
class Identity:
    """The input, unchanged."""

    @staticmethod
    def shape(ins, a):
        return [ins[0]]

    @staticmethod
    def run(ins, a):
        return [ins[0]]


@op("Flatten", axis=1)
class Flatten:
    """(d0..dk-1, dk..) -> (prod(d0..dk-1), prod(dk..)) in the stored (row-major) order."""

    @staticmethod
    def shape(ins, a):
        ax = int(a["axis"])
        r = len(ins[0])
        if not -r <= ax <= r:
            raise OpError(f"axis {ax} is out of range for rank {r}")
        ax %= r + 1 if ax >= 0 else r
        return [(_numel(ins[0][:ax]), _numel(ins[0][ax:]))]

    @staticmethod
    def run(ins, a):
        x = ins[0]
        ax = int(a["axis"])
        ax = ax if ax >= 0 else ax + x.ndim
        return [x.reshape(_numel(x.shape[:ax]), -1) if x.size else x.reshape(_numel(x.shape[:ax]), _numel(x.shape[ax:]))]


def reshape_target(src, shape, allowzero=0) -> tuple:
    """ONNX Reshape: 0 copies the input's dimension (unless allowzero), -1 is inferred."""
    out = [int(v) for v in shape]
    if not allowzero:
        for i, v in enumerate(out):
            if v == 0:
                if i >= len(src):
                    raise OpError(f"target {tuple(shape)} copies dimension {i} of a rank-{len(src)} input")
                out[i] = src[i]
    if out.count(-1) > 1 or any(v < -1 for v in out):
        raise OpError(f"bad reshape target {tuple(shape)}")
    total = _numel(src)
    if -1 in out:
        rest = _numel([v for v in out if v != -1])
        if rest == 0 or total % rest:
            raise OpError(f"cannot reshape {tuple(src)} to {tuple(shape)}")
        out[out.index(-1)] = total // rest
    if _numel(out) != total:
        raise OpError(f"cannot reshape {tuple(src)} ({total} values) to {tuple(out)}")
    return tuple(out)


@op("Reshape", shape=None, allowzero=0)
class Reshape:
    """Row-major reshape to `shape` (0 copies the input's dimension, -1 is inferred)."""

    @staticmethod
    def shape(ins, a):
        return [reshape_target(ins[0], a["shape"], a["allowzero"])]

    @staticmethod
    def run(ins, a):
        return [ins[0].reshape(reshape_target(ins[0].shape, a["shape"], a["allowzero"]))]


@op("Transpose", perm=None)
class Transpose:
    """numpy.transpose(x, perm); perm defaults to reversing the axes."""

    @staticmethod
    def shape(ins, a):
        perm = a["perm"] if a["perm"] is not None else tuple(reversed(range(len(ins[0]))))
        if sorted(perm) != list(range(len(ins[0]))):
            raise OpError(f"perm {perm} is not a permutation of {len(ins[0])} axes")
        return [tuple(ins[0][p] for p in perm)]

    @staticmethod
    def run(ins, a):
        return [np.transpose(ins[0], a["perm"])]


@op("Concat", n_inputs=(1, 1 << 16), axis=None)
class Concat:
    """Join along `axis`."""

    @staticmethod
    def shape(ins, a):
        ax = _axis(a, len(ins[0]))
        for s in ins[1:]:
            if len(s) != len(ins[0]) or any(s[i] != ins[0][i] for i in range(len(s)) if i != ax):
                raise OpError(f"shapes {' and '.join(map(str, ins))} do not join along axis {ax}")
        return [tuple(ins[0][:ax]) + (sum(s[ax] for s in ins),) + tuple(ins[0][ax + 1:])]

    @staticmethod
    def run(ins, a):
        return [np.concatenate(ins, axis=int(a["axis"]))]


@op("Split", n_inputs=(1, 1), n_outputs=-1, axis=0, split=None)
class Split:
    """Split along `axis` into parts of the sizes in `split`."""

    @staticmethod
    def shape(ins, a):
        ax = _axis(a, len(ins[0]))
        sp = a["split"]
        if sp is None or sum(sp) != ins[0][ax] or min(sp) < 0:
            raise OpError(f"split {sp} does not add up to dimension {ax} of {ins[0]}")
        return [tuple(ins[0][:ax]) + (s,) + tuple(ins[0][ax + 1:]) for s in sp]

    @staticmethod
    def run(ins, a):
        idx = np.cumsum(a["split"])[:-1]
        return list(np.split(ins[0], idx, axis=int(a["axis"])))


@op("Gather", n_inputs=(2, 2), axis=0)
class Gather:
    """numpy.take(x, indices, axis): ONNX Gather with indices already made non-negative."""

    @staticmethod
    def shape(ins, a):
        x, i = ins
        ax = _axis(a, len(x))
        return [tuple(x[:ax]) + tuple(i) + tuple(x[ax + 1:])]

    @staticmethod
    def run(ins, a):
        return [np.take(ins[0], ins[1].astype(np.int64, copy=False), axis=int(a["axis"]))]


def slice_indices(shape, a):
    """Per-axis python slices from ONNX Slice's starts/ends/axes/steps."""
    r = len(shape)
    axes = a["axes"] if a["axes"] is not None else list(range(len(a["starts"])))
    steps = a["steps"] if a["steps"] is not None else [1] * len(axes)
    sl = [slice(None)] * r
    for s, e, ax, st in zip(a["starts"], a["ends"], axes, steps):
        if st == 0:
            raise OpError("slice step 0")
        ax = int(ax) % r
        n = shape[ax]
        s, e = int(s), int(e)
        # ONNX clamps like Python slicing; huge sentinels (INT64_MAX) work the same
        s = max(-n - 1, min(n, s))
        e = max(-n - 1, min(n, e))
        if st < 0 and e < -n:
            e = None
        sl[ax] = slice(s, e, int(st))
    return tuple(sl)


@op("Slice", starts=None, ends=None, axes=None, steps=None)
class Slice:
    """x[starts:ends:steps] on `axes` (ONNX Slice, with constant starts/ends)."""

    @staticmethod
    def shape(ins, a):
        # a zero-strided view of the input's shape: slicing it allocates nothing, whatever the shape
        return [np.broadcast_to(np.int8(0), ins[0])[slice_indices(ins[0], a)].shape]

    @staticmethod
    def run(ins, a):
        return [ins[0][slice_indices(ins[0].shape, a)]]


@op("Pad", pads=None, value=0.0, mode="constant")
class Pad:
    """Constant padding; pads = (begin per axis..., end per axis...) as ONNX writes them."""

    @staticmethod
    def shape(ins, a):
        r = len(ins[0])
        p = a["pads"]
        if a["mode"] != "constant":
            raise OpError(f"pad mode {a['mode']!r} is not supported (only constant)")
        if p is None or len(p) != 2 * r:
            raise OpError(f"pads {p} do not fit rank {r}")
        out = tuple(ins[0][i] + p[i] + p[i + r] for i in range(r))
        if min(out, default=1) < 0:
            raise OpError(f"pads {p} crop more than the input {ins[0]} holds")
        return [out]

    @staticmethod
    def run(ins, a):
        x, p, r = ins[0], a["pads"], ins[0].ndim
        pos = [(max(p[i], 0), max(p[i + r], 0)) for i in range(r)]
        x = np.pad(x, pos, constant_values=a["value"])
        crop = tuple(slice(-min(p[i], 0), x.shape[i] + min(p[i + r], 0)) for i in range(r))
        return [x[crop]]


@op("Squeeze", axes=None)
class Squeeze:
    """Drop size-1 axes."""

    @staticmethod
    def shape(ins, a):
        r = len(ins[0])
        axes = [int(v) % r for v in a["axes"]] if a["axes"] is not None else [i for i, d in enumerate(ins[0]) if d == 1]
        if any(ins[0][i] != 1 for i in axes):
            raise OpError(f"cannot squeeze axes {axes} of {ins[0]}")
        return [tuple(d for i, d in enumerate(ins[0]) if i not in axes)]

    @staticmethod
    def run(ins, a):
        return [ins[0].reshape(Squeeze.shape([ins[0].shape], a)[0])]


@op("Unsqueeze", axes=None)
class Unsqueeze:
    """Insert size-1 axes at `axes` of the output."""

    @staticmethod
    def shape(ins, a):
        r = len(ins[0]) + len(a["axes"])
        axes = sorted(int(v) % r for v in a["axes"])
        out, it = [], iter(ins[0])
        for i in range(r):
            out.append(1 if i in axes else next(it))
        return [tuple(out)]

    @staticmethod
    def run(ins, a):
        return [ins[0].reshape(Unsqueeze.shape([ins[0].shape], a)[0])]


def _reduce(name, fn):
    def shape(ins, a):
        r = len(ins[0])
        axes = [int(v) % r for v in a["axes"]] if a["axes"] is not None else list(range(r))
        if a["keepdims"]:
            return [tuple(1 if i in axes else d for i, d in enumerate(ins[0]))]
        return [tuple(d for i, d in enumerate(ins[0]) if i not in axes)]

    def run(ins, a):
        x = ins[0]
        axes = tuple(int(v) % x.ndim for v in a["axes"]) if a["axes"] is not None else None
        return [fn(x, axis=axes, keepdims=bool(a["keepdims"]))]

    op(name, axes=None, keepdims=1)(type(name, (), {"__doc__": f"{name} over `axes` (all if None).",
                                                   "shape": staticmethod(shape), "run": staticmethod(run)}))


_reduce("ReduceMean", np.mean)
_reduce("ReduceMax", lambda x, **k: np.max(x, initial=-np.inf, **k))
_reduce("ReduceSum", np.sum)
_reduce("ReduceMin", lambda x, **k: np.min(x, initial=np.inf, **k))
_reduce("ReduceProd", np.prod)
_reduce("ReduceSumSquare", lambda x, **k: np.sum(x * x, **k))
_reduce("ReduceL1", lambda x, **k: np.sum(np.abs(x), **k))
_reduce("ReduceL2", lambda x, **k: np.sqrt(np.sum(x * x, **k)))
_reduce("ReduceLogSum", lambda x, **k: np.log(np.sum(x, **k)))


def _logsumexp(x, axis, keepdims):
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0)
    s = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return s if keepdims else np.squeeze(s, axis=axis)


_reduce("ReduceLogSumExp", _logsumexp)


def get(name: str) -> OpDef:
    if name not in OPS:
        raise OpError(f"unknown op {name!r}")
    return OPS[name]
