"""Kernels of the CPU graph planner: each one fused step of a compiled graph, run per block.

A step computes one output tensor (N, ...) float32 into a buffer the planner owns. Spatial steps
(convolutions, depthwise convolutions, pools) take the images [i0, i1) and output rows [r0, r1)
to compute, so the planner can split one image over threads; each applies its epilogue (bias,
activations, a residual Add, fp16 rounding) to a block of output while it is still in the caches:
one pass over memory per step instead of one per node.

Two sets of kernels, chosen per step when the graph is compiled:
- compiled (cnnrt.backends.native, C built at first use; ctypes releases the GIL): a direct
  convolution for every one-group convolution (register-blocked over output channels and
  pixels, epilogue in registers), depthwise convolution, max and average pools;
- NumPy, always there and the fallback (no compiler, fp16 storage, an activation the C code lacks):
  convolutions as one GEMM on the stored input (pointwise), a strided gather of a block's patches
  and one GEMM (im2col), Winograd F(4x4, 3x3) / F(2x2, 3x3) for stride-1 3x3 layers, one
  multiply-add per tap (depthwise), a batched GEMM over groups (grouped); pools per tap. Padding
  is written around a block's input rows in a per-thread buffer, never around the whole tensor.

Every kernel is tested, both ways, against the float64 reference (cnnrt.ir.run_reference) in
tests/test_numpy_graph.py.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..ir import ops as O
from .cpu_kernels import aligned_copy, matmul_skipping_zeros, sparse_ok

F32 = np.float32
BLOCK_BYTES = 256 << 10  # a GEMM block's patches (im2col) or a pool/depthwise block's output: L2-sized
EPI_BYTES = 128 << 10  # ... of an epilogue-only pass (pointwise output rows)


# ---------------------------------------------------------------- activations, in place

def _relu(a):
    def f(y, tmp):
        np.maximum(y, F32(0), out=y)
    return f


def _clip(a):
    lo, hi = F32(a["min"]), F32(a["max"])

    def f(y, tmp):
        if np.isfinite(lo):
            np.maximum(y, lo, out=y)
        if np.isfinite(hi):
            np.minimum(y, hi, out=y)
    return f


def _leaky(a):
    alpha = F32(a["alpha"])

    def f(y, tmp):
        t = tmp(y.shape)
        np.multiply(y, alpha, out=t)
        if alpha <= 1:
            np.maximum(y, t, out=y)  # x >= 0: x; x < 0: alpha * x (the larger)
        else:
            np.copyto(y, t, where=y < 0)
    return f


def _hardsigmoid(a):
    alpha, beta = F32(a["alpha"]), F32(a["beta"])

    def f(y, tmp):
        np.multiply(y, alpha, out=y)
        np.add(y, beta, out=y)
        np.clip(y, F32(0), F32(1), out=y)
    return f


def _hardswish(a):
    def f(y, tmp):
        t = tmp(y.shape)
        np.divide(y, F32(6), out=t)
        np.add(t, F32(0.5), out=t)
        np.clip(t, F32(0), F32(1), out=t)
        np.multiply(y, t, out=y)
    return f


def _sigmoid(a):
    def f(y, tmp):
        with np.errstate(over="ignore"):
            np.negative(y, out=y)
            np.exp(y, out=y)
        np.add(y, F32(1), out=y)
        np.reciprocal(y, out=y)
    return f


def _tanh(a):
    def f(y, tmp):
        np.tanh(y, out=y)
    return f


ACTIVATIONS = {"Relu": _relu, "Clip": _clip, "LeakyRelu": _leaky, "HardSigmoid": _hardsigmoid,
               "HardSwish": _hardswish, "Sigmoid": _sigmoid, "Tanh": _tanh}


def exact_in_fp16(node) -> bool:
    """True when the activation's output is a float16 value whenever its input is (no rounding needed)."""
    if node.op == "Relu":
        return True
    if node.op == "Clip":
        return all(not np.isfinite(v) or float(np.float16(v)) == float(v) for v in (node.attrs["min"], node.attrs["max"]))
    return False


def round16(y):
    y[...] = y.astype(np.float16)


def ptr(cache: dict, slot, a: np.ndarray) -> int:
    """a's data address, remembered per slot while the same array object comes back (the planner
    hands a step the same buffers call after call): a ctypes round trip saved per pointer."""
    c = cache.get(slot)
    if c is not None and c[0] is a:
        return c[1]
    p = a.ctypes.data
    cache[slot] = (a, p)
    return p


def native_lib():
    """The compiled kernels (cnnrt.backends.native) when usable, else None: the NumPy kernels run."""
    if not NATIVE:
        return None
    from . import native
    return native.lib()


