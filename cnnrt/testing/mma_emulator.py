"""The tensor-core conv kernel (cuda_codegen.mma_conv_kernel) emulated thread by thread on the CPU.

It follows the CUDA source's index expressions: which 16-byte chunk of A (im2col rows) and B
(packed weights) each thread loads for a K step and where it stores it in shared memory, the
lane addresses of every ldmatrix.x4, the m16n8k16 fragment layouts of mma.sync as the PTX ISA
defines them, and which output element each accumulator register is written to. Shared memory
starts poisoned with NaN and the output with NaN, and every element must be written exactly once,
so a chunk stored to the wrong place, a fragment read from padding or an uncovered output shows
up against the float64 convolution. dev/cuda/emulate.py does the same for the Deep MNIST kernels.
"""
from __future__ import annotations

import numpy as np

from cnnrt.backends import cuda_codegen as G

NAN16 = np.uint16(0x7E00)


def cdiv(a, b):
    return -(-a // b)


def _ldsm_x4(sm: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """ldmatrix.sync.aligned.m8n8.x4.b16 from a 2-D half array: lane L gives the start (row, col) of
    row L%8 of matrix L//8; thread T receives, of matrix j, row T//4, halves 2*(T%4) and 2*(T%4)+1.
    Returns (32, 4, 2) uint16: [thread, register, low/high half]."""
    assert rows.shape == cols.shape == (32,)
    out = np.empty((32, 4, 2), np.uint16)
    T = np.arange(32)
    for j in range(4):
        src = 8 * j + T // 4
        c0 = cols[src] + 2 * (T % 4)
        assert (c0 + 1 < sm.shape[1]).all()
        out[:, j, 0] = sm[rows[src], c0]
        out[:, j, 1] = sm[rows[src], c0 + 1]
    return out


def _f(h: np.ndarray) -> np.ndarray:
    return h.view(np.float16).astype(np.float64)


def _mma(c: np.ndarray, a: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> None:
    """mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: c (32, 4) += A (16x16) . B (16x8) with the
    PTX fragment layouts; a (32, 4, 2), b0/b1 (32, 2) halves."""
    A, B = np.full((16, 16), np.nan), np.full((16, 8), np.nan)
    T = np.arange(32)
    g, t = T >> 2, T & 3
    for r in range(2):
        A[g, 2 * t + r] = _f(a[:, 0, r])
        A[g + 8, 2 * t + r] = _f(a[:, 1, r])
        A[g, 2 * t + 8 + r] = _f(a[:, 2, r])
        A[g + 8, 2 * t + 8 + r] = _f(a[:, 3, r])
        B[2 * t + r, g] = _f(b0[:, r])
        B[2 * t + 8 + r, g] = _f(b1[:, r])
    D = A @ B
    c[:, 0] += D[g, 2 * t]
    c[:, 1] += D[g, 2 * t + 1]
    c[:, 2] += D[g + 8, 2 * t]
    c[:, 3] += D[g + 8, 2 * t + 1]


def run(tile: G.MmaTile, variant: str, x: np.ndarray, wq: np.ndarray, bias: np.ndarray, *, KH: int, KW: int,
        sh: int, sw: int, ph: int, pw: int, dh: int, dw: int, Ho: int, Wo: int, kts: int | None = None,
        stages: int = 0, coalesce: bool = True) -> np.ndarray:
    """The kernel's output (N*Ho*Wo, O) before the epilogue's ops (acc + bias), float64.
    x: (N, H, W, C) float16; wq: (O, Kp) float16 as the planner packs it.
    kts: the split-K variant, `kts` K steps per block along grid.z: returns the partial sums
    (S, N*Ho*Wo, O) that it writes to its workspace, without bias.
    stages: 0 the register-staged double buffer; 2 and up the cp.async pipeline's schedule (the
    prologue fills stages 0..stages-2, then step kt + stages - 1 goes into the stage step kt - 1
    was read from, before step kt is computed), so a stage overwritten while still needed shows.
    coalesce: the staged epilogue (accumulator pairs to a shared fp32 tile, then each thread 8
    consecutive channels of one pixel); split-K always stores directly."""
    N, H, W, C = x.shape
    O, Kp = wq.shape
    K = KH * KW * C
    BM, BN, BK, TH = tile.bm, tile.bn, tile.bk, tile.threads
    WARPS_N = tile.warps_n
    WTM, WTN = BM // tile.warps_m, BN // WARPS_N
    MI, NI = WTM // 16, WTN // 8
    LDS = BK + G.MMA_PAD
    KC = BK // 8
    A_CH, B_CH = BM * KC, BN * KC
    A_IT, B_IT = cdiv(A_CH, TH), cdiv(B_CH, TH)
    AVAR = G.MMA_AVARIANTS.index(variant)
    assert TH % KC == 0 and Kp % BK == 0 and Kp >= K
    xf = np.ascontiguousarray(x, np.float16).reshape(-1).view(np.uint16)
    wf = np.ascontiguousarray(wq, np.float16).reshape(-1).view(np.uint16)
    HWo = Ho * Wo
    M = N * HWo
    tid = np.arange(TH)
    q = tid % KC
    KT_ALL = cdiv(K, BK)
    S = 1 if kts is None else cdiv(KT_ALL, kts)
    ys = np.full((S, M * O), np.nan)
    eight = np.arange(8)
    for bz, bx, by in ((z, a, b) for z in range(S) for a in range(cdiv(M, BM)) for b in range(cdiv(O, BN))):
            kt_lo = 0 if kts is None else bz * kts
            KT = KT_ALL if kts is None else min(KT_ALL, kt_lo + kts)
            y = ys[bz]
            m0, o0 = bx * BM, by * BN
            a_h = np.full((A_IT, TH), -(1 << 28))
            a_w = np.full((A_IT, TH), -(1 << 28))
            a_base = np.zeros((A_IT, TH), np.int64)
            for i in range(A_IT):
                e = tid + i * TH
                m = m0 + e // KC
                ok = (e < A_CH) & (m < M)
                n = m // HWo
                rem = m - n * HWo
                ho = rem // Wo
                wo = rem - ho * Wo
                a_h[i] = np.where(ok, ho * sh - ph, a_h[i])
                a_w[i] = np.where(ok, wo * sw - pw, a_w[i])
                a_base[i] = np.where(ok, n.astype(np.int64) * H * W * C, 0)

            def load(kt):
                k = kt * BK + q * 8
                ra = np.zeros((A_IT, TH, 8), np.uint16)
                rb = np.zeros((B_IT, TH, 8), np.uint16)
                for i in range(A_IT):
                    if AVAR == 2:  # one division, then (kh, kw, c) stepped in K order, as the kernel does
                        tap = k // C
                        c = k - tap * C
                        kh = tap // KW
                        kw = tap - kh * KW
                        for j in range(8):
                            kk = k + j
                            hi, wi = a_h[i] + kh * dh, a_w[i] + kw * dw
                            ok = (kk < K) & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
                            addr = a_base[i] + (hi.astype(np.int64) * W + wi) * C + c
                            ra[i, :, j] = np.where(ok, xf[np.where(ok, addr, 0)], 0)
                            c = c + 1
                            wrap = c == C
                            c = np.where(wrap, 0, c)
                            kw = kw + wrap
                            wrap2 = kw == KW
                            kw = np.where(wrap2, 0, kw)
                            kh = kh + wrap2
                    else:
                        c, kh, kw = k, 0, 0
                        if AVAR == 0:
                            tap = k // C
                            c = k - tap * C
                            kh = tap // KW
                            kw = tap - kh * KW
                        hi, wi = a_h[i] + kh * dh, a_w[i] + kw * dw
                        ok = (k < K) & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
                        addr = a_base[i] + (hi.astype(np.int64) * W + wi) * C + c
                        assert (addr[ok] % 8 == 0).all(), "a 16-byte load of x is not 16-byte aligned"
                        assert (addr[ok] + 8 <= xf.size).all(), "a load past the end of x"
                        idx = np.where(ok, addr, 0)[:, None] + eight
                        ra[i] = np.where(ok[:, None], xf[np.minimum(idx, xf.size - 1)], 0)
                for j in range(B_IT):
                    e = tid + j * TH
                    o = o0 + e // KC
                    ok = (e < B_CH) & (o < O)
                    addr = o.astype(np.int64) * Kp + kt * BK + q * 8
                    assert (addr[ok] + 8 <= wf.size).all()
                    idx = np.where(ok, addr, 0)[:, None] + eight
                    rb[j] = np.where(ok[:, None], wf[np.minimum(idx, wf.size - 1)], 0)
                return ra, rb

            nbuf = max(2, stages)
            As = np.full((nbuf, BM, LDS), NAN16, np.uint16)
            Bs = np.full((nbuf, BN, LDS), NAN16, np.uint16)

            def store(buf, ra, rb):
                for i in range(A_IT):
                    e = tid + i * TH
                    for t in np.nonzero(e < A_CH)[0]:
                        As[buf, e[t] // KC, q[t] * 8:q[t] * 8 + 8] = ra[i, t]
                for j in range(B_IT):
                    e = tid + j * TH
                    for t in np.nonzero(e < B_CH)[0]:
                        Bs[buf, e[t] // KC, q[t] * 8:q[t] * 8 + 8] = rb[j, t]

            nw = TH // 32
            acc = np.zeros((nw, MI, NI, 32, 4))
            lane = np.arange(32)
            if stages:
                assert AVAR != 2, "cp.async needs the 16-byte gathers"
                for st in range(stages - 1):
                    if kt_lo + st < KT:
                        store(st, *load(kt_lo + st))
                rd, wr = 0, stages - 1
            else:
                store(0, *load(kt_lo))
            for kt in range(kt_lo, KT):
                if stages:
                    if kt + stages - 1 < KT:
                        store(wr, *load(kt + stages - 1))
                    buf, nxt = rd, None
                    rd, wr = (rd + 1) % stages, (wr + 1) % stages
                else:
                    buf = (kt - kt_lo) & 1
                    nxt = load(kt + 1) if kt + 1 < KT else None
                for warp in range(nw):
                    wm, wn = warp // WARPS_N, warp % WARPS_N
                    for ks in range(BK // 16):
                        af = [_ldsm_x4(As[buf], wm * WTM + i * 16 + (lane & 15), ks * 16 + (lane >> 4) * 8)
                              for i in range(MI)]
                        bf = [None] * NI
                        for j in range(NI // 2):
                            r = _ldsm_x4(Bs[buf], wn * WTN + j * 16 + (lane & 7) + ((lane >> 4) << 3),
                                         ks * 16 + ((lane >> 3) & 1) * 8)
                            bf[2 * j] = (r[:, 0], r[:, 1])
                            bf[2 * j + 1] = (r[:, 2], r[:, 3])
                        for i in range(MI):
                            for j in range(NI):
                                _mma(acc[warp, i, j], af[i], *bf[j])
                if nxt is not None:
                    store(buf ^ 1, *nxt)
            gq, tq = lane >> 2, lane & 3
            if coalesce and not kts:
                LDC = BN + 4
                Cs = np.full((BM, LDC), np.nan)
                for warp in range(nw):
                    wm, wn = warp // WARPS_N, warp % WARPS_N
                    for i in range(MI):
                        for hr in range(2):
                            for j in range(NI):
                                r = wm * WTM + i * 16 + gq + 8 * hr
                                col = wn * WTN + j * 8 + 2 * tq
                                assert np.isnan(Cs[r, col]).all() and np.isnan(Cs[r, col + 1]).all()
                                Cs[r, col] = acc[warp, i, j, :, 2 * hr]
                                Cs[r, col + 1] = acc[warp, i, j, :, 2 * hr + 1]
                CG = BN // 8
                for t in range(BM * CG):  # every (row, 8-channel group), whichever thread takes it
                    r, g = divmod(t, CG)
                    m, cb = m0 + r, o0 + g * 8
                    if m >= M or cb >= O:
                        continue
                    vals = Cs[r, g * 8:g * 8 + 8]
                    assert np.isfinite(vals[:min(8, O - cb)]).all(), "a staged accumulator not written"
                    for e in range(min(8, O - cb)):
                        idx = m * O + cb + e
                        assert np.isnan(y[idx]), "an output element written twice"
                        y[idx] = vals[e] + bias[cb + e]
                continue
            for warp in range(nw):
                wm, wn = warp // WARPS_N, warp % WARPS_N
                for i in range(MI):
                    for hr in range(2):
                        m = m0 + wm * WTM + i * 16 + gq + 8 * hr
                        for j in range(NI):
                            for e in range(2):
                                c = o0 + wn * WTN + j * 8 + 2 * tq + e
                                ok = (m < M) & (c < O)
                                idx = m[ok].astype(np.int64) * O + c[ok]
                                assert np.isnan(y[idx]).all(), "an output element written twice"
                                y[idx] = acc[warp, i, j, ok, 2 * hr + e] + (0 if kts else bias[c[ok]])
    return ys.reshape(M, O) if kts is None else ys.reshape(S, M, O)


def _ldsm_x4_b32(sm: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """ldmatrix .x4 .b16 on 32-bit data (a (rows, words) uint32 array): each 8x8 b16 matrix is 8 rows
    of 4 words; thread T receives, of matrix j, row T//4, word T%4. Returns (32, 4) uint32."""
    out = np.empty((32, 4), np.uint32)
    T = np.arange(32)
    for j in range(4):
        src = 8 * j + T // 4
        assert (cols[src] + 3 < sm.shape[1]).all()
        out[:, j] = sm[rows[src], cols[src] + T % 4]
    return out


def _tf32(bits: np.ndarray) -> np.ndarray:
    """The tf32 value the tensor core reads from a 32-bit register: the low 13 bits ignored."""
    return (bits.astype(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32).astype(np.float64)


def _mma1688(c: np.ndarray, a: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> None:
    """mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: c (32, 4) += A (16x8) . B (8x8), fragments
    as the PTX ISA lays them out; a (32, 4), b0/b1 (32,) 32-bit patterns."""
    A, B = np.full((16, 8), np.nan), np.full((8, 8), np.nan)
    T = np.arange(32)
    g, t = T >> 2, T & 3
    A[g, t], A[g + 8, t], A[g, t + 4], A[g + 8, t + 4] = (_tf32(a[:, r]) for r in range(4))
    B[t, g], B[t + 4, g] = _tf32(b0), _tf32(b1)
    D = A @ B
    c[:, 0] += D[g, 2 * t]
    c[:, 1] += D[g, 2 * t + 1]
    c[:, 2] += D[g + 8, 2 * t]
    c[:, 3] += D[g + 8, 2 * t + 1]


def _rna(v: np.ndarray) -> np.ndarray:
    """cvt.rna.tf32.f32 on float32 values, as 32-bit patterns."""
    return G.tf32_round(v).view(np.uint32)


def _halo_blocks(g: G.HaloGeom, t: G.HaloTile, N: int, O: int):
    """Each block's (n0, ho0, o0, nimgs, m0, M) as the kernels compute them from blockIdx."""
    HWo = g.Ho * g.Wo
    for bx in range(t.blocks(g, N)):
        for by in range(-(-O // t.bn)):
            n0, ho0, o0 = (bx // t.bands(g)) * t.imgs, (bx % t.bands(g)) * t.rows, by * t.bn
            nimgs, rows = min(t.imgs, N - n0), min(t.rows, g.Ho - ho0)
            m0 = (n0 * g.Ho + ho0) * g.Wo
            yield n0, ho0, o0, nimgs, m0, m0 + (nimgs - 1) * HWo + rows * g.Wo


def _halo_footprint(g: G.HaloGeom, t: G.HaloTile, xbits: np.ndarray, n0: int, ho0: int, nimgs: int,
                    nan) -> np.ndarray:
    """The block's footprint in shared memory, 16-byte chunk by chunk as the copy loop stores them
    (swizzled, zero outside the image), then the all-zero position; a chunk stored twice fails."""
    el = 16 // t.esize
    cpp = g.C // el
    sws, swm = G.halo_swizzle(g.C, t.esize)
    thi, twi, npos = t.th_in(g), t.tw_in(g), t.positions(g)
    Xs = np.full(((npos + 1) * cpp, el), nan, xbits.dtype)
    for e in range(npos * cpp):  # every chunk, whichever thread copies it
        j, P = e % cpp, e // cpp
        img, rem = divmod(P, thi * twi)
        ri, wi = divmod(rem, twi)
        hi, wg = ho0 * g.sh - g.ph + ri, wi - g.pw
        ok = img < nimgs and 0 <= hi < g.H and 0 <= wg < g.W
        dst = P * cpp + (j ^ ((P >> sws) & swm))
        assert (Xs[dst] == nan).all(), "a footprint chunk stored twice"
        src = (((n0 + img) * g.H + hi) * g.W + wg) * g.C + j * el
        Xs[dst] = xbits[src:src + el] if ok else 0
    Xs[npos * cpp] = 0
    return Xs


def _halo_positions(g: G.HaloGeom, t: G.HaloTile, m0: int, M: int) -> dict:
    """{(warp, i): each lane's footprint position of its pixel's tap (0, 0), -1 past the block's pixels}."""
    lane = np.arange(32)
    pos = {}
    for warp in range(t.warps_m(g) * t.warps_n):
        wm = warp // t.warps_n
        for i in range(2):
            p = wm * 32 + i * 16 + (lane & 15)
            img, rem = p // (t.rows * g.Wo), p % (t.rows * g.Wo)
            r, wo = rem // g.Wo, rem % g.Wo
            pos[warp, i] = np.where(m0 + p < M, (img * t.th_in(g) + r * g.sh) * t.tw_in(g) + wo * g.sw, -1)
    return pos


def _halo_a_rows(g: G.HaloGeom, t: G.HaloTile, pos: np.ndarray, ks: int) -> np.ndarray:
    """The footprint chunk each lane's ldmatrix row reads at K step ks (the zero position past K or
    for a padded pixel)."""
    el = 16 // t.esize
    cpp = g.C // el
    sws, swm = G.halo_swizzle(g.C, t.esize)
    npos = t.positions(g)
    lane = np.arange(32)
    k = (2 * ks + (lane >> 4)) * el
    tap, c = k // g.C, k % g.C
    kh, kw = tap // g.KW, tap % g.KW
    P = pos + kh * g.dh * t.tw_in(g) + kw * g.dw
    live = (pos >= 0) & (k < g.KH * g.KW * g.C)
    u = np.where(live, P * cpp + ((c // el) ^ ((P >> sws) & swm)), npos * cpp)
    assert ((u >= 0) & (u <= npos * cpp)).all(), "an ldmatrix row outside the footprint"
    return u


def _halo_store(y: np.ndarray, acc: np.ndarray, g: G.HaloGeom, t: G.HaloTile, m0: int, M: int, o0: int, O: int,
                bias: np.ndarray) -> None:
    """acc + bias to the outputs the epilogue's indices name; an output written twice fails."""
    lane = np.arange(32)
    gq, tq = lane >> 2, lane & 3
    wtn = t.bn // t.warps_n
    for warp in range(acc.shape[0]):
        wm, wn = warp // t.warps_n, warp % t.warps_n
        for i in range(2):
            for hr in range(2):
                m = m0 + wm * 32 + i * 16 + gq + 8 * hr
                for j3 in range(wtn // 8):
                    for e in range(2):
                        c = o0 + wn * wtn + j3 * 8 + 2 * tq + e
                        ok = (m < M) & (c < O)
                        idx = m[ok].astype(np.int64) * O + c[ok]
                        assert np.isnan(y[idx]).all(), "an output element written twice"
                        y[idx] = acc[warp, i, j3, ok, 2 * hr + e] + bias[c[ok]]


def _weight_chunks(t: G.HaloTile, KS: int, parts, O: int, Kp: int, nan):
    """The weight stages of a halo block and load_b(ch, st, o0): chunk ch of every part (K steps
    ch * kch ..; the whole K when resident) into stage st, zero past Kp and O, the stage's old
    contents gone first."""
    el = 16 // t.esize
    kch = t.kch if t.bstages else KS
    ldb = kch * t.kstep + el
    stages = [np.full((max(1, t.bstages), t.bn, ldb), nan, parts[0].dtype) for _ in parts]

    def load_b(ch, st, o0):
        for S, wf in zip(stages, parts):
            S[st] = nan
            for e in range(t.bn * kch * 2):
                o, q = divmod(e, kch * 2)
                kq = ch * kch * 2 + q
                off = (o0 + o) * Kp + kq * el
                S[st, o, q * el:q * el + el] = wf[off:off + el] if o0 + o < O and kq * el < Kp else 0
    return kch, stages, load_b


def _halo_run(g: G.HaloGeom, t: G.HaloTile, x: np.ndarray, weights, bias: np.ndarray, step) -> np.ndarray:
    """The halo kernels' common schedule: per block, the footprint and weight chunk 0 (and the
    pipeline's prologue), then for each chunk: the next chunk into the stage the last one was read
    from, and every warp's K steps of this chunk through step(acc, warp, ks, kk, Xs, stage views)."""
    N = x.shape[0]
    O, Kp = weights[0].shape
    KS = t.ks(g)
    bits = np.uint32 if t.tf32 else np.uint16
    nan = np.uint32(0x7FC00000) if t.tf32 else NAN16
    xbits = np.ascontiguousarray(x, np.float32 if t.tf32 else np.float16).reshape(-1).view(bits)
    parts = [np.ascontiguousarray(w, np.float32 if t.tf32 else np.float16).reshape(-1).view(bits) for w in weights]
    BST = t.bstages
    nst = max(1, BST)
    y = np.full(N * g.Ho * g.Wo * O, np.nan)
    nw = t.warps_m(g) * t.warps_n
    for n0, ho0, o0, nimgs, m0, M in _halo_blocks(g, t, N, O):
        Xs = _halo_footprint(g, t, xbits, n0, ho0, nimgs, nan)
        kch, stages, load_b = _weight_chunks(t, KS, parts, O, Kp, nan)
        nch = -(-KS // kch)
        load_b(0, 0, o0)
        for st in range(1, BST - 1):
            if st < nch:
                load_b(st, st, o0)
        pos = _halo_positions(g, t, m0, M)
        acc = np.zeros((nw, 2, t.bn // t.warps_n // 8, 32, 4))
        for ch in range(nch):
            if BST and ch + BST - 1 < nch:
                load_b(ch + BST - 1, (ch + BST - 1) % nst, o0)
            views = [S[ch % nst] for S in stages]
            for warp in range(nw):
                for kk in range(kch):
                    ks = ch * kch + kk
                    if ks >= KS:
                        break
                    step(acc, warp, pos, ks, kk, Xs, views)
        _halo_store(y, acc, g, t, m0, M, o0, O, bias)
    return y.reshape(N * g.Ho * g.Wo, O)


def run_halo(g: G.HaloGeom, t: G.HaloTile, x: np.ndarray, wq: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The fp16 halo conv thread by thread: cuda_codegen.halo_conv_kernel (weights resident) or,
    with t.bstages, halo_stream_kernel (weights streamed in the kernel's pipeline order, so a stage
    overwritten while still needed gives a wrong result). The footprint copy (chunk order, swizzle,
    zero fill), every lane's ldmatrix address into it, the m16n8k16 products and the store of each
    accumulator. Returns (N*Ho*Wo, O) acc + bias in float64; shared memory starts as NaN and every
    output must be written exactly once."""
    assert x.shape[1:] == (g.H, g.W, g.C) and not t.tf32
    assert not wq[:, g.KH * g.KW * g.C:].view(np.uint16).any()
    lane = np.arange(32)
    wtn = t.bn // t.warps_n

    def step(acc, warp, pos, ks, kk, Xs, views):
        (Bs,) = views
        wn = warp % t.warps_n
        af = [_ldsm_x4(Xs, _halo_a_rows(g, t, pos[warp, i], ks), np.zeros(32, np.int64)) for i in range(2)]
        bf = []
        for j2 in range(wtn // 16):
            r4 = _ldsm_x4(Bs, wn * wtn + j2 * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 16 + ((lane >> 3) & 1) * 8)
            bf += [(r4[:, 0], r4[:, 1]), (r4[:, 2], r4[:, 3])]
        for i in range(2):
            for j3, b in enumerate(bf):
                _mma(acc[warp, i, j3], af[i], *b)

    return _halo_run(g, t, x, (wq,), bias, step)


def run_halo_stream(g: G.HaloGeom, t: G.HaloTile, x: np.ndarray, wq: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """halo_stream_kernel: run_halo with streamed weights (t.bstages >= 2)."""
    assert t.bstages >= 2
    return run_halo(g, t, x, wq, bias)


def run_halo_tf32(g: G.HaloGeom, t: G.HaloTile, x: np.ndarray, wh: np.ndarray, wl: np.ndarray,
                  bias: np.ndarray) -> np.ndarray:
    """The fp32 halo conv (cuda_codegen.halo_tf32_kernel) thread by thread: as run_halo, with the
    fp32 footprint, both weight parts (resident, or streamed when t.bstages), the split of A into
    tf32 high and low parts as the kernel does it, and the three m16n8k8 products of each K step of
    8. Returns (N*Ho*Wo, O) acc + bias in float64."""
    assert x.shape[1:] == (g.H, g.W, g.C) and t.tf32
    K = g.KH * g.KW * g.C
    assert not wh[:, K:].any() and not wl[:, K:].any()
    lane = np.arange(32)
    wtn = t.bn // t.warps_n
    brow, bcol = (lane & 7) + ((lane >> 4) << 3), ((lane >> 3) & 1) * 4

    def step(acc, warp, pos, ks, kk, Xs, views):
        Bh, Bl = views
        wn = warp % t.warps_n
        ah, al = [], []
        for i in range(2):
            v = _ldsm_x4_b32(Xs, _halo_a_rows(g, t, pos[warp, i], ks), np.zeros(32, np.int64)).view(np.float32)
            hi, lo = G.tf32_split_a(v)  # as the kernel splits it (cuda_codegen.tf32_split_mode)
            ah.append(hi)
            al.append(lo)
        bh, bl = [], []
        for j2 in range(wtn // 16):
            rh = _ldsm_x4_b32(Bh, wn * wtn + brow + j2 * 16, bcol + kk * 8)
            rl = _ldsm_x4_b32(Bl, wn * wtn + brow + j2 * 16, bcol + kk * 8)
            bh += [(rh[:, 0], rh[:, 1]), (rh[:, 2], rh[:, 3])]
            bl += [(rl[:, 0], rl[:, 1]), (rl[:, 2], rl[:, 3])]
        for i in range(2):
            for j3 in range(len(bh)):
                _mma1688(acc[warp, i, j3], al[i], *bh[j3])
                _mma1688(acc[warp, i, j3], ah[i], *bl[j3])
                _mma1688(acc[warp, i, j3], ah[i], *bh[j3])

    return _halo_run(g, t, x, (wh, wl), bias, step)
