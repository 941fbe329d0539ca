"""CPU emulation of the persistent kernel's conv2 job at the fragment level (ldmatrix + mma.sync
m16n8k16 as the PTX ISA defines them), to desk-check its indexing without a GPU:

    python3 dev/cuda/emulate.py      # conv1 units on one image, then one group's conv2 jobs, vs float64

It found the first version's swizzle bug (images 196 pixels apart: odd images read with the wrong
XOR pattern); it now follows the 14x16-pixel layout with zero columns and packed column offsets.
"""
from __future__ import annotations

import numpy as np

W2ROW = 1616
ZB = 1152
ROW = 1024
ACT = 14 * ROW
OFF_ZB = 64 * W2ROW
OFF_ACT = OFF_ZB + ZB
SMEM = OFF_ACT + 4 * ACT + 4 * 2048 + 64


def build_smem(w2_64x800: np.ndarray, act: np.ndarray) -> np.ndarray:
    """Weights rows padded to 1616 B; act (nimg<=4, 14, 14, 32) fp16 as 14 rows of 16 pixels,
    chunks swizzled by column bits 1..2; zero band before the images."""
    smem = np.zeros(SMEM, np.uint8)
    w2 = w2_64x800.astype(np.float16)
    for row in range(64):
        smem[row * W2ROW:row * W2ROW + 1600] = w2[row].view(np.uint8)
    a = act.astype(np.float16)
    for im in range(len(a)):
        for y in range(14):
            for x in range(14):
                swz = (x >> 1) & 3
                for chunk in range(4):
                    off = OFF_ACT + im * ACT + y * ROW + x * 64 + ((chunk ^ swz) << 4)
                    smem[off:off + 16] = a[im, y, x, 8 * chunk:8 * chunk + 8].view(np.uint8)
    return smem