NATIVE = True  # use the compiled kernels where they are available (tests switch this off and on)
# for A/B runs: CNNRT_DENSE_BLOCK=0 sends Dense steps of more images than a program takes to BLAS
# instead of the compiled dense_block; CNNRT_CONV_PARTS=rows splits a direct convolution of one
# image the way it was split before the cost model (ConvStep.split_choice)
DENSE_BLOCK = os.environ.get("CNNRT_DENSE_BLOCK", "1") != "0"
CONV_PARTS = os.environ.get("CNNRT_CONV_PARTS", "cost")
# CNNRT_DIRECT_G3=0: output channels that are a multiple of three vectors but not four (96, 144)
# take two-vector blocks, as before the three-vector kernel
DIRECT_G3 = os.environ.get("CNNRT_DIRECT_G3", "1") != "0"
# CNNRT_NATIVE_WINOGRAD: 3x3 stride-1 convolutions that the NumPy planner gives Winograd run on the
# compiled Winograd, F(4x4) or F(2x2) by native_winograd_tile ("1", the default); "2": F(2x2) for
# all of them; "0": the compiled direct convolution instead
NATIVE_WINOGRAD = os.environ.get("CNNRT_NATIVE_WINOGRAD", "1")
# the transforms written out in kernels.c (bt_f2, at_f2, bt_f4, at_f4), checked against
# winograd_matrices at setup: a layer whose matrices differ is left to the other kernels
WINO_BT_AT = {
    2: (np.array([[-1, 0, 1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, 1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)),
}


class Epilogue:
    """What a step does to each output block after its main work: a list of in-place ops.

    Entries: ("bias", b), ("act", fn, label), ("add", k) (add the step's input k, a residual of the
    output's shape), ("round",) (fp16 storage: round to float16 where a node's output ends).
    """

    def __init__(self, ops=()):
        self.ops = list(ops)

    def label(self) -> str:
        return "".join(f"+{e[2] if e[0] == 'act' else e[0]}" for e in self.ops if e[0] != "round")

    def native(self):
        """(Epi template, index of the residual input or None) for the compiled kernels, or None
        when an op has no compiled form (fp16 rounding, sigmoid, tanh)."""
        from . import native as N

        e = N.Epi()
        res = None
        keep = []
        for op in self.ops:
            k = op[0]
            if e.n == 8:
                return None
            if k == "bias":
                e.code[e.n] = N.E_BIAS
                keep.append(op[1])
                e.bias = op[1].ctypes.data
            elif k == "add":
                e.code[e.n] = N.E_ADD
                res = op[1]
            elif k == "act":
                name, a = op[3], op[4]
                if name == "Relu":
                    e.code[e.n] = N.E_RELU
                elif name == "Clip":
                    e.code[e.n], e.a[e.n], e.b[e.n] = N.E_CLIP, a["min"], a["max"]
                elif name == "LeakyRelu":
                    e.code[e.n], e.a[e.n] = N.E_LEAKY, a["alpha"]
                elif name == "HardSwish":
                    e.code[e.n] = N.E_HSWISH
                elif name == "HardSigmoid":
                    e.code[e.n], e.a[e.n], e.b[e.n] = N.E_HSIG, a["alpha"], a["beta"]
                else:
                    return None
            else:
                return None
            e.n += 1
        self._keep = keep
        return e, res

    @staticmethod
    def bind(template, res_index, ins):
        """A per-call copy of the template with the residual's address filled in."""
        from . import native as N

        e = N.Epi.from_buffer_copy(template)
        if res_index is not None:
            e.res = ins[res_index].ctypes.data
        return e

    def __call__(self, y, ins, sl, tmp):
        """y: the block (a view of the output); sl: its index into the output (for residuals)."""
        for e in self.ops:
            k = e[0]
            if k == "bias":
                np.add(y, e[1], out=y)
            elif k == "act":
                e[1](y, tmp)
            elif k == "add":
                np.add(y, ins[e[1]][sl], out=y)
            elif k == "round":
                round16(y)


# ---------------------------------------------------------------- window geometry (conv, pools)

class Window:
    """A 2-D window sweep over NHWC input: which input rows a block of output rows reads, and
    that block's input with its padding written around it."""

    def __init__(self, in_shape, kh, kw, strides, dilations, pads, out_hw, fill=0.0):
        self.h, self.w, self.c = in_shape
        self.kh, self.kw = kh, kw
        self.sh, self.sw = strides
        self.dh, self.dw = dilations
        self.pt, self.pl, self.pb, self.pr = pads
        self.ho, self.wo = out_hw
        self.fill = F32(fill)
        self.wp = (self.wo - 1) * self.sw + (kw - 1) * self.dw + 1  # padded columns read
        self.cw = max(0, min(self.w, self.wp - self.pl))  # input columns that land in them
        hp = (self.ho - 1) * self.sh + (kh - 1) * self.dh + 1
        self.no_pad = self.pt == 0 and self.pl == 0 and hp <= self.h and self.wp <= self.w

    def block_input(self, x, i0, i1, r0, r1, scr, key):
        """(ni, rows read, wp, C): x's rows for output rows [r0, r1) of images [i0, i1), padded."""
        a = r0 * self.sh - self.pt
        b = (r1 - 1) * self.sh - self.pt + (self.kh - 1) * self.dh + 1
        if self.no_pad:
            return x[i0:i1, a:b, :self.wp]
        ni = i1 - i0
        buf = scr.get(key, (ni, b - a, self.wp, self.c))
        top, bot = max(0, -a), max(0, b - self.h)
        lo, hi = a + top, b - bot  # input rows [lo, hi) are data
        if top:
            buf[:, :top] = self.fill
        if bot:
            buf[:, b - a - bot:] = self.fill
        if hi > lo:
            if self.pl:
                buf[:, top:b - a - bot, :self.pl] = self.fill
            if self.pl + self.cw < self.wp:
                buf[:, top:b - a - bot, self.pl + self.cw:] = self.fill
            buf[:, top:b - a - bot, self.pl:self.pl + self.cw] = x[i0:i1, lo:hi, :self.cw]
        return buf

    def tap(self, xp, i, j, rows):
        """The (ni, rows, wo, C) view of tap (i, j) over a block input."""
        s = xp.strides
        return as_strided(xp[:, i * self.dh:, j * self.dw:], (xp.shape[0], rows, self.wo, xp.shape[3]),
                          (s[0], self.sh * s[1], self.sw * s[2], s[3]))

    def patches(self, xp, rows):
        """(ni, rows, wo, kh, kw, C) view of every patch of a block input."""
        s = xp.strides
        return as_strided(xp, (xp.shape[0], rows, self.wo, self.kh, self.kw, xp.shape[3]),
                          (s[0], self.sh * s[1], self.sw * s[2], self.dh * s[1], self.dw * s[2], s[3]))


MIN_GEMM_ROWS = 192  # a GEMM block has at least this many rows (pixels, tiles) where it can: fewer
# and the GEMM reads its weights once per few rows (bandwidth-bound on deep layers' weights)


def blocks(i0, i1, r0, r1, rows_total, row_elems, budget_elems, row_units=0):
    """(ia, ib, ra, rb) blocks of whole images, or of rows of one image, of about budget_elems;
    with row_units (GEMM rows per output row), of at least MIN_GEMM_ROWS GEMM rows."""
    if row_units:
        budget_elems = max(budget_elems, -(-MIN_GEMM_ROWS // row_units) * row_elems)
    img = rows_total * row_elems
    if r0 == 0 and r1 == rows_total and img <= budget_elems:
        k = max(1, budget_elems // max(img, 1))
        for ia in range(i0, i1, k):
            yield ia, min(ia + k, i1), 0, rows_total
        return
    rows = max(1, budget_elems // max(row_elems, 1))
    for i in range(i0, i1):
        for ra in range(r0, r1, rows):
            yield i, i + 1, ra, min(ra + rows, r1)


# ---------------------------------------------------------------- steps

class Step:
    """One fused unit of work. `inputs`: the activation tensors it reads (in order);
    `output`: what it writes. Spatial steps have `rows` > 0 (output rows per image: the planner
    may split them over threads)."""

    kernel = "?"
    rows = 0

    def __init__(self, nodes, inputs, output, epilogue=None):
        self.nodes, self.inputs, self.output = nodes, list(inputs), output
        self.epi = epilogue or Epilogue()
        self.key = id(self)

    @property
    def label(self) -> str:
        return f"{'' if self.kernel.startswith('native.') else 'numpy.'}{self.kernel}{self.epi.label()}"

    def work(self, n) -> float:
        """Rough cost of n images (multiply-adds or values touched), for deciding to split."""
        return 0.0

    def run(self, ins, out, scr, i0, i1, r0, r1) -> None:
        raise NotImplementedError

    def parts(self, n, t):
        """About t pieces of this step over n images, each (i0, i1, r0, r1): images, or bands of
        output rows of each image, for the threads to share."""
        if n >= t:
            return [(i * n // t, (i + 1) * n // t, 0, self.rows) for i in range(t)]
        bands = max(1, min(self.rows, -(-t // n)))
        return [(i, i + 1, b * self.rows // bands, (b + 1) * self.rows // bands) for i in range(n) for b in range(bands)]


def _tmp(scr, key):
    return lambda shape: scr.get((key, "tmp"), shape)


class ConvStep(Step):
    """Conv + bias + epilogue. `kind`: pointwise, im2col, depthwise or grouped."""

    def __init__(self, nodes, inputs, output, epilogue, in_shape, w, b, attrs, out_shape):
        super().__init__(nodes, inputs, output, epilogue)
        o, kh, kw, cg = w.shape
        g = int(attrs["group"])
        self.o, self.g = o, g
        self.win = Window(in_shape, kh, kw, tuple(attrs["strides"]), tuple(attrs["dilations"]),
                          tuple(attrs["pads"]), out_shape[:2])
        self.rows = out_shape[0]
        self.out_shape = out_shape
        c = in_shape[2]
        self.flops = out_shape[0] * out_shape[1] * o * kh * kw * cg
        if b is not None:
            self.epi.ops.insert(0, ("bias", np.ascontiguousarray(b, dtype=F32)))
        m = winograd_tile(kh, kw, attrs, c, o, g, out_shape) if WINOGRAD else 0
        if m:
            self.kind = "winograd"
        elif g == 1 and kh == kw == 1 and self.win.sh == self.win.sw == 1 and self.win.no_pad:
            self.kind = "pointwise"
        elif g == 1:
            self.kind = "im2col"
        elif g == c and o == c:
            self.kind = "depthwise"
        else:
            self.kind = "grouped"
        if self._native_setup(w, in_shape, attrs, out_shape):
            pass  # a compiled kernel: no NumPy weight layout needed
        elif self.kind == "winograd":
            self._winograd_setup(w, m, in_shape, attrs, out_shape)
        elif self.kind in ("pointwise", "im2col"):
            self.wt = np.ascontiguousarray(w.reshape(o, -1).T, dtype=F32)  # (kh*kw*c, o)
        elif self.kind == "depthwise":
            self.wd = np.ascontiguousarray(w.reshape(o, kh * kw).T, dtype=F32)  # (taps, c)
        else:
            og = o // g
            # (g, kh*kw*cg, og)
            self.wg = np.ascontiguousarray(w.reshape(g, og, kh * kw * cg).transpose(0, 2, 1), dtype=F32)
        self.kernel = ("native.conv." + self.kind[7:] if self.kind.startswith("native.") else f"conv.{self.kind}")
        if "winograd" in self.kind:
            self.kernel += f".f{self.m}x{self.m}"

    def _native_setup(self, w, in_shape, attrs, out_shape) -> bool:
        """Switch to a compiled kernel (cnnrt.backends.native) where one fits and pays."""
        lib = native_lib()
        if lib is None:
            return False
        ne = self.epi.native()
        if ne is None:
            return False
        o, kh, kw, cg = w.shape
        c = in_shape[2]
        if self.kind == "depthwise":
            vw2 = 2 * lib.cnnrt_vector_width()
            cpad = -(-c // vw2) * vw2
            wd = np.zeros((kh * kw, cpad), F32)
            wd[:, :c] = w.reshape(o, kh * kw).T
            self.wn, self.cpad = aligned_copy(wd), cpad
            self.kind = "native.depthwise"
        elif self.kind == "winograd" and NATIVE_WINOGRAD != "0" and hasattr(lib, "conv_wino2_g1"):
            from .cpu_kernels import INTEGER_TRANSFORMS, winograd_matrices

            # (older kernels, which benchmarks/cpu_ab.py loads, have F(2x2) only)
            m = 2 if NATIVE_WINOGRAD == "2" or not hasattr(lib, "conv_wino4_g1") else native_winograd_tile(out_shape)
            at, gm, bt = winograd_matrices(m, 3, None, integer=INTEGER_TRANSFORMS)
            if not (np.array_equal(bt, WINO_BT_AT[m][0]) and np.array_equal(at, WINO_BT_AT[m][1])):
                return False  # kernels.c's transforms are not these: leave the layer to the others
            vw = lib.cnnrt_vector_width()
            groups = self._channel_groups(lib, o, vw)
            ob, aa = groups * vw, (m + 2) ** 2
            nb = self.nb = -(-o // ob)
            u = np.einsum("xa,oabc,yb->xyco", gm, w.astype(np.float64), gm).reshape(aa, c, o)  # G w G^T
            up = np.zeros((aa, c, nb * ob), np.float64)
            up[..., :o] = u
            self.wn = aligned_copy(up.reshape(aa, c, nb, ob).transpose(2, 0, 1, 3).astype(F32))  # [nb][aa][c][ob]
            self.wino = getattr(lib, f"conv_wino{m}_g{groups}")
            self.groups, self.kind, self.m = groups, "native.winograd", m
            self.win = Window(in_shape, kh, kw, (1, 1), (1, 1), tuple(attrs["pads"]), out_shape[:2])
            self.rows = -(-out_shape[0] // m)  # the unit of a row split: tile rows (m output rows)
        elif self.g == 1 and use_direct(self.kind, kh, kw, c, o, out_shape, tuple(attrs["strides"])):
            vw = lib.cnnrt_vector_width()
            groups = self._channel_groups(lib, o, vw)
            self.direct = getattr(lib, f"conv_direct_g{groups}")
            self.groups = groups
            ob = groups * vw
            nb = self.nb = -(-o // ob)
            wpad = np.zeros((nb * ob, kh, kw, c), F32)
            wpad[:o] = w
            self.wn = aligned_copy(wpad.reshape(nb, ob, kh, kw, c).transpose(0, 2, 3, 4, 1))
            self.zeros = np.zeros(max(kw * c, 1), F32)  # a kernel row of padding
            self.kind = "native.direct"
            self.vw, self._splits = vw, {}
            self.px = int(lib.cnnrt_direct_px(groups)) if hasattr(lib, "cnnrt_direct_px") else 8
            self.win = Window(in_shape, kh, kw, tuple(attrs["strides"]), tuple(attrs["dilations"]),
                              tuple(attrs["pads"]), out_shape[:2])
            self.rows = out_shape[0]
        else:
            return False
        self.lib, (self.epi_t, self.res_idx) = lib, ne
        self._pc = {}  # pointer cache (see ptr)
        self._epi_ref = ctypes.byref(self.epi_t)
        self._wptr = self.wn.ctypes.data
        self._zptr = self.zeros.ctypes.data if self.kind == "native.direct" else None
        w = self.win
        self.geo = np.array([w.h, w.w, w.c, self.o, w.kh, w.kw, w.sh, w.sw, w.dh, w.dw, w.pt, w.pl, w.ho, w.wo],
                            np.intc)
        self._gptr = self.geo.ctypes.data
        return True

    @staticmethod
    def _channel_groups(lib, o, vw) -> int:
        """Output channels per register block, in vectors: four where they divide O, else three
        where those do, else two, one for O <= one vector."""
        return (4 if o % (4 * vw) == 0 else 1 if o <= vw else
                3 if DIRECT_G3 and o % (3 * vw) == 0 and hasattr(lib, "conv_direct_g3") else 2)

    def _native_args(self, ins):
        """(x, x's address, the epilogue's reference, what else the call reads) for a compiled call.
        An input that is not contiguous (a channel split's view) is copied, and a copy is held by
        the caller until the call returns, never only by the pointer cache: the cache belongs to
        the step, which the pool's threads run at once on their own images, so another thread's
        call can replace an entry while this one's kernel still reads the copy it points at."""
        x = ins[0]
        if x.flags.c_contiguous:
            xp = ptr(self._pc, "x", x)
        else:
            x = np.ascontiguousarray(x)
            xp = x.ctypes.data
        if self.res_idx is None:
            return x, xp, self._epi_ref, None
        r = ins[self.res_idx]
        if not r.flags.c_contiguous:  # a copy, with an epilogue of its own for this call
            r = np.ascontiguousarray(r)
            e = Epilogue.bind(self.epi_t, None, ins)
            e.res = r.ctypes.data
            return x, xp, ctypes.byref(e), (r, e)
        c = self._pc.get("res")
        if c is None or c[0] is not r:
            e = Epilogue.bind(self.epi_t, None, ins)
            e.res = r.ctypes.data
            c = self._pc["res"] = (r, ctypes.byref(e), e)
        return x, xp, c[1], c

    def parts(self, n, t):
        """The compiled direct convolution of fewer images than threads also splits its
        output-channel blocks: a deep layer of one image has few rows (7) but many blocks, and
        each thread then reads only its share of the weights. How many bands of rows and groups
        of blocks: the split with the least estimated time (cost_of_parts)."""
        if self.kind == "native.winograd" and n < t:
            # bands of tile rows, then groups of channel blocks where there are fewer bands than
            # threads (ResNet-18's 7x7 maps: 2 tile rows); each group transforms its tiles' input
            rows, nb = self.rows, self.nb
            bands = min(rows, -(-t // n))
            k = min(nb, -(-t // (n * bands)))
            return [(i, i + 1, q * rows // bands, (q + 1) * rows // bands, j * nb // k, (j + 1) * nb // k)
                    for i in range(n) for q in range(bands) for j in range(k)]
        if self.kind != "native.direct" or n >= t:
            return super().parts(n, t)
        if CONV_PARTS == "rows":  # the rule before the cost model (CNNRT_CONV_PARTS=rows, for A/B runs)
            if self.rows * n >= 2 * t or self.nb == 1:
                return super().parts(n, t)
            k = min(self.nb, -(-t // (n * self.rows)))
            return [(i, i + 1, r, r + 1, j * self.nb // k, (j + 1) * self.nb // k)
                    for i in range(n) for r in range(self.rows) for j in range(k)]
        b, k = self.split_choice(n, t)
        rows, nb = self.rows, self.nb
        return [(i, i + 1, q * rows // b, (q + 1) * rows // b, j * nb // k, (j + 1) * nb // k)
                for i in range(n) for q in range(b) for j in range(k)]

    def split_choice(self, n, t):
        """(bands of rows, groups of channel blocks) per image for n < t images on t threads.

        A part computes whole register blocks of PX pixels (a band of one 7-pixel row fills 2
        blocks of 6: 42% wasted) for each of its channel blocks, whose weights it reads once
        (1.2 MB per block in ResNet-18's last stage, from L3 when every thread reads its own).
        The parts go to the threads as they free up, so the time is about rounds of the largest
        part. Rates are round figures for one core (a multiply-add per lane and cycle at about
        2.5 GHz, 15 GB/s of L3 reads); only the comparison between splits matters."""
        key = (n, t)
        hit = self._splits.get(key)
        if hit is not None:
            return hit
        w = self.win
        px_row, rows, nb = w.wo, self.rows, self.nb
        px_blk = self.px
        macs_blk = px_blk * self.groups * self.vw * w.kh * w.kw * w.c  # one pixel block, one channel block
        wbytes = w.kh * w.kw * w.c * self.groups * self.vw * 4
        mac_rate, byte_rate, per_part = self.vw * 2.5e9, 15e9, 2e-6
        best = None
        for b in range(1, min(rows, 4 * t) + 1):
            blocks_px = -(-(-(-rows // b) * px_row) // px_blk)
            for k in range(1, nb + 1):
                parts = n * b * k
                if parts > 4 * t and best is not None:
                    break
                blk = -(-nb // k)
                cost = blocks_px * blk * macs_blk / mac_rate + blk * wbytes / byte_rate + per_part
                est = -(-parts // t) * cost
                if best is None or est < best[0] * (1 - 1e-9):
                    best = (est, b, k)
        self._splits[key] = best[1:]
        return best[1:]

    def tasks(self, ins, out, n, threads, keep):
        """This step on n images as parts for a compiled program (native.Task fields), or None
        where it has no compiled kernel. `keep` holds what the addresses point into."""
        if not self.kind.startswith("native."):
            return None
        e = Epilogue.bind(self.epi_t, self.res_idx, ins)
        keep.append(e)
        base = dict(x=ins[0].ctypes.data, w=self._wptr, y=out.ctypes.data, geo=self._gptr, e=ctypes.addressof(e))
        if self.kind == "native.depthwise":
            return [dict(base, kind=5, i0=q[0], i1=q[1], r0=q[2], r1=q[3], cpad_or_avg=self.cpad)
                    for q in Step.parts(self, n, threads)]
        if self.kind == "native.winograd":  # rows: tile rows
            return [dict(base, kind=(10 if self.m == 2 else 20) + self.groups, i0=q[0], i1=q[1], r0=q[2], r1=q[3],
                         b0=q[4] if len(q) > 4 else 0, b1=q[5] if len(q) > 4 else self.nb)
                    for q in self.parts(n, threads)]
        return [dict(base, kind=self.groups, i0=q[0], i1=q[1], r0=q[2], r1=q[3],
                     b0=q[4] if len(q) > 4 else 0, b1=q[5] if len(q) > 4 else self.nb, zeros=self._zptr)
                for q in self.parts(n, threads)]

    def _native_direct(self, ins, out, scr, i0, i1, r0, r1, b0=0, b1=None):
        x, xp, e, keep = self._native_args(ins)  # (x and keep stay referenced until the call returns)
        self.direct(xp, self._gptr, self._wptr, ptr(self._pc, "y", out), i0, i1, r0, r1, b0,
                    self.nb if b1 is None else b1, self._zptr, e)

    def _native_winograd(self, ins, out, scr, i0, i1, t0, t1, b0=0, b1=None):
        x, xp, e, keep = self._native_args(ins)  # (x and keep stay referenced until the call returns)
        self.wino(xp, self._gptr, self._wptr, ptr(self._pc, "y", out), i0, i1, t0, t1, b0,
                  self.nb if b1 is None else b1, e)

    def _native_depthwise(self, ins, out, scr, i0, i1, r0, r1):
        x, xp, e, keep = self._native_args(ins)  # (x and keep stay referenced until the call returns)
        self.lib.conv_depthwise(xp, self._gptr, self._wptr, ptr(self._pc, "y", out), i0, i1, r0, r1, self.cpad, e)

    def _winograd_setup(self, w, m, in_shape, attrs, out_shape):
        from .cpu_kernels import INTEGER_TRANSFORMS, winograd_matrices

        o, r, _, c = w.shape
        a = m + r - 1
        self.m, self.a = m, a
        self.th, self.tw = -(-out_shape[0] // m), -(-out_shape[1] // m)
        # the window over whole tiles: rows/columns past the input read as zeros
        self.win = Window(in_shape, r, r, (1, 1), (1, 1), tuple(attrs["pads"]), (self.th * m, self.tw * m))
        self.win.no_pad = False
        self.rows = self.th  # the unit of a row split: tile rows
        at, gm, bt = winograd_matrices(m, r, None, integer=INTEGER_TRANSFORMS)
        self.at, self.bt = at.astype(F32), bt.astype(F32)
        u = np.einsum("xa,oabc,yb->xyco", gm, w.astype(np.float64), gm)  # G w G^T, in float64, rounded once
        self.u = np.ascontiguousarray(u.reshape(a * a, c, o), dtype=F32)

    def _winograd(self, ins, out, scr, i0, i1, t0, t1):
        """Winograd F(m x m, r x r) over tile rows [t0, t1): tiles gathered, transformed (thin
        GEMMs, one axis at a time), a*a GEMMs over the channels, transformed back, cropped."""
        x, win, a, m, o = ins[0], self.win, self.a, self.m, self.o
        c, tw, ho, wo = win.c, self.tw, self.out_shape[0], self.out_shape[1]
        tmp = _tmp(scr, self.key)
        for ia, ib, ta, tb in blocks(i0, i1, t0, t1, self.th, tw * a * a * (c + o), BLOCK_BYTES // 2, tw):
            ni, tr = ib - ia, tb - ta
            t = ni * tr * tw
            xp = win.block_input(x, ia, ib, ta * m, tb * m, scr, (self.key, "xp"))
            s = xp.strides
            d = scr.get((self.key, "d"), (a, a, t * c))
            np.copyto(d.reshape(a, a, ni, tr, tw, c),
                      as_strided(xp, (a, a, ni, tr, tw, c), (s[1], s[2], s[0], m * s[1], m * s[2], s[3])))
            x3 = t * c
            v1 = scr.get((self.key, "v1"), (a, a, x3))
            np.matmul(self.bt, d.transpose(1, 0, 2), out=v1.transpose(1, 0, 2))
            np.matmul(self.bt, v1, out=d)  # d is free again: V = BT D B
            mm = scr.get((self.key, "m"), (a * a, t, o))
            np.matmul(d.reshape(a * a, t, c), self.u, out=mm)
            y3 = t * o
            y1 = scr.get((self.key, "y1"), (m, a, y3))
            np.matmul(self.at, mm.reshape(a, a, y3).transpose(1, 0, 2), out=y1.transpose(1, 0, 2))
            y = scr.get((self.key, "y"), (m, m, y3))
            np.matmul(self.at, y1, out=y)
            r0, r1 = ta * m, min(tb * m, ho)
            dst = out[ia:ib, r0:r1]
            full = y.reshape(m, m, ni, tr, tw, o).transpose(2, 3, 0, 4, 1, 5).reshape(ni, tr * m, tw * m, o)
            np.copyto(dst, full[:, :r1 - r0, :wo])
            self.epi(dst, ins, (slice(ia, ib), slice(r0, r1)), tmp)

    def work(self, n):
        return n * self.flops

    def run(self, ins, out, scr, i0, i1, r0, r1, *blocks_):
        getattr(self, "_" + self.kind.replace(".", "_"))(ins, out, scr, i0, i1, r0, r1, *blocks_)

    def _pointwise(self, ins, out, scr, i0, i1, r0, r1):
        x = ins[0]
        c, o = x.shape[3], self.o
        wo = self.out_shape[1]
        tmp = _tmp(scr, self.key)
        for ia, ib, ra, rb in blocks(i0, i1, r0, r1, self.rows, wo * (c + o), BLOCK_BYTES // 4, wo):
            y = out[ia:ib, ra:rb]
            np.matmul(x[ia:ib, ra:rb].reshape(-1, c), self.wt, out=y.reshape(-1, o))
            self.epi(y, ins, (slice(ia, ib), slice(ra, rb)), tmp)

    def _im2col(self, ins, out, scr, i0, i1, r0, r1):
        x, win, o = ins[0], self.win, self.o
        k = win.kh * win.kw * win.c
        tmp = _tmp(scr, self.key)
        for ia, ib, ra, rb in blocks(i0, i1, r0, r1, self.rows, win.wo * k, BLOCK_BYTES // 4, win.wo):
            xp = win.block_input(x, ia, ib, ra, rb, scr, (self.key, "xp"))
            rows = rb - ra
            npix = (ib - ia) * rows * win.wo
            cols = scr.get((self.key, "cols"), (npix, k))
            np.copyto(cols.reshape(ib - ia, rows, win.wo, win.kh, win.kw, win.c), win.patches(xp, rows))
            y = out[ia:ib, ra:rb]
            np.matmul(cols, self.wt, out=y.reshape(npix, o))
            self.epi(y, ins, (slice(ia, ib), slice(ra, rb)), tmp)

    def _depthwise(self, ins, out, scr, i0, i1, r0, r1):
        x, win = ins[0], self.win
        tmp = _tmp(scr, self.key)
        for ia, ib, ra, rb in blocks(i0, i1, r0, r1, self.rows, win.wo * win.c, BLOCK_BYTES // 8):
            xp = win.block_input(x, ia, ib, ra, rb, scr, (self.key, "xp"))
            rows = rb - ra
            y = out[ia:ib, ra:rb]
            t = scr.get((self.key, "dw"), y.shape)
            for i in range(win.kh):
                for j in range(win.kw):
                    v = win.tap(xp, i, j, rows)
                    wt = self.wd[i * win.kw + j]
                    if i == 0 and j == 0:
                        np.multiply(v, wt, out=y)
                    else:
                        np.multiply(v, wt, out=t)
                        np.add(y, t, out=y)
            self.epi(y, ins, (slice(ia, ib), slice(ra, rb)), tmp)

    def _grouped(self, ins, out, scr, i0, i1, r0, r1):
        x, win, g = ins[0], self.win, self.g
        cg = win.c // g
        og = self.o // g
        kg = win.kh * win.kw * cg
        tmp = _tmp(scr, self.key)
        for ia, ib, ra, rb in blocks(i0, i1, r0, r1, self.rows, win.wo * kg * g, BLOCK_BYTES // 4, win.wo):
            xp = win.block_input(x, ia, ib, ra, rb, scr, (self.key, "xp"))
            rows = rb - ra
            ni = ib - ia
            npix = ni * rows * win.wo
            s = xp.strides
            # patches in (group, pixel, tap, channel-in-group) order: one batched GEMM over groups
            src = as_strided(xp, (g, ni, rows, win.wo, win.kh, win.kw, cg),
                             (cg * s[3], s[0], win.sh * s[1], win.sw * s[2], win.dh * s[1], win.dw * s[2], s[3]))
            cols = scr.get((self.key, "cols"), (g, npix, kg))
            np.copyto(cols.reshape(g, ni, rows, win.wo, win.kh, win.kw, cg), src)
            res = scr.get((self.key, "gy"), (g, npix, og))
            np.matmul(cols, self.wg, out=res)
            y = out[ia:ib, ra:rb]
            np.copyto(y.reshape(npix, g, og), res.transpose(1, 0, 2))
            self.epi(y, ins, (slice(ia, ib), slice(ra, rb)), tmp)


class PoolStep(Step):
    """MaxPool / AveragePool (any window, stride, dilation, padding, ceil mode, count rule)."""

    def __init__(self, nodes, inputs, output, epilogue, in_shape, attrs, out_shape, kind):
        super().__init__(nodes, inputs, output, epilogue)
        kh, kw = attrs["kernel_shape"]
        self.max = kind == "max"
        self.win = Window(in_shape, kh, kw, tuple(attrs["strides"]), tuple(attrs["dilations"]),
                          tuple(attrs["pads"]), out_shape[:2], fill=-np.inf if self.max else 0.0)
        self.rows = out_shape[0]
        self.out_shape = out_shape
        self.kernel = "maxpool" if self.max else "avgpool"
        self.inv = None if self.max else np.ascontiguousarray(self._inverse_counts(attrs, in_shape, out_shape), F32)
        self.lib = native_lib()
        ne = self.epi.native() if self.lib is not None else None
        if ne is None:
            self.lib = None
        else:
            self.epi_t, self.res_idx = ne
            self.kernel = "native." + self.kernel
            w = self.win
            self.geo = np.array([w.h, w.w, w.c, w.kh, w.kw, w.sh, w.sw, w.dh, w.dw, w.pt, w.pl, w.ho, w.wo], np.intc)

    def tasks(self, ins, out, n, threads, keep):
        """As ConvStep.tasks."""
        if self.lib is None:
            return None
        e = Epilogue.bind(self.epi_t, self.res_idx, ins)
        keep.append(e)
        return [dict(kind=6, i0=q[0], i1=q[1], r0=q[2], r1=q[3], cpad_or_avg=int(not self.max), x=ins[0].ctypes.data,
                     y=out.ctypes.data, geo=self.geo.ctypes.data, e=ctypes.addressof(e),
                     inv=self.inv.ctypes.data if self.inv is not None else None)
                for q in self.parts(n, threads)]

    def _inverse_counts(self, a, in_shape, out_shape):
        """1 / (values in each window): padding counts when count_include_pad, the ceil-mode
        overhang never."""
        w = self.win
        incl = bool(a["count_include_pad"])

        def count(n_out, n_in, k, s, d, p0, p1):
            idx = np.arange(n_out)[:, None] * s - p0 + np.arange(k)[None, :] * d
            lo, hi = (-p0, n_in + p1) if incl else (0, n_in)
            return ((idx >= lo) & (idx < hi)).sum(axis=1)

        ch = count(out_shape[0], in_shape[0], w.kh, w.sh, w.dh, w.pt, w.pb)
        cw = count(out_shape[1], in_shape[1], w.kw, w.sw, w.dw, w.pl, w.pr)
        return (1.0 / np.maximum(ch[:, None] * cw[None, :], 1))[:, :, None]

    def work(self, n):
        return n * self.out_shape[0] * self.out_shape[1] * self.out_shape[2] * self.win.kh * self.win.kw

    def run(self, ins, out, scr, i0, i1, r0, r1):
        x, win = ins[0], self.win
        if self.lib is not None:
            x = x if x.flags.c_contiguous else np.ascontiguousarray(x)
            e = Epilogue.bind(self.epi_t, self.res_idx, ins)
            self.lib.pool2d(x.ctypes.data, win.h, win.w, win.c, win.kh, win.kw, win.sh, win.sw, win.dh, win.dw,
                            win.pt, win.pl, out.ctypes.data, win.ho, win.wo, i0, i1, r0, r1, int(not self.max),
                            self.inv.ctypes.data if self.inv is not None else None, ctypes.byref(e))
            return
        tmp = _tmp(scr, self.key)
        for ia, ib, ra, rb in blocks(i0, i1, r0, r1, self.rows, win.wo * win.c, BLOCK_BYTES // 8):
            xp = win.block_input(x, ia, ib, ra, rb, scr, (self.key, "xp"))
            rows = rb - ra
            y = out[ia:ib, ra:rb]
            first = True
            for i in range(win.kh):
                for j in range(win.kw):
                    v = win.tap(xp, i, j, rows)
                    if first:
                        np.copyto(y, v)
                        first = False
                    elif self.max:
                        np.maximum(y, v, out=y)
                    else:
                        np.add(y, v, out=y)
            if not self.max:
                np.multiply(y, self.inv[ra:rb], out=y)
            self.epi(y, ins, (slice(ia, ib), slice(ra, rb)), tmp)


class GapStep(Step):
    """GlobalAveragePool (+ Flatten) (+ Dense + epilogue): the classifier head in one step."""

    def __init__(self, nodes, inputs, output, epilogue, dense=None, flat=False, fp16=False, out_rank=4, in_shape=None):
        super().__init__(nodes, inputs, output, epilogue)
        self.dense = None
        self.fp16 = fp16
        self.out_rank = out_rank
        if dense is not None:
            w, b = dense
            self.wt = np.ascontiguousarray(w.T, dtype=F32)
            self.dense = True
            if b is not None:
                self.epi.ops.insert(0, ("bias", np.ascontiguousarray(b, dtype=F32)))
        self.kernel = "gap" + ("+flatten" if flat else "") + ("+dense" if dense is not None else "")
        # the pool alone, compiled: pool2d with one window over the whole map (in programs)
        self.lib = native_lib() if dense is None and not fp16 and in_shape is not None else None
        ne = self.epi.native() if self.lib is not None else None
        if ne is None:
            self.lib = None
        else:
            self.epi_t, self.res_idx = ne
            h, w_, c = in_shape
            self.geo = np.array([h, w_, c, h, w_, 1, 1, 1, 1, 0, 0, 1, 1], np.intc)
            self.inv = np.full((1, 1, 1), 1.0 / (h * w_), F32)
            self.kernel = "native." + self.kernel

    def tasks(self, ins, out, n, threads, keep):
        """One part per image (pool2d, as PoolStep.tasks), or None without the compiled kernels."""
        if self.lib is None:
            return None
        e = Epilogue.bind(self.epi_t, self.res_idx, ins)
        keep.append(e)
        return [dict(kind=6, i0=i, i1=i + 1, r0=0, r1=1, cpad_or_avg=1, x=ins[0].ctypes.data, y=out.ctypes.data,
                     geo=self.geo.ctypes.data, e=ctypes.addressof(e), inv=self.inv.ctypes.data) for i in range(n)]

    def run(self, ins, out, scr, i0, i1, r0, r1):
        x = ins[0][i0:i1]
        n, c = len(x), x.shape[-1]
        hw = int(np.prod(x.shape[1:-1]))
        if self.dense is None:
            y = out[i0:i1].reshape(n, c)
            np.add.reduce(x.reshape(n, hw, c), axis=1, out=y)
            y *= F32(1.0 / hw)
            self.epi(out[i0:i1], ins, slice(i0, i1), _tmp(scr, self.key))
            return
        m = scr.get((self.key, "m"), (n, c))
        np.add.reduce(x.reshape(n, hw, c), axis=1, out=m)
        m *= F32(1.0 / hw)
        if self.fp16:
            round16(m)
        y = out[i0:i1]
        np.matmul(m, self.wt, out=y)
        self.epi(y, ins, slice(i0, i1), _tmp(scr, self.key))




class DenseStep(Step):
    """Dense + bias + epilogue; with flat, on the (N, ...) input of a Flatten it took over (the
    rows of a contiguous NHWC tensor are its flattened images: a view, no step of its own)."""

    kernel = "dense"
    TASK_IMAGES = 4  # programs (a few images) run it in C, split over output columns; more: the
    # compiled kernel on the calling thread (BLAS where there is none, or CNNRT_DENSE_BLOCK=0)

    def __init__(self, nodes, inputs, output, epilogue, w, b, flat: bool = False):
        super().__init__(nodes, inputs, output, epilogue)
        self.wt = np.ascontiguousarray(w.T, dtype=F32)
        self.flat = flat
        if b is not None:
            self.epi.ops.insert(0, ("bias", np.ascontiguousarray(b, dtype=F32)))
        # big weights behind ReLU: only the rows of inputs non-zero in some image are multiplied
        self.sparse = self.wt.ndim == 2 and sparse_ok(self.wt)
        if self.sparse:
            self.kernel = "dense.skip-zero-inputs"
        self.lib = native_lib() if self.wt.ndim == 2 else None
        ne = self.epi.native() if self.lib is not None and hasattr(self.lib, "dense_block") else None
        if ne is None:
            self.lib = None
        else:
            self.epi_t, self.res_idx = ne
            self.finite = bool(np.isfinite(self.wt).all())  # zero inputs may be skipped
            self.geo = np.array(self.wt.shape, np.intc)
            # the weights in strips of `strip` columns, each contiguous (dense_block in kernels.c)
            self.strip = int(self.lib.cnnrt_dense_strip())
            k, n_out = self.wt.shape
            ns = -(-n_out // self.strip)
            wp = np.zeros((k, ns * self.strip), F32)
            wp[:, :n_out] = self.wt
            self.wp = aligned_copy(wp.reshape(k, ns, self.strip).transpose(1, 0, 2))
        # more images than a program takes: the compiled kernel too, rather than BLAS
        # (CNNRT_DENSE_BLOCK=0: BLAS, for A/B runs)
        self.block = self.lib is not None and DENSE_BLOCK
        if self.block:  # (it skips zero inputs too, 4 images at a time, where the weights are finite)
            self.kernel = "native.dense"

    @property
    def label(self) -> str:
        few = (f" (1-{self.TASK_IMAGES} images: native.dense)" if self.lib is not None and self.TASK_IMAGES
               and not self.block else "")
        return super().label + few

    def work(self, n):
        return n * self.wt.size

    def _run_block(self, ins, out, i0, i1) -> bool:
        """Rows i0..i1 through the compiled dense_block kernel (no packing copy of the weights,
        zero inputs of 4 rows at a time skipped); False where it does not apply (then BLAS)."""
        x, r = ins[0], ins[self.res_idx] if self.res_idx is not None else None
        k = self.wt.shape[0]
        if (x.dtype != F32 or out.dtype != F32 or not x.flags.c_contiguous or not out.flags.c_contiguous
                or x.size != len(x) * k or (r is not None and not (r.flags.c_contiguous and r.dtype == F32))):
            return False
        e = Epilogue.bind(self.epi_t, self.res_idx, ins)
        self.lib.dense_block(x.ctypes.data, self.geo.ctypes.data, self.wp.ctypes.data, out.ctypes.data, i0, i1, 0,
                             self.wt.shape[1], int(self.finite), ctypes.byref(e))
        return True

    def tasks(self, ins, out, n, threads, keep):
        """For a few images, parts of output columns for a compiled program (native.Task fields);
        None for more (BLAS is faster there) or without the compiled kernels."""
        if self.lib is None or n > self.TASK_IMAGES:
            return None
        e = Epilogue.bind(self.epi_t, self.res_idx, ins)
        keep.append(e)
        cols = self.wt.shape[1]
        per = -(-cols // max(threads, 1))
        per = -(-per // self.strip) * self.strip  # whole strips of the packed weights
        return [dict(kind=7, i0=0, i1=n, r0=0, r1=1, b0=c, b1=min(c + per, cols), cpad_or_avg=int(self.finite),
                     x=ins[0].ctypes.data, w=self.wp.ctypes.data, y=out.ctypes.data, geo=self.geo.ctypes.data,
                     e=ctypes.addressof(e))
                for c in range(0, cols, per)]

    def run(self, ins, out, scr, i0, i1, r0, r1):
        if self.block and self._run_block(ins, out, i0, i1):
            return
        y = out[i0:i1]
        x = ins[0][i0:i1]
        if self.flat:
            x = x.reshape(i1 - i0, -1)
        if self.sparse and x.ndim == 2:
            matmul_skipping_zeros(x, self.wt, y, scr, self.key)
        else:
            np.matmul(x, self.wt, out=y)
        self.epi(y, ins, slice(i0, i1), _tmp(scr, self.key))


class EltwiseStep(Step):
    """A binary op (with broadcasting) or a lone activation, then an epilogue of activations."""

    BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
              "Max": np.maximum, "Min": np.minimum}

    def __init__(self, nodes, inputs, output, epilogue, op, consts, batched):
        super().__init__(nodes, inputs, output, epilogue)
        self.op = op
        self.consts = consts  # per operand: a constant array or None (then the next activation input)
        self.batched = batched  # per operand: its dim 0 is the batch (sliced per block)
        self.kernel = op.lower() if op in self.BINARY else "activation"

    def run(self, ins, out, scr, i0, i1, r0, r1):
        args, k = [], 0
        for c, bt in zip(self.consts, self.batched):
            if c is not None:
                args.append(c)
            else:
                v = ins[k]
                args.append(v[i0:i1] if bt else v)
                k += 1
        y = out[i0:i1]
        if self.op in self.BINARY:
            self.BINARY[self.op](args[0], args[1], out=y)
        else:  # a lone activation: copy, then the epilogue applies it
            np.copyto(y, args[0])
        self.epi(y, ins, slice(i0, i1), _tmp(scr, self.key))


class SoftmaxStep(Step):
    """Softmax / LogSoftmax over the last axis, in the output buffer."""

    TASK_IMAGES = 4  # programs (a few images) run it in C (softmax_rows); more: NumPy

    def __init__(self, nodes, inputs, output, epilogue, log):
        super().__init__(nodes, inputs, output, epilogue)
        self.log = log
        self.kernel = "logsoftmax" if log else "softmax"
        lib = native_lib()
        self.lib = lib if lib is not None and hasattr(lib, "softmax_rows") and not self.epi.ops else None
        self._geo = {}

    @property
    def label(self) -> str:
        few = f" (1-{self.TASK_IMAGES} images: native.{self.kernel})" if self.lib is not None and self.TASK_IMAGES else ""
        return super().label + few

    def tasks(self, ins, out, n, threads, keep):
        """For a few images, one part for a compiled program (native.Task fields): the rows are
        short (a classifier's classes), not worth splitting. None for more images."""
        x = ins[0]
        if self.lib is None or n > self.TASK_IMAGES or x.ndim < 2 or not x.flags.c_contiguous:
            return None
        geo = np.array([x.shape[-1], int(np.prod(x.shape[1:-1], dtype=np.int64))], np.intc)
        keep.append(geo)
        return [dict(kind=8, i0=0, i1=n, r0=0, r1=1, cpad_or_avg=int(self.log), x=x.ctypes.data, y=out.ctypes.data,
                     geo=geo.ctypes.data)]

    def run(self, ins, out, scr, i0, i1, r0, r1):
        y = out[i0:i1]
        np.subtract(ins[0][i0:i1], ins[0][i0:i1].max(axis=-1, keepdims=True), out=y)
        if self.log:
            t = scr.get((self.key, "t"), y.shape)
            np.exp(y, out=t)
            y -= np.log(t.sum(axis=-1, keepdims=True))
        else:
            np.exp(y, out=y)
            y /= y.sum(axis=-1, keepdims=True)
        self.epi(y, ins, slice(i0, i1), _tmp(scr, self.key))


class GenericStep(Step):
    """One node through its registered fast kernel or its definition (cnnrt.ir.ops), unplanned:
    its outputs are whatever the function returns (views of its inputs for reshapes)."""

    def __init__(self, node, fn, params, fp16, kernel):
        super().__init__([node], [t for t in node.inputs if t not in params], node.outputs[0])
        self.node, self.fn, self.fp16 = node, fn, fp16

        def q(a):
            return a.astype(np.float16).astype(F32) if fp16 and a.dtype.kind == "f" else a
        self.args = [q(params[t]) if t in params else None for t in node.inputs]
        self.kernel = kernel

    def call(self, ins):
        it = iter(ins)
        args = [a if a is not None else next(it) for a in self.args]
        outs = self.fn(args, self.node.attrs)
        res = []
        for v in outs:
            v = np.asarray(v)
            if v.dtype.kind == "f":
                if v.dtype != F32:
                    v = v.astype(F32)
                if self.fp16:
                    v = v.astype(np.float16).astype(F32)
            res.append(v)
        return res


WINOGRAD = True
DIRECT = os.environ.get("CNNRT_DIRECT", "auto")  # compiled direct convolution: auto, all or none


def use_direct(kind, kh, kw, c, o, out_shape, strides) -> bool:
    """Whether the compiled direct convolution replaces the NumPy kernel `kind` for this layer."""
    if DIRECT in ("all", "none"):
        return DIRECT == "all"
    # measured on one core (benchmarks/cpu_profile.py): at or above NumPy's im2col and Winograd
    # kernels for every layer of the zoo, and above the BLAS for 1x1 ones (its epilogue is fused)
    return True


NATIVE_F4_SLACK = float(os.environ.get("CNNRT_NATIVE_F4_SLACK", "1.35"))


def native_winograd_tile(out_shape) -> int:
    """The compiled Winograd's tile for a layer winograd_tile gave one: F(4x4) where its tiles
    overhang the output by at most NATIVE_F4_SLACK (ResNet-18's 14x14 and 7x7: 1.31; its 36
    products per 16 outputs against F(2x2)'s 64 still win there), else F(2x2)."""
    ho, wo = out_shape[0], out_shape[1]
    return 4 if ho >= 4 and wo >= 4 and -(-ho // 4) * -(-wo // 4) * 16 <= NATIVE_F4_SLACK * ho * wo else 2


def winograd_tile(kh, kw, attrs, c, o, g, out_shape) -> int:
    """The Winograd output tile m for a convolution (0: none). Stride-1, undilated 3x3 over at
    least 8 channels in and out: F(4x4, 3x3) (4 times fewer multiplications than direct) where
    the tiles overhang the output by at most a quarter, F(2x2, 3x3) (2.25 times fewer) where
    theirs do by at most 35%; direct (im2col) otherwise. Both are as accurate as direct
    convolution to within a few float32 roundings (tests check them against float64)."""
    if (kh, kw) != (3, 3) or g != 1 or tuple(attrs["strides"]) != (1, 1) or tuple(attrs["dilations"]) != (1, 1):
        return 0
    if c < 8 or o < 8:
        return 0
    ho, wo = out_shape[0], out_shape[1]
    for m, slack in ((4, 1.25), (2, 1.35)):
        if ho >= 2 * m and wo >= 2 * m and (-(-ho // m) * -(-wo // m) * m * m) <= slack * ho * wo:
            return m
    return 0


def conv_out_shape(in_shape, w_shape, attrs):
    return tuple(O.OPS["Conv"].shape([(1, *in_shape), w_shape], attrs)[0][1:])
