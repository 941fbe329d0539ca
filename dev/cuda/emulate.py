"""CPU emulation of the persistent kernel's conv2 job at the fragment level (ldmatrix + mma.sync
m16n8k16 as the PTX ISA defines them), to desk-check its indexing without a GPU:

    python3 dev/cuda/emulate.py      # builds the shared-memory image, runs every conv2 job, compares

It found the first version's swizzle bug (images 196 pixels apart: odd images read with the wrong
XOR pattern); images now sit 200 pixels apart.
"""
from __future__ import annotations

import numpy as np

W2ROW = 1616
ACT_PIX = 200
ACT = ACT_PIX * 64
OFF_ACT = 64 * W2ROW
OFF_ZERO = OFF_ACT + 2 * 4 * ACT + 8 * 2048
SMEM = OFF_ZERO + 64 + 16


def build_smem(w2_64x800: np.ndarray, act: np.ndarray) -> np.ndarray:
    """Weights rows padded to 1616 B; act (nimg<=4, 14, 14, 32) fp16 into group buffer 0, swizzled."""
    smem = np.zeros(SMEM, np.uint8)
    w2 = w2_64x800.astype(np.float16)
    for row in range(64):
        smem[row * W2ROW:row * W2ROW + 1600] = w2[row].view(np.uint8)
    a = act.astype(np.float16)
    for im in range(len(a)):
        for p in range(196):
            y, x = divmod(p, 14)
            swz = (p >> 1) & 3
            for chunk in range(4):
                off = OFF_ACT + im * ACT + p * 64 + ((chunk ^ swz) << 4)
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


def _a_row_addr(pb, oy, ox, kh, kw, c):
    iy, ix, p = oy + kh - 2, ox + kw - 2, pb + (kh - 2) * 14 + (kw - 2)
    if 0 <= iy < 14 and 0 <= ix < 14:
        return OFF_ACT + p * 64 + ((c ^ ((p >> 1) & 3)) << 4)
    return OFF_ZERO + (c << 4)


def conv2_job(smem, mh, nh, nwin, b2, feat):
    pb, oy, ox = (np.zeros((32, 7), int) for _ in range(3))
    for lane in range(32):
        r = lane & 15
        for i in range(7):
            w = 4 * (7 * mh + i) + ((r & 7) >> 1)
            if w < nwin:
                im, wi = divmod(w, 49)
                py, px = divmod(wi, 7)
                oy[lane, i], ox[lane, i] = 2 * py + (r >> 3), 2 * px + (r & 1)
                pb[lane, i] = im * ACT_PIX + oy[lane, i] * 14 + ox[lane, i]
            else:
                oy[lane, i] = ox[lane, i] = -64
    acc = np.zeros((7, 4, 32, 4))
    bB = [(32 * nh + (l & 7) + ((l >> 4) << 3)) * W2ROW + ((l >> 3) & 1) * 16 for l in range(32)]
    for kh in range(5):
        for kw in range(5):
            aa = [[_a_row_addr(pb[l, i], oy[l, i], ox[l, i], kh, kw, l >> 4) for l in range(32)] for i in range(7)]
            for h in range(2):
                b = [[None, None] for _ in range(4)]
                for q in range(2):
                    rr = _ldsm(smem, [bB[l] + (kh * 5 + kw) * 64 + h * 32 + q * 16 * W2ROW for l in range(32)])
                    b[2 * q] = [rr[:, 0], rr[:, 1]]
                    b[2 * q + 1] = [rr[:, 2], rr[:, 3]]
                for i in range(7):
                    a = _ldsm(smem, [aa[i][l] ^ (h << 5) for l in range(32)])
                    for nt in range(4):
                        _mma(acc[i, nt], a, b[nt][0], b[nt][1])
    for i in range(7):
        for nt in range(4):
            v = np.maximum(acc[i, nt][:, [0, 1]], acc[i, nt][:, [2, 3]])
            v = np.maximum(v, v[np.arange(32) ^ 4])
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                w = 4 * (7 * mh + i) + (g >> 1)
                if g & 1 == 0 and w < nwin:
                    im, wi = divmod(w, 49)
                    ch = 32 * nh + 8 * nt + 2 * t
                    feat[im, wi * 64 + ch:wi * 64 + ch + 2] = np.maximum(v[lane] + b2[ch:ch + 2], 0)


def conv2_group(smem, nimg, b2):
    feat = np.full((nimg, 3136), np.nan)
    nwin = 49 * nimg
    nm = (nwin + 3) // 4
    for j in range(2 * ((nm + 6) // 7)):
        conv2_job(smem, j >> 1, j & 1, nwin, b2, feat)
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


if __name__ == "__main__":
    main()