def _ldsm(smem, addrs):
    r = np.zeros((32, 4), np.uint32)
    for j in range(4):
        for t in range(32):
            a = addrs[8 * j + t // 4] + 4 * (t % 4)
            r[t, j] = smem[a:a + 4].view(np.uint32)[0]
    return r


def _h2(u):
    return np.array([u & 0xFFFF, u >> 16], np.uint16).view(np.float16).astype(np.float64)


def _mma(c, a, b0, b1):
    A, B = np.zeros((16, 16)), np.zeros((16, 8))
    for T in range(32):
        g, t = T >> 2, T & 3
        A[g, 2 * t:2 * t + 2] = _h2(a[T, 0]); A[g + 8, 2 * t:2 * t + 2] = _h2(a[T, 1])
        A[g, 2 * t + 8:2 * t + 10] = _h2(a[T, 2]); A[g + 8, 2 * t + 8:2 * t + 10] = _h2(a[T, 3])
        B[2 * t:2 * t + 2, g] = _h2(b0[T]); B[2 * t + 8:2 * t + 10, g] = _h2(b1[T])
    D = A @ B
    for T in range(32):
        g, t = T >> 2, T & 3
        c[T] += [D[g, 2 * t], D[g, 2 * t + 1], D[g + 8, 2 * t], D[g + 8, 2 * t + 1]]


def _sext(x, k):
    v = (int(x) >> (8 * k)) & 0xFF
    return v - 256 if v >= 128 else v


def conv2_job(smem, mstart, MT, nh, nwin, b2, feat):
    rb0, cols, oyv = (np.zeros((32, MT), np.int64) for _ in range(3))
    for lane in range(32):
        r, cA = lane & 15, lane >> 4
        for i in range(MT):
            w = 4 * (mstart + i) + ((r & 7) >> 1)
            if w < nwin:
                im, wi = divmod(w, 49)
                py, px = divmod(wi, 7)
                oy, ox = 2 * py + (r >> 3), 2 * px + (r & 1)
                rb0[lane, i] = OFF_ACT + im * ACT + (oy - 2) * ROW
                oyv[lane, i] = oy
                c = 0
                for kw in range(4):
                    ix = ox + kw - 2
                    c |= ((ix * 4 + (cA ^ ((ix >> 1) & 3))) & 0xFF) << (8 * kw)
                cols[lane, i] = c
            else:
                oyv[lane, i] = -64
    acc = np.zeros((MT, 4, 32, 4))
    bB = [(32 * nh + (l & 7) + ((l >> 4) << 3)) * W2ROW + ((l >> 3) & 1) * 16 for l in range(32)]
    zrow = OFF_ZB + 128
    for kh in range(5):
        rbase = np.where((oyv + kh - 2 >= 0) & (oyv + kh - 2 < 14), rb0 + kh * ROW, zrow)
        for kw in range(5):
            aa = np.zeros((MT, 32), np.int64)
            for i in range(MT):
                for l in range(32):
                    v = _sext(cols[l, i], kw) if kw < 4 else ((_sext(cols[l, i], 0) ^ 2) + 16)
                    aa[i, l] = rbase[l, i] + (v << 4)
            for h in range(2):
                b = [[None, None] for _ in range(4)]
                for q in range(2):
                    rr = _ldsm(smem, [bB[l] + (kh * 5 + kw) * 64 + h * 32 + q * 16 * W2ROW for l in range(32)])
                    b[2 * q] = [rr[:, 0], rr[:, 1]]
                    b[2 * q + 1] = [rr[:, 2], rr[:, 3]]
                for i in range(MT):
                    a = _ldsm(smem, [int(aa[i, l]) ^ (h << 5) for l in range(32)])
                    for nt in range(4):
                        _mma(acc[i, nt], a, b[nt][0], b[nt][1])
    for i in range(MT):
        for nt in range(4):
            v = np.maximum(acc[i, nt][:, [0, 1]], acc[i, nt][:, [2, 3]])
            v = np.maximum(v, v[np.arange(32) ^ 4])
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                w = 4 * (mstart + i) + (g >> 1)
                if g & 1 == 0 and w < nwin:
                    im, wi = divmod(w, 49)
                    ch = 32 * nh + 8 * nt + 2 * t
                    feat[im, wi * 64 + ch:wi * 64 + ch + 2] = np.maximum(v[lane] + b2[ch:ch + 2], 0)


def conv2_group(smem, nimg, b2):
    """The persistent kernel's phase 2 for one group: warp w -> channel half w&1, quarter w>>1."""
    feat = np.full((nimg, 3136), np.nan)
    nwin = 49 * nimg
    nm = (nwin + 3) // 4
    for warp in range(8):
        nh, q = warp & 1, warp >> 1
        ms, me = nm * q // 4, nm * (q + 1) // 4
        while ms < me:
            cnt = me - ms
            mt = 6 if cnt in (6, 12) else 7
            conv2_job(smem, ms, mt, nh, min(nwin, 4 * me), b2, feat)
            ms += mt
    return feat


def main():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from cnnrt.backends import reference as ref

    rng = np.random.default_rng()
    w2 = (rng.standard_normal((64, 5, 5, 32)) * 0.05).astype(np.float16)
    b2 = (rng.standard_normal(64) * 0.05).astype(np.float32)
    act = rng.random((3, 14, 14, 32)).astype(np.float16)
    feat = conv2_group(build_smem(w2.reshape(64, 800), act), 3, b2)
    want = ref.maxpool2d(ref.relu(ref.conv2d(act.astype(np.float64), w2.astype(np.float64), b2.astype(np.float64))))
    want = want.reshape(3, -1)
    errs = [float(np.linalg.norm(feat[i] - want[i]) / np.linalg.norm(want[i])) for i in range(3)]
    print(f"emulated conv2 job vs float64 reference, 3 images (one group): rel err {errs}, unwritten {int(np.isnan(feat).sum())}")
    assert max(errs) < 1e-6 and not np.isnan(feat).any()




def conv1_image(scr_u16: np.ndarray, w1f_u32: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """Emulate conv1_units on one image: scr_u16 the 32x32 padded fp16 scratch (as uint16),
    w1f_u32 the [64][16] B matrix; returns the pooled 14x14x32 output (float64)."""
    out = np.full((14, 14, 32), np.nan)
    flat = scr_u16.reshape(-1)

    def ld32(idx):
        return np.uint32(flat[idx]) | (np.uint32(flat[idx + 1]) << np.uint32(16))
    for u in range(25):
        acc = np.zeros((8, 32, 4))
        for s in range(2):
            a = np.zeros((32, 4), np.uint32)
            b0 = np.zeros((8, 32), np.uint32)
            b1r = np.zeros((8, 32), np.uint32)
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                w = 8 * u + g
                wc = min(w, 195)
                py, px = divmod(wc, 14)
                base = (2 * py) * 32 + 2 * px
                offs = []
                for q in range(2):
                    k = 16 * s + 2 * t + 8 * q
                    offs.append((k // 6) * 32 + (k % 6) if k < 30 else 0)
                a[lane] = [ld32(base + offs[0]), ld32(base + 32 + offs[0]), ld32(base + offs[1]), ld32(base + 32 + offs[1])]
                for nt in range(8):
                    b0[nt, lane] = w1f_u32[(8 * nt + g) * 16 + 8 * s + t]
                    b1r[nt, lane] = w1f_u32[(8 * nt + g) * 16 + 8 * s + t + 4]
            for nt in range(8):
                _mma(acc[nt], a, b0[nt], b1r[nt])
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            w = 8 * u + g
            if w < 196:
                py, px = divmod(w, 14)
                for nt in range(4):
                    for e in range(2):
                        v = max(acc[nt, lane, e], acc[nt, lane, 2 + e], acc[nt + 4, lane, e], acc[nt + 4, lane, 2 + e])
                        out[py, px, 8 * nt + 2 * t + e] = max(v + b1[8 * nt + 2 * t + e], 0)
    return out


def main_conv1():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from cnnrt.backends import reference as ref
    from cnnrt.backends.cuda import conv1_pair_weights

    rng = np.random.default_rng()
    w = (rng.standard_normal((32, 5, 5, 1)) * 0.2).astype(np.float32)
    b = (rng.standard_normal(32) * 0.1).astype(np.float32)
    img = rng.random((28, 28)).astype(np.float16)
    scr = np.zeros((32, 32), np.float16)
    scr[2:30, 2:30] = img
    got = conv1_image(scr.view(np.uint16), conv1_pair_weights(w).view(np.uint32).reshape(-1), b)
    want = ref.maxpool2d(ref.relu(ref.conv2d(img.astype(np.float64)[None, ..., None],
                                             w.astype(np.float16).astype(np.float64), b.astype(np.float64))))[0]
    err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    print(f"emulated conv1 units vs float64 reference: rel err {err:.1e}, unwritten {int(np.isnan(got).sum())}")
    assert err < 1e-6 and not np.isnan(got).any()


if __name__ == "__main__":
    main_conv1()
    main()
