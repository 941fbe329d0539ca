"""CPU kernels for the NumPy backend: chunk-sized convolutions with bias, activation and 2x2 pooling fused.

Every kernel here works on one chunk of images at a time, in float32, with buffers the caller owns
(a `Scratch`), so a chunk's data stays in the caches between the steps and nothing is allocated per
call once the buffers exist. Each is checked against `reference.py` in float64 by the tests.

Kernels:
- `Im2colConv`: any stride and padding. The patches of a chunk are gathered by one strided copy
  (transposed: (kh*kw*C, pixels), so that the inner copy runs along image rows) and multiplied by
  the weights in one GEMM. With a fusible 2x2/2 max-pool after it, the pool is taken on the GEMM
  output first and bias + ReLU come after, on 4 times fewer values (max commutes with adding a
  per-channel bias and with ReLU, also after rounding: rounding is monotonic).
- `WinogradConv`: stride-1 square kernels, Winograd F(m x m, r x r) (Lavin & Gray): the input
  tiles and the weights are transformed, (m + r - 1)^2 independent GEMMs over the channels replace
  the convolution, and the output transform gives m x m outputs per tile. F(2x2, 5x5) takes 36
  multiplications where direct convolution takes 100 for the same 4 outputs (2.8 times fewer);
  F(4x4, 5x5) 64 for 16 (6.25 times fewer, less on a 14x14 image: the tiles overhang it).
"""
from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..model import out_size, same_pads

F32 = np.float32
# Interpolation points (besides infinity) per (m, r). The fp32 error depends on them: for F(2x2,5x5)
# the usual (0, +-1, +-2) give 5e-7 relative error against float64 on ReLU-like inputs, while
# (0, +-3/2, +-2/3) give 2.3e-7, as good as direct convolution (2.5e-7); for F(4x4,5x5) the usual
# (0, +-1, +-2, +-1/2) were the best of 3,000 sets tried (7e-7). Found by a search over small
# rationals, `bench/cpu_kernels.py points`.
INTEGER_TRANSFORMS = True
H, T2, T3 = Fraction(1, 2), Fraction(3, 2), Fraction(2, 3)
POINTS = {(2, 5): (0, T2, -T2, T3, -T3),
          (2, 3): (0, 1, -1),
          (4, 3): (0, 1, -1, 2, -2),
          (3, 5): (0, 1, -1, 2, -2, H),
          (4, 5): (0, 1, -1, 2, -2, H, -H)}


