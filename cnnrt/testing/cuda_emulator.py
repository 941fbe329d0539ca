"""Run a CUDA Plan on the CPU: each kernel family re-implemented in NumPy from the launch's own
arguments (shapes, strides, meta, arena offsets, epilogue), so the planner (fusion, buffer
sharing, argument values, grid coverage) is tested without a GPU. The arena starts filled with
NaN bytes, like the GPU tests' poisoned buffers: a value read before it is written shows up.

This checks the plan, not the CUDA source (the device tests do that): the emulated kernels follow
the C code's indexing, in float64.
"""
from __future__ import annotations

import numpy as np

from cnnrt.backends import cuda_codegen as G
from cnnrt.backends.cuda_plan import Plan, Program, cdiv, prod

NP = {"f32": np.float32, "f16": np.float16, "u8": np.uint8}


class Emulator:
    def __init__(self, prog: Program, plan: Plan):
        self.prog, self.plan = prog, plan
        self.arena = np.full(plan.arena_bytes, 0xFF, np.uint8)  # NaN in fp32 and fp16
        self.meta = plan.meta
        self.shapes = prog.g.infer_shapes({prog.input: (plan.n,) + prog.item_shape})

    # ---------------------------------------------------------- memory
    def buf(self, name: str) -> np.ndarray:
        b = self.plan.buffers[name]
        off = self.plan.offsets[name]
        return self.arena[off:off + b.nbytes].view(NP[b.dtype])

    def arg(self, a) -> np.ndarray:
        if a[0] == "arr":
            return a[1]
        if a[0] == "t":
            return self.buf(a[1])
        if a[0] == "c":
            return self.prog.consts[a[1]].reshape(-1)
        raise ValueError(a)

    def read(self, a, count: int | None = None) -> np.ndarray:
        v = self.arg(a)
        return (v if count is None else v[:count]).astype(np.float64)

    def store(self, a, values) -> None:
        dst = self.arg(a).reshape(-1)
        v = np.asarray(values, np.float64).reshape(-1)
        assert v.size <= dst.size
        dst[:v.size] = v.astype(dst.dtype)

    def m(self, off: int, count: int) -> list:
        return [int(v) for v in self.meta[off:off + count]]

    def meta_offset(self, a) -> int:
        """The offset of a launch's meta block ('m', offset); the CuPy fake passes the block itself."""
        if a[0] == "arr":
            self.meta = a[1]
            return 0
        return a[1]

    # ---------------------------------------------------------- epilogue
    def epilogue(self, l, v: np.ndarray, CH: int, HWC: int) -> np.ndarray:
        idx = np.arange(v.size)
        c = idx % CH
        nimg = idx // HWC
        slot = 0
        for e in l.kernel.static["epi"]:
            if e.mode is None:
                v = unary(e.op, e.a, v)
                continue
            u = self.read(l.args[f"e{slot}"])
            if e.mode == "full":
                u = u[idx]
            elif e.mode == "chan":
                u = u[c]
            elif e.mode == "nc":
                u = u[nimg * CH + c]
            elif e.mode == "scalar":
                u = np.full(v.shape, u[0])
            else:
                raise AssertionError("bcast operands are handled by eltwise()")
            v = binary(e.op, u, v) if e.swap else binary(e.op, v, u)
            slot += 1
        return v

    # ---------------------------------------------------------- run
    def run(self, x: np.ndarray) -> dict:
        stage = self.buf(self.plan.stage)
        stage[...] = np.asarray(x).reshape(-1).astype(stage.dtype)
        for l in self.plan.launches:
            if l.kind == "gemm":
                gm = l.gemm
                w = self.read(gm["A"]).reshape(gm["m"], gm["k"])
                xb = self.read(gm["B"]).reshape(gm["n"], gm["k"])
                self.store(gm["C"], xb @ w.T)
            elif l.kind == "host":
                self.host(l)
            else:
                getattr(self, l.kernel.family)(l)
        return {o: self.buf(b)[:prod(s)].astype(np.float64).reshape(s) for o, b, s in self.plan.outputs}

    def host(self, l):
        from cnnrt.ir import ops as O

        node = l.host
        g = self.prog.g
        ins = []
        for t in node.inputs:
            if t in g.params:
                ins.append(self.prog._q(g.params[t]))
            else:
                b = self.prog.base(t)
                ins.append(self.buf(b).astype(np.float32).reshape(self.shapes[t]))
        outs = O.OPS[node.op].run(ins, node.attrs)
        for t, v in zip(node.outputs, outs):
            self.store(("t", self.prog.base(t)), np.asarray(v))

    # ---------------------------------------------------------- kernel families
    def prep(self, l):
        a = l.args
        mean, std = self.read(a["mean"]), self.read(a["std"])
        if l.kernel.static.get("s2d"):  # the image's 2x2 space-to-depth, 16 channels (cuda_codegen.prep_s2d_kernel)
            N, H, W, H2, W2, chi = (a[k] for k in ("N", "H", "W", "H2", "W2", "CHI"))
            assert chi <= 4 and H2 == -(-H // 2) and W2 == -(-W // 2)
            x = (self.read(a["x"], N * H * W * chi).reshape(N, H, W, chi) * a["scale"] - mean[:chi]) / std[:chi]
            xp = np.zeros((N, 2 * H2, 2 * W2, chi))
            xp[:, :H, :W] = x
            y = np.zeros((N, H2, W2, 16))
            for dy in range(2):
                for dx in range(2):
                    q = (dy * 2 + dx) * chi
                    y[..., q:q + chi] = xp[:, dy::2, dx::2]
            self.store(a["y"], y.reshape(-1))
            return
        if l.kernel.static.get("pad"):  # CHI channels of the image stored as CH, the rest zero
            chi, ch = a["CHI"], a["CH"]
            assert ch == l.kernel.static["pc"] and a["total"] % ch == 0 and chi < ch
            x = self.read(a["x"], a["total"] // ch * chi).reshape(-1, chi)
            y = np.zeros((x.shape[0], ch))
            y[:, :chi] = (x * a["scale"] - mean[:chi]) / std[:chi]
            self.store(a["y"], y.reshape(-1))
            return
        x = self.read(a["x"], a["total"])
        c = np.arange(x.size) % a["CH"]
        self.store(a["y"], (x * a["scale"] - mean[c]) / std[c])

    def _im2col(self, a, KH: int, KW: int) -> np.ndarray:
        """(N*Ho*Wo, KH*KW, C) taps of the input, zero outside the image."""
        N, H, W, C, Ho, Wo = (a[k] for k in ("N", "H", "W", "C", "Ho", "Wo"))
        x = self.read(a["x"], N * H * W * C).reshape(N, H, W, C)
        xp = np.zeros((N, H + 2 * KH * a["dh"] + Ho * a["sh"], W + 2 * KW * a["dw"] + Wo * a["sw"], C))
        oh, ow = KH * a["dh"], KW * a["dw"]  # generous zero border
        xp[:, oh:oh + H, ow:ow + W] = x
        cols = np.empty((N, Ho, Wo, KH, KW, C))
        for i in range(KH):
            for j in range(KW):
                r0, c0 = oh - a["ph"] + i * a["dh"], ow - a["pw"] + j * a["dw"]
                cols[:, :, :, i, j, :] = xp[:, r0:r0 + (Ho - 1) * a["sh"] + 1:a["sh"], c0:c0 + (Wo - 1) * a["sw"] + 1:a["sw"]]
        return cols.reshape(N * Ho * Wo, KH * KW, C)

    def conv(self, l):
        a = l.args
        t = l.kernel.static["tile"]
        N, H, W, C, Ho, Wo, O_ = (a[k] for k in ("N", "H", "W", "C", "Ho", "Wo", "O"))
        Cg, Og, K, KW = a["Cg"], a["Og"], a["K"], a["KW"]
        KH = K // (KW * Cg)
        groups = O_ // Og
        M = N * Ho * Wo
        split = l.kernel.static.get("splitk", False)
        assert l.grid[0] * t.bm >= M and l.grid[1] * t.bn >= Og, "grid does not cover the output"
        assert l.grid[2] == (cdiv(cdiv(K, t.bk), a["kts"]) if split else groups), "grid.z: groups, or the K splits"
        w = self.read(a["w"], groups * K * Og).reshape(groups, K, Og)
        cols = self._im2col(a, KH, KW).reshape(M, KH * KW, groups, Cg)
        if split:  # each z's partial sum over its kts steps of BK, as the kernel writes them
            assert groups == 1
            kstep = a["kts"] * t.bk
            parts = [cols.reshape(M, K)[:, z:z + kstep] @ w[0][z:z + kstep] for z in range(0, K, kstep)]
            assert len(parts) == l.grid[2]
            self.store(a["ws"], np.stack(parts))
            return
        out = np.empty((M, groups, Og))
        for g in range(groups):
            out[:, g] = cols[:, :, g, :].reshape(M, K) @ w[g]
        v = out.reshape(-1) + self.read(a["bias"])[np.arange(M * O_) % O_]
        self.store(a["y"], self.epilogue(l, v, O_, Ho * Wo * O_))

    def mma_conv(self, l):
        """The tensor-core conv: weights [O][Kp] fp16 (zero past K); fp16 products are exact in
        float64, so this is the kernel's result up to the fp32 accumulation order."""
        a = l.args
        t = l.kernel.static["tile"]
        N, Ho, Wo, O_, C, K, Kp, KW = (a[k] for k in ("N", "Ho", "Wo", "O", "C", "K", "Kp", "KW"))
        KH = K // (KW * C)
        M = N * Ho * Wo
        assert KH * KW * C == K and Kp % t.bk == 0 and Kp >= K
        split = l.kernel.static.get("splitk", False)
        cluster = l.kernel.static.get("cluster", 0)  # split-K summed within a cluster of blocks (grid.z)
        assert l.grid[0] * t.bm >= M and l.grid[1] * t.bn >= O_, "grid does not cover the output"
        assert l.grid[2] == (cdiv(cdiv(K, t.bk), a["kts"]) if split or cluster else 1), \
            "grid.z is not the number of K splits"
        assert not cluster or l.grid[2] == cluster, "grid.z is not the cluster's size"
        assert l.block[0] == t.threads
        st = l.kernel.static.get("stages", 0)
        need = max(t.smem_stages(st), t.bm * (t.bn + 4) * 4 if l.kernel.static.get("coalesce") else 0)
        assert l.smem == need, "the launch's dynamic shared memory is not what the kernel's buffers take"
        if l.kernel.static["variant"] != "scalar":
            assert C % 8 == 0, "16-byte loads need C % 8 == 0"
        if l.kernel.static["variant"] == "pointwise":
            assert KH == KW == 1 and a["sh"] == a["sw"] == 1 and a["ph"] == a["pw"] == 0
        w = self.read(a["w"], O_ * Kp).reshape(O_, Kp)
        assert not w[:, K:].any(), "the weights' K padding must be zero"
        cols = self._im2col(a, KH, KW).reshape(M, K)
        if split:  # each z's partial sum over its K steps, as the kernel writes them
            kstep = a["kts"] * t.bk
            parts = [cols[:, z:z + kstep] @ w[:, z:min(K, z + kstep)].T for z in range(0, K, kstep)]
            assert len(parts) == l.grid[2]
            self.store(a["ws"], np.stack(parts))
            return
        out = cols @ w[:, :K].T
        v = out.reshape(-1) + self.read(a["bias"])[np.arange(M * O_) % O_]
        self.store(a["y"], self.epilogue(l, v, O_, Ho * Wo * O_))

    def wgmma_conv(self, l):
        """The Hopper wgmma conv: the same arithmetic as mma_conv, under its own launch geometry."""
        a, t = l.args, l.kernel.static["tile"]
        N, Ho, Wo, O_, C, K, Kp, KW = (a[k] for k in ("N", "Ho", "Wo", "O", "C", "K", "Kp", "KW"))
        KH = K // (KW * C)
        M = N * Ho * Wo
        assert KH * KW * C == K and Kp >= K and C % 8 == 0, "16-byte chunks of one tap need C % 8 == 0"
        assert l.grid == (cdiv(M, t.bm), cdiv(O_, t.bn), 1), "grid does not match the tile"
        assert l.block[0] == t.threads and l.smem == t.smem, "block or shared memory is not the tile's"
        w = self.read(a["w"], O_ * Kp).reshape(O_, Kp)
        assert not w[:, K:].any(), "the weights' K padding must be zero"
        cols = self._im2col(a, KH, KW).reshape(M, K)
        v = (cols @ w[:, :K].T).reshape(-1) + self.read(a["bias"])[np.arange(M * O_) % O_]
        self.store(a["y"], self.epilogue(l, v, O_, Ho * Wo * O_))

    def mma_halo(self, l):
        """The halo tensor-core conv: geometry compiled in (static 'geom'), N, O and Kp as arguments."""
        a, g, t = l.args, l.kernel.static["geom"], l.kernel.static["tile"]
        N, O_, Kp = a["N"], a["O"], a["Kp"]
        K = g.KH * g.KW * g.C
        assert g.C % 8 == 0 and Kp % G.MMA_KPAD == 0 and Kp >= t.ks(g) * 16
        assert l.grid == (t.blocks(g, N), cdiv(O_, t.bn), 1), "grid does not match the tile"
        assert t.blocks(g, N) * t.imgs * t.bands(g) * t.rows >= N * g.Ho, "blocks do not cover the output rows"
        assert l.block[0] == t.threads(g) and l.smem == t.smem(g, l.kernel.static["coalesce"])
        self._geom_conv(l, g)

    def _geom_conv(self, l, g, cm: bool = False) -> None:
        """A conv whose geometry is compiled in (g: HaloGeom), fp16 weights packed [O][Kp], bias and
        the epilogue: N, O and Kp from the launch. cm: K packed channel-major, (c // 16, kh, kw,
        c % 16) (the channel-major band conv), read back into (kh, kw, c)."""
        a = l.args
        N, O_, Kp = a["N"], a["O"], a["Kp"]
        K = g.KH * g.KW * g.C
        dims = dict(N=N, H=g.H, W=g.W, C=g.C, Ho=g.Ho, Wo=g.Wo, sh=g.sh, sw=g.sw, ph=g.ph, pw=g.pw, dh=g.dh, dw=g.dw)
        w = self.read(a["w"], O_ * Kp).reshape(O_, Kp)
        assert not w[:, K:].any(), "the weights' K padding must be zero"
        if cm:
            w = w.copy()
            w[:, :K] = w[:, :K].reshape(O_, g.C // 16, g.KH, g.KW, 16).transpose(0, 2, 3, 1, 4).reshape(O_, K)
        cols = self._im2col({**a, **dims}, g.KH, g.KW).reshape(-1, K)
        M = N * g.Ho * g.Wo
        v = (cols @ w[:, :K].T).reshape(-1) + self.read(a["bias"])[np.arange(M * O_) % O_]
        self.store(a["y"], self.epilogue(l, v, O_, g.Ho * g.Wo * O_))

    def wgmma_halo(self, l):
        """The halo conv on Hopper's wgmma: whole warpgroups, one column of warps, streamed weights;
        then the same arithmetic and checks as mma_halo."""
        t, g = l.kernel.static["tile"], l.kernel.static["geom"]
        assert t.wg and t.warps_n == 1 and t.bstages >= 2 and l.block[0] % 128 == 0, "not a wgmma halo tile"
        assert l.kernel.static["arch"] == "sm_90a" and t.warps_m(g) * 32 >= t.pixels(g)
        self.mma_halo(l)

    def wgmma_band(self, l):
        """The wgmma band conv (stride 1, C % 16 == 0): its tile's checks, then mma_halo's arithmetic."""
        a, g, t = l.args, l.kernel.static["geom"], l.kernel.static["tile"]
        N, O_, Kp = a["N"], a["O"], a["Kp"]
        K = g.KH * g.KW * g.C
        assert g.C % 16 == 0 and g.sh == g.sw == 1 and Kp % G.MMA_KPAD == 0 and Kp >= K
        assert l.kernel.static["arch"] == "sm_90a" and 64 * t.mt >= t.rows * t.twi(g)
        assert l.grid == (t.blocks(g, N), cdiv(O_, t.bn), 1), "grid does not match the tile"
        assert t.bands(g) * t.rows >= g.Ho, "bands do not cover the output rows"
        assert l.block[0] == t.threads and l.smem == t.smem(g) <= G.BAND_SMEM
        self._geom_conv(l, g, cm=t.cm)

    def mma_conv_tf32(self, l):
        """The fp32 tensor-core conv (3xTF32, im2col tiles): checked like mma_conv, run in float64 on
        the weights' hi + lo parts."""
        a, t = l.args, l.kernel.static["tile"]
        N, Ho, Wo, O_, C, K, Kp, KW = (a[k] for k in ("N", "Ho", "Wo", "O", "C", "K", "Kp", "KW"))
        KH = K // (KW * C)
        M = N * Ho * Wo
        assert KH * KW * C == K and C % 4 == 0 and Kp % (t.bk // 2) == 0 and Kp >= K, "16-byte chunks need C % 4 == 0"
        cs = l.kernel.static.get("cluster", 0)  # split-K summed within a cluster of blocks (grid.z)
        assert l.grid == (cdiv(M, t.bm), cdiv(O_, t.bn), max(cs, 1)), "grid does not match the tile or cluster"
        if cs:  # every block of the cluster has K steps, and together they cover K
            kt = cdiv(K, t.bk // 2)
            assert cdiv(kt, a["kts"]) == cs and (cs - 1) * a["kts"] < kt, "the cluster's K shares"
        assert l.block[0] == t.threads and l.smem == G.mma_tf32_smem(t, l.kernel.static["stages"])
        wh, wl = (self.read(a[k], O_ * Kp).reshape(O_, Kp) for k in ("wh", "wl"))
        assert not wh[:, K:].any() and not wl[:, K:].any(), "the weights' K padding must be zero"
        assert np.array_equal(G.tf32_round(wh), wh.astype(np.float32)), "wh is not tf32"
        cols = self._im2col(a, KH, KW).reshape(M, K)
        v = (cols @ (wh + wl)[:, :K].T).reshape(-1) + self.read(a["bias"])[np.arange(M * O_) % O_]
        self.store(a["y"], self.epilogue(l, v, O_, Ho * Wo * O_))

    def mma_halo_tf32(self, l):
        """The fp32 halo conv (3xTF32): the weights as hi + lo parts; checked like mma_halo and run in
        float64 on hi + lo (within about 2^-21 of the fp32 weights)."""
        a, g, t = l.args, l.kernel.static["geom"], l.kernel.static["tile"]
        N, O_, Kp = a["N"], a["O"], a["Kp"]
        K = g.KH * g.KW * g.C
        assert t.tf32 and g.C % 4 == 0 and Kp % G.MMA_KPAD == 0 and Kp >= t.ks(g) * 8
        assert l.grid == (t.blocks(g, N), cdiv(O_, t.bn), 1), "grid does not match the tile"
        assert l.block[0] == t.threads(g) and l.smem == t.smem(g, l.kernel.static["coalesce"])
        dims = dict(N=N, H=g.H, W=g.W, C=g.C, Ho=g.Ho, Wo=g.Wo, sh=g.sh, sw=g.sw, ph=g.ph, pw=g.pw, dh=g.dh, dw=g.dw)
        wh, wl = (self.read(a[k], O_ * Kp).reshape(O_, Kp) for k in ("wh", "wl"))
        assert not wh[:, K:].any() and not wl[:, K:].any(), "the weights' K padding must be zero"
        assert np.array_equal(G.tf32_round(wh), wh.astype(np.float32)), "wh is not tf32"
        cols = self._im2col({**a, **dims}, g.KH, g.KW).reshape(-1, K)
        M = N * g.Ho * g.Wo
        v = (cols @ (wh + wl)[:, :K].T).reshape(-1) + self.read(a["bias"])[np.arange(M * O_) % O_]
        self.store(a["y"], self.epilogue(l, v, O_, g.Ho * g.Wo * O_))

    def splitk(self, l):
        a = l.args
        total, S = a["total"], a["S"]
        parts = self.read(a["ws"], S * total).reshape(S, total)
        v = parts.sum(axis=0) + self.read(a["bias"])[np.arange(total) % a["CH"]]
        self.store(a["y"], self.epilogue(l, v, a["CH"], a["HWC"]))

    def dwconv(self, l, mult=None):
        a = l.args
        N, H, W, C, Ho, Wo, O_, KH, KW = (a[k] for k in ("N", "H", "W", "C", "Ho", "Wo", "O", "KH", "KW"))
        x = self.read(a["x"], N * H * W * C).reshape(N, H, W, C)
        w = self.read(a["w"], KH * KW * O_).reshape(KH * KW, O_)
        xs = np.repeat(x, a["mult"] if mult is None else mult, axis=3)  # output channel c reads input channel c // mult
        acc = np.zeros((N, Ho, Wo, O_))
        for i in range(KH):
            for j in range(KW):
                hi = np.arange(Ho) * a["sh"] - a["ph"] + i * a["dh"]
                wi = np.arange(Wo) * a["sw"] - a["pw"] + j * a["dw"]
                vh, vw = (hi >= 0) & (hi < H), (wi >= 0) & (wi < W)
                tap = xs[:, np.clip(hi, 0, H - 1)][:, :, np.clip(wi, 0, W - 1)] * (vh[:, None] & vw[None, :])[None, :, :, None]
                acc += tap * w[i * KW + j]
        v = (acc + self.read(a["bias"], O_)).reshape(-1)
        self.store(a["y"], self.epilogue(l, v, O_, Ho * Wo * O_))

    def dwconv8(self, l):
        """The 8-channels-a-thread depthwise kernel: the same arithmetic, under its preconditions."""
        a = l.args
        assert a["O"] == a["C"] and a["C"] % 8 == 0, "dwconv8 needs mult 1 and C % 8 == 0"
        assert l.grid[0] >= 1 and l.kernel.static["ti"] in ("f16", "f32")
        self.dwconv(l, mult=1)

    def pool8(self, l):
        """The 8-channels-a-thread pool: the same arithmetic, under its preconditions."""
        assert l.args["C"] % 8 == 0 and l.kernel.static["ti"] in ("f16", "f32"), "pool8 needs C % 8 == 0"
        self.pool(l)

    def pool(self, l):
        a = l.args
        N, H, W, C, Ho, Wo, KH, KW = (a[k] for k in ("N", "H", "W", "C", "Ho", "Wo", "KH", "KW"))
        x = self.read(a["x"], N * H * W * C).reshape(N, H, W, C)
        kind = l.kernel.static["kind"]
        acc = np.full((N, Ho, Wo, C), -np.inf if kind == "max" else 0.0)
        cnt = np.zeros((Ho, Wo))
        for i in range(KH):
            for j in range(KW):
                hi = np.arange(Ho) * a["sh"] - a["ph"] + i * a["dh"]
                wi = np.arange(Wo) * a["sw"] - a["pw"] + j * a["dw"]
                inside = (((hi >= 0) & (hi < H))[:, None] & ((wi >= 0) & (wi < W))[None, :])
                tap = x[:, np.clip(hi, 0, H - 1)][:, :, np.clip(wi, 0, W - 1)]
                if kind == "max":
                    acc = np.where(inside[None, :, :, None], np.maximum(acc, tap), acc)
                else:
                    acc += tap * inside[None, :, :, None]
                    cnt += (((hi >= a["hlo"]) & (hi < a["hhi"]))[:, None] & ((wi >= a["wlo"]) & (wi < a["whi"]))[None, :])
        v = acc if kind == "max" else acc / np.maximum(cnt, 1)[None, :, :, None]
        self.store(a["y"], self.epilogue(l, v.reshape(-1), C, Ho * Wo * C))

    def gpool(self, l):
        a = l.args
        HW, C = a["HW"], a["C"]
        x = self.read(a["x"], l.grid[1] * HW * C).reshape(-1, HW, C)
        assert l.grid[0] * 32 >= C and l.grid[1] == len(x), "grid does not cover the output"
        v = x.max(axis=1) if l.kernel.static["kind"] == "max" else x.sum(axis=1) * a["inv"]
        self.store(a["y"], self.epilogue(l, v.reshape(-1), C, C))

    def dense(self, l):
        a = l.args
        N, HW, K, O_ = a["N"], a["HW"], a["K"], a["O"]
        assert 1 <= a["OPW"] <= G.DENSE_SMALL_OPW and l.grid[0] * 8 * a["OPW"] >= O_, "grid does not cover the output"
        assert a["NB"] * K * 4 <= l.smem <= G.DENSE_SMALL_SMEM_SM80 and a["NB"] <= G.DENSE_SMALL_NB
        x = self.read(a["x"], N * HW * K).reshape(N, HW, K).sum(axis=1) * a["inv"]
        w = self.read(a["w"], O_ * K).reshape(O_, K)
        v = x @ w.T + self.read(a["bias"], O_)
        self.store(a["y"], self.epilogue(l, v.reshape(-1), O_, O_))

    def eltwise(self, l):
        a = l.args
        total, CH, HWC = a["total"], a["CH"], a["HWC"]
        idx = np.arange(total)
        st = l.kernel.static
        ops = [e for e in st["epi"] if e.mode is not None]
        moff = self.meta_offset(a["meta"])
        nb = (st["mode0"] == "bcast") + sum(e.mode == "bcast" for e in ops)
        dims = self.m(moff, 6) if nb else None
        coords = np.stack(np.unravel_index(idx, dims), axis=0) if nb else None
        slot_b = 0

        def index(mode):
            nonlocal slot_b
            if mode == "full":
                return idx
            if mode == "chan":
                return idx % CH
            if mode == "nc":
                return (idx // HWC) * CH + idx % CH
            if mode == "scalar":
                return np.zeros_like(idx)
            strides = np.asarray(self.m(moff + 6 + 6 * slot_b, 6))
            slot_b += 1
            return (coords * strides[:, None]).sum(axis=0)

        v = self.read(a["a0"])[index(st["mode0"])]
        slot = 0
        for e in st["epi"]:
            if e.mode is None:
                v = unary(e.op, e.a, v)
                continue
            u = self.read(a[f"e{slot}"])[index(e.mode)]
            v = binary(e.op, u, v) if e.swap else binary(e.op, v, u)
            slot += 1
        assert slot == len(ops)
        self.store(a["y"], v)

    def softmax(self, l):
        a = l.args
        outer, L, inner = a["outer"], a["L"], a["inner"]
        assert l.grid[0] * l.block[0] >= outer * inner * 32, "grid does not cover the rows"
        x = self.read(a["x"], outer * L * inner).reshape(outer, L, inner)
        if l.kernel.static["bias"]:
            x = x + self.read(a["b"], L)[None, :, None]
        m = x.max(axis=1, keepdims=True)
        e = np.exp(x - m)
        s = e.sum(axis=1, keepdims=True)
        out = (x - m - np.log(s)) if l.kernel.static["log"] else e / s
        self.store(a["y"], out.reshape(-1))

    def copy(self, l):
        a = l.args
        off = self.meta_offset(a["meta"])
        dims, os_, is_, lo, hi = (np.asarray(self.m(off + 6 * i, 6)) for i in range(5))
        obase, ibase = self.m(off + 30, 2)
        total = a["total"]
        assert total == prod(dims)
        c = np.stack(np.unravel_index(np.arange(total), dims), axis=0)
        oo = obase + (c * os_[:, None]).sum(0)
        io = ibase + (c * is_[:, None]).sum(0)
        ok = ((c >= lo[:, None]) & (c < hi[:, None])).all(0)
        x = self.read(a["x"])
        vals = np.full(total, a["fill"], np.float64)
        vals[ok] = x[io[ok]]
        y = self.arg(a["y"])
        assert oo.min(initial=0) >= 0 and oo.max(initial=0) < y.size, "copy writes outside its output"
        y[oo] = vals.astype(y.dtype)

    def reduce(self, l):
        a = l.args
        off = self.meta_offset(a["meta"])
        odims, ostr, rdims, rstr = (np.asarray(self.m(off + 6 * i, 6)) for i in range(4))
        x = self.read(a["x"])
        oc = np.stack(np.unravel_index(np.arange(a["total"]), odims), 0)
        rc = np.stack(np.unravel_index(np.arange(a["R"]), rdims), 0)
        offs = (oc * ostr[:, None]).sum(0)[:, None] + (rc * rstr[:, None]).sum(0)[None, :]
        vals = x[offs]
        op = l.kernel.static["op"]
        out = {"ReduceSum": vals.sum(1), "ReduceMean": vals.sum(1) * a["scale"], "ReduceMax": vals.max(1),
               "ReduceMin": vals.min(1)}[op]
        self.store(a["y"], out)


def _erf(v):
    import math

    return np.vectorize(math.erf)(v) if v.size else v


def unary(op, a, v):
    if op == "Relu":
        return np.maximum(v, 0)
    if op == "LeakyRelu":
        return np.where(v >= 0, v, v * a["alpha"])
    if op == "Sigmoid":
        return 1 / (1 + np.exp(-v))
    if op == "HardSigmoid":
        return np.clip(v * a["alpha"] + a["beta"], 0, 1)
    if op == "HardSwish":
        return v * np.clip(v / 6 + 0.5, 0, 1)
    if op == "Tanh":
        return np.tanh(v)
    if op == "Exp":
        return np.exp(v)
    if op == "Sqrt":
        return np.sqrt(v)
    if op == "Neg":
        return -v
    if op == "Abs":
        return np.abs(v)
    if op == "Erf":
        return _erf(v)
    if op == "Elu":
        return np.where(v > 0, v, a["alpha"] * np.expm1(np.minimum(v, 0)))
    if op == "Softplus":
        return np.logaddexp(v, 0)
    if op == "Gelu":
        if a.get("approximate", "none") == "none":
            return 0.5 * v * (1 + _erf(v / np.sqrt(2)))
        return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))
    if op == "Clip":
        return np.clip(v, a["min"], a["max"])
    raise NotImplementedError(op)


def binary(op, x, y):
    return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Max": np.maximum,
            "Min": np.minimum, "Pow": np.power}[op](x, y)


def run(prog: Program, x: np.ndarray, in_kind: str | None = None) -> dict:
    """The graph's outputs for input x (uint8 or float), through the plan for len(x)."""
    kind = in_kind or ("u8" if x.dtype == np.uint8 else "f32")
    plan = prog.plan(len(x), kind)
    return Emulator(prog, plan).run(x)


__all__ = ["Emulator", "run", "cdiv"]