def winograd_matrices(m: int, r: int, points=None, integer: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AT (m, a), G (a, r), BT (a, a)) in float64 for F(m, r), a = m + r - 1, with a - 1 finite
    points and the point at infinity (Toom-Cook, as in Lavin & Gray and wincnn).

    AT and G are built from the points; BT is then the unique solution of the bilinear identity
    y_i = sum_k d[i + k] g[k] = AT (G g * BT d), solved exactly here and checked.
    """
    a = m + r - 1
    if points is None:
        points = POINTS.get((m, r), (0, 1, -1, 2, -2, Fraction(1, 2), -Fraction(1, 2), 3, -3, Fraction(1, 3))[:a - 1])
    pts = [Fraction(p) for p in points]
    if len(pts) != a - 1 or len(set(pts)) != a - 1:
        raise ValueError(f"F({m},{r}) needs {a - 1} distinct finite points, got {pts}")
    at = [[p ** i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = []
    for j, pj in enumerate(pts):
        f = Fraction(1)
        for l, pl in enumerate(pts):
            if l != j:
                f *= pj - pl
        g.append([pj ** k / f for k in range(r)])
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    # linear system for BT: sum_j AT[i,j] G[j,k] BT[j,l] = [l == i + k], unknowns BT (a*a)
    at64, g64 = np.array(at, dtype=np.float64), np.array(g, dtype=np.float64)
    rows = np.zeros((m * r * a, a * a))
    rhs = np.zeros(m * r * a)
    q = 0
    for i in range(m):
        for k in range(r):
            for l in range(a):
                rows[q, l::a] = at64[i] * g64[:, k]
                rhs[q] = float(l == i + k)
                q += 1
    bt = np.linalg.lstsq(rows, rhs, rcond=None)[0].reshape(a, a)
    bt = np.round(bt * 2 ** 12 * 3 ** 6) / (2 ** 12 * 3 ** 6)  # small rationals: drop the solver's last bits
    if np.abs(rows @ bt.ravel() - rhs).max() > 1e-9:
        raise ValueError(f"no exact Winograd F({m},{r}) for points {pts}")
    if integer:
        # scale each Winograd point j: AT[:, j] * sa_j and BT[j] * sb_j with integers that clear
        # their denominators, G[j] / (sa_j sb_j): the data transforms become exact small-integer
        # arithmetic and all the rounding of the fractions lands in U, computed once in float64
        from math import lcm
        for j in range(a):
            sa = lcm(*[Fraction(v).limit_denominator(10 ** 4).denominator for v in at64[:, j]])
            sb = lcm(*[Fraction(v).limit_denominator(10 ** 4).denominator for v in bt[j]])
            at64[:, j] *= sa
            bt[j] *= sb
            g64[j] /= sa * sb
        at64, bt = np.round(at64), np.round(bt)
    return at64, g64, bt


# Dense layers with at least 1 MB of weights skip the weight rows of inputs that are zero in every
# row of the chunk when at most this fraction of the inputs is non-zero (gathering a weight row
# costs about what multiplying it costs for 2 rows, and 1/20 of what it costs for 128 rows).
SPARSE_MIN_WEIGHTS = 1 << 18
SPARSE_DENSITY_FEW = 0.5  # fewer than 32 rows
SPARSE_DENSITY_BATCH = 0.9  # 32 rows or more


def sparse_ok(wt: np.ndarray) -> bool:
    """Whether a (in, out) weight may skip zero inputs: big enough to pay, and finite (0 * inf is NaN)."""
    return wt.size >= SPARSE_MIN_WEIGHTS and bool(np.isfinite(wt).all())


def matmul_skipping_zeros(x: np.ndarray, wt: np.ndarray, y: np.ndarray, s: "Scratch", key) -> None:
    """y = x @ wt, multiplying only the weight rows of inputs that are non-zero in some row of x.

    After ReLU and max-pool most inputs are exact zeros (for the trained Deep MNIST's fc1: 88% of
    one image's inputs, 36% of those of 128 images together, a quarter never non-zero). For one
    image that cuts the GEMV's weight traffic (12.8 MB for fc1); for a chunk, the GEMM's work.
    Skipped terms are exact zeros (callers check with sparse_ok that the weights are finite)."""
    n, n_in = x.shape
    n_out = wt.shape[1]
    nz = ((x[0] != 0) if n == 1 else x.any(axis=0)).nonzero()[0]  # (bool: 4x faster than on floats)
    k = len(nz)
    if k > (SPARSE_DENSITY_BATCH if n >= 32 else SPARSE_DENSITY_FEW) * n_in:
        np.matmul(x, wt, out=y)
        return
    w = s.get((key, "w"), (wt.size,))[:k * n_out].reshape(k, n_out)
    np.take(wt, nz, axis=0, out=w, mode="clip")  # (nz is in range: no checks)
    if n == 1:
        xs = x[:, nz]
    else:
        xs = s.get((key, "xs"), (n * n_in,))[:n * k].reshape(n, k)
        np.take(x, nz, axis=1, out=xs, mode="clip")
    np.matmul(xs, w, out=y)


ALIGN = 64  # bytes: a cache line, and one AVX-512 vector
# for A/B runs only: start the buffers this many bytes past a line, as NumPy's often did
ALIGN_OFFSET = int(os.environ.get("CNNRT_ALIGN_OFFSET", "0")) % ALIGN


def aligned(size: int, zero: bool = False, dtype=F32) -> np.ndarray:
    """A flat array of `size` elements starting on a cache line. NumPy's own start 16 bytes past
    one as often as not, and then every 64-byte vector load or store of the compiled kernels
    straddles two lines (on Intel cores, where a split access costs two, that slowed them)."""
    item = np.dtype(dtype).itemsize
    raw = (np.zeros if zero else np.empty)(size * item + 2 * ALIGN, np.uint8)
    off = -raw.ctypes.data % ALIGN + ALIGN_OFFSET
    return raw[off:off + size * item].view(dtype)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    """a, C-contiguous, in a cache-line-aligned buffer."""
    out = aligned(a.size, dtype=a.dtype).reshape(a.shape)
    np.copyto(out, a)
    return out


class Scratch:
    """float32 buffers reused across calls (one Scratch per thread).

    `get(key, shape)` returns a view of one flat buffer per key, grown to the largest size asked
    for, so chunks of different sizes share it and nothing is allocated once it is big enough.
    With zero=True the buffer starts zeroed: callers that only ever write a fixed interior (the
    padded conv inputs, whose leading axis is the image) keep its border zero for any chunk size.
    """

    def __init__(self):
        self.flat: dict = {}
        self.views: dict = {}
        self.generation = 0  # counts reallocations: addresses taken before one may be stale

    def get(self, key, shape, zero=False) -> np.ndarray:
        v = self.views.get((key, shape))
        if v is not None:
            return v
        size = 1
        for d in shape:
            size *= d
        b = self.flat.get(key)
        if b is None or b.size < size:
            b = aligned(size, zero)
            self.flat[key] = b
            self.generation += 1
            self.views = {k: w for k, w in self.views.items() if k[0] != key}
        if len(self.views) > 256:
            self.views.clear()
        v = self.views[(key, shape)] = b[:size].reshape(shape)
        return v


def _fp16_round(a: np.ndarray) -> None:
    a[...] = a.astype(np.float16)


def pool_fusible(conv_out_hw: tuple[int, int], pool) -> bool:
    """A 2x2 stride-2 max-pool over an even-sized map: every window is whole, for SAME and VALID."""
    return (pool is not None and pool.size == 2 and pool.stride == 2
            and conv_out_hw[0] % 2 == 0 and conv_out_hw[1] % 2 == 0)


class ConvBase:
    """Shape bookkeeping common to the conv kernels: padded input buffer, output size."""

    def __init__(self, in_shape, weight, bias, stride, padding, activation, pool, fp16):
        self.h, self.w, self.c = in_shape
        self.o, self.kh, self.kw, _ = weight.shape
        self.stride, self.padding = stride, padding
        self.ho, self.wo = out_size(self.h, self.kh, stride, padding), out_size(self.w, self.kw, stride, padding)
        self.relu = activation == "relu"
        self.pool = pool_fusible((self.ho, self.wo), pool)
        self.fp16 = fp16
        self.bias = np.ascontiguousarray(bias, dtype=F32)
        self.out_shape = (self.ho // 2, self.wo // 2, self.o) if self.pool else (self.ho, self.wo, self.o)
        self.key = id(self)

    def _pads(self, hp_min: int, wp_min: int):
        (pt, _), (pl, _) = ((same_pads(self.h, self.kh, self.stride), same_pads(self.w, self.kw, self.stride))
                            if self.padding == "same" else ((0, 0), (0, 0)))
        return pt, pl, max(hp_min, pt + self.h), max(wp_min, pl + self.w)

    def padded_input(self, s: Scratch, n: int) -> np.ndarray:
        """The chunk's zero-bordered input buffer; callers write the interior (`interior`)."""
        return s.get((self.key, "xp"), (n, self.hp, self.wp, self.c), zero=True)

    def interior(self, xp: np.ndarray) -> np.ndarray:
        return xp[:, self.pt:self.pt + self.h, self.pl:self.pl + self.w, :]

    def _dest(self, s: Scratch, n: int, out):
        """Where the epilogue writes: `out` if contiguous, else a contiguous buffer copied to `out`
        at the end (ufuncs over a padded buffer's strided interior run at half speed)."""
        if out is not None and out.flags.c_contiguous:
            return out
        return s.get((self.key, "out"), (n, *self.out_shape))

    def _finish(self, y: np.ndarray, out=None, bias=True) -> np.ndarray:
        """Bias, activation and fp16 rounding in place on the (pooled) output y; copied into out."""
        if bias:
            y += self.bias
        if self.relu:
            np.maximum(y, 0, out=y)
        if self.fp16:
            _fp16_round(y)
        if out is None or out is y:
            return y
        out[...] = y
        return out

    def __call__(self, x: np.ndarray, s: Scratch, out: np.ndarray | None = None) -> np.ndarray:
        """x (n, H, W, C) float32 -> (n, *out_shape); `out` may be a strided view to write into."""
        xp = self.padded_input(s, len(x))
        self.interior(xp)[...] = x
        return self.run_padded(xp, s, out)


class Im2colConv(ConvBase):
    """Any Conv2D: one strided gather of the chunk's patches, one GEMM, pool/bias/activation fused."""

    def __init__(self, in_shape, weight, bias, stride=1, padding="same", activation="relu", pool=None, fp16=False):
        super().__init__(in_shape, weight, bias, stride, padding, activation, pool, fp16)
        s = stride
        self.pt, self.pl, self.hp, self.wp = self._pads((self.ho - 1) * s + self.kh, (self.wo - 1) * s + self.kw)
        # weights as (K + 1, O) with K ordered (ky, kx, c), the gather's order, and the bias as the
        # last row: the GEMM adds it (the patches get a row of ones), one pass fewer
        self.wmat = np.ascontiguousarray(np.vstack([weight.reshape(self.o, -1).T, self.bias[None]]), dtype=F32)

    def floats_per_image(self) -> int:
        """Scratch floats one image needs (patches and GEMM output): sizes the sub-chunks."""
        return self.ho * self.wo * (self.kh * self.kw * self.c + 1 + self.o) + self.hp * self.wp * self.c

    def run_padded(self, xp, s: Scratch, out=None):
        n = len(xp)
        st, s_ = xp.strides, self.stride  # (n, row, col, c) in bytes
        k = self.kh * self.kw * self.c
        if self.pool:
            # patches ordered (ky, kx, c | dy, dx, n, i, j): output pixel (2i + dy, 2j + dx)
            hh, wh = self.ho // 2, self.wo // 2
            shape = (self.kh, self.kw, self.c, 2, 2, n, hh, wh)
            strides = (st[1], st[2], st[3], s_ * st[1], s_ * st[2], st[0], 2 * s_ * st[1], 2 * s_ * st[2])
            npix = 4 * n * hh * wh
        else:
            shape = (self.kh, self.kw, self.c, n, self.ho, self.wo)
            strides = (st[1], st[2], st[3], st[0], s_ * st[1], s_ * st[2])
            npix = n * self.ho * self.wo
        cols = s.get((self.key, "cols"), (k + 1, npix))
        np.copyto(cols[:k].reshape(shape), as_strided(xp, shape, strides))
        cols[k] = 1.0
        y = s.get((self.key, "y"), (npix, self.o))
        np.matmul(cols.T, self.wmat, out=y)
        if self.pool:
            dst = self._dest(s, n, out)
            q = y.reshape(4, n, hh, wh, self.o)
            np.maximum(q[0], q[1], out=dst)
            np.maximum(dst, q[2], out=dst)
            np.maximum(dst, q[3], out=dst)
        else:
            dst = y.reshape(n, self.ho, self.wo, self.o)
        return self._finish(dst, out, bias=False)


class WinogradConv(ConvBase):
    """Stride-1 square-kernel Conv2D by Winograd F(m x m, r x r), pool/bias/activation fused."""

    def __init__(self, in_shape, weight, bias, padding="same", activation="relu", pool=None, fp16=False, m=2,
                 points=None):
        super().__init__(in_shape, weight, bias, 1, padding, activation, pool, fp16)
        r = self.kh
        if self.kw != r:
            raise ValueError("Winograd needs a square kernel")
        if self.pool and m % 2:
            self.pool = False
            self.out_shape = (self.ho, self.wo, self.o)
        self.m, self.r, self.a = m, r, m + r - 1
        self.th, self.tw = -(-self.ho // m), -(-self.wo // m)
        self.pt, self.pl, self.hp, self.wp = self._pads(self.th * m + r - 1, self.tw * m + r - 1)
        at, g, bt = winograd_matrices(m, r, points, integer=INTEGER_TRANSFORMS)
        self.at, self.bt = at.astype(F32), bt.astype(F32)
        # U[xi, nu, c, o] = (G w G^T) per (o, c), in float64 then rounded once
        u = np.einsum("xa,oabc,yb->xyco", g, weight.astype(np.float64), g)
        self.u = np.ascontiguousarray(u.reshape(self.a * self.a, self.c, self.o), dtype=F32)

    def floats_per_image(self) -> int:
        """Scratch floats one image needs (tiles twice, the a*a GEMMs' output): sizes the sub-chunks."""
        t = self.th * self.tw
        return self.a * self.a * t * (2 * self.c + self.o) + self.hp * self.wp * self.c

    def run_padded(self, xp, s: Scratch, out=None):
        n, a, m, c, o = len(xp), self.a, self.m, self.c, self.o
        st = xp.strides
        t = n * self.th * self.tw
        # 1. gather the overlapping a x a tiles: D[a1, a2, n, ty, tx, c]
        shape = (a, a, n, self.th, self.tw, c)
        d = s.get((self.key, "d"), (a, a * t * c))
        np.copyto(d.reshape(shape), as_strided(xp, shape, (st[1], st[2], st[0], m * st[1], m * st[2], st[3])))
        # 2. input transform V = BT D B, one axis at a time, as thin GEMMs batched over the other
        #    axis: a calls of (a, a) @ (a, t*c) each (measured: twice as fast as one call of
        #    (a, a) @ (a, a*t*c), whose operands leave the cache)
        x3 = t * c
        v1 = s.get((self.key, "v1"), (a, a * x3))
        np.matmul(self.bt, d.reshape(a, a, x3).transpose(1, 0, 2), out=v1.reshape(a, a, x3).transpose(1, 0, 2))
        v = d.reshape(a, a, x3)  # d is free again: reuse it
        np.matmul(self.bt, v1.reshape(a, a, x3), out=v)
        # 3. a*a independent GEMMs over the channels: M[p] = V[p] (t, c) @ U[p] (c, o)
        mm = s.get((self.key, "m"), (a * a, t, o))
        np.matmul(v.reshape(a * a, t, c), self.u, out=mm)
        # 4. output transform Y = AT M A, again one axis at a time, batched the same way
        y3 = t * o
        y1 = s.get((self.key, "y1"), (m, a * y3))
        np.matmul(self.at, mm.reshape(a, a, y3).transpose(1, 0, 2), out=y1.reshape(m, a, y3).transpose(1, 0, 2))
        y = s.get((self.key, "y"), (m, m, y3))
        np.matmul(self.at, y1.reshape(m, a, y3), out=y)
        y6 = y.reshape(m, m, n, self.th, self.tw, o)
        dst = self._dest(s, n, out)
        if self.pool:
            hh, wh = self.ho // 2, self.wo // 2
            if m == 2:
                q = y6.reshape(4, n, self.th, self.tw, o)
                np.maximum(q[0], q[1], out=dst)
                np.maximum(dst, q[2], out=dst)
                np.maximum(dst, q[3], out=dst)
            else:
                h2 = m // 2
                # Y[2pi + dy, 2pj + dx] -> pooled (n, ty, pi, tx, pj)
                yv = y6.reshape(h2, 2, h2, 2, n, self.th, self.tw, o)
                p = s.get((self.key, "p"), (h2, h2, n, self.th, self.tw, o))
                np.maximum(yv[:, 0, :, 0], yv[:, 0, :, 1], out=p)
                np.maximum(p, yv[:, 1, :, 0], out=p)
                np.maximum(p, yv[:, 1, :, 1], out=p)
                full = p.transpose(2, 3, 0, 4, 1, 5).reshape(n, self.th * h2, self.tw * h2, o)
                dst[...] = full[:, :hh, :wh]
        else:
            full = y6.transpose(2, 3, 0, 4, 1, 5).reshape(n, self.th * m, self.tw * m, o)
            dst[...] = full[:, :self.ho, :self.wo]
        return self._finish(dst, out)


class BlasThreads:
    """The BLAS's own thread count for the calling thread, where the BLAS lets us set it.

    The backend runs its own threads over chunks of images, so each GEMM must run on the thread
    that calls it: OpenBLAS's threads on top of ours compete for the same cores and, on a busy
    machine, wait out scheduler slices (`bench/cpu_kernels.py --blas-threads 2` runs the kernels
    with them). OpenBLAS >= 0.3.27 has `openblas_set_num_threads_local`, which changes only the
    calling thread (NumPy's wheels ship it); nothing global is touched. Elsewhere (another BLAS,
    no /proc) this is a no-op and the BLAS keeps its own threading.
    """

    def __init__(self):
        self._set = None
        try:
            import ctypes
            path = None
            with open("/proc/self/maps") as f:
                for line in f:
                    p = line.rsplit(" ", 1)[-1].strip()
                    if "openblas" in p.lower() and ".so" in p:
                        path = p
                        break
            if path:
                fn = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)
                if fn is not None:
                    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
                    self._set = fn
        except OSError:
            self._set = None

    @property
    def available(self) -> bool:
        return self._set is not None

    def set_local(self, n: int) -> int | None:
        """Threads for this thread's BLAS calls (0: back to the global setting); the old value."""
        return self._set(n) if self._set is not None else None


class ThreadPool:
    """A runner's worker threads: made on first use (one runner may never need them), shut down
    by close() or when the runner goes away."""

    def __init__(self, threads: int, name: str, initializer=None):
        import threading

        self.threads, self.name, self.initializer = threads, name, initializer
        self._pool = None
        self._lock = threading.Lock()

    def executor(self):
        with self._lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self.name,
                                                initializer=self.initializer)
            return self._pool

    def close(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait)
            self._pool = None

    def __del__(self):
        try:
            self.close(wait=False)
        except Exception:
            pass
