"""The tensor-core conv (cuda_codegen.mma_conv_kernel), its versions side by side on the zoo's
heaviest layer shapes: block tile, warp tile, K step (bk) and pipeline depth (0: the register-staged
double buffer, 2+: cp.async stages), and the halo conv (cuda_codegen.halo_conv_kernel: the block's
input footprint in shared memory; halo_stream_kernel: the weights streamed beside it) at several
block sizes. Each version is checked against float64 NumPy on sampled
output rows and timed with CUDA events (median of --reps launches after warm-up).

    PYTHONPATH=. python3 dev/cuda/mma_conv.py [--json out.json] [--layers r18_l1,r20_s1] [--reps 10]

Prints, per layer, every version's time, TFLOP/s and error, the planner's current choice marked
with '*', and writes it all as JSON (dev/cuda/NOTES.md keeps the results).
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cnnrt.backends import cuda_codegen as G  # noqa: E402
from cnnrt.backends.cuda_plan import choose_halo, choose_mma_tile  # noqa: E402

# name: (N, H, W, C, O, K, stride, pad): the zoo's layers that take the most device time
LAYERS = {
    "r18_stem": (256, 224, 224, 3, 64, 7, 2, 3),
    "r18_stem8": (256, 224, 224, 8, 64, 7, 2, 3),  # the stems with the input stored as 8 channels (Program.in_pad)
    "r20_stem8": (10000, 32, 32, 8, 16, 3, 1, 1),
    "mnv2_stem8": (2048, 96, 96, 8, 32, 3, 2, 1),
    "mnv3_stem8": (256, 224, 224, 8, 16, 3, 2, 1),
    "r18_l1": (256, 56, 56, 64, 64, 3, 1, 1),
    "r18_l2": (256, 28, 28, 128, 128, 3, 1, 1),
    "r18_l4": (256, 7, 7, 512, 512, 3, 1, 1),
    "r20_s1": (10000, 32, 32, 16, 16, 3, 1, 1),
    "r20_s2": (10000, 16, 16, 32, 32, 3, 1, 1),
    "r20_down2": (10000, 32, 32, 16, 32, 3, 2, 1),
    "r20_s3": (10000, 8, 8, 64, 64, 3, 1, 1),
    "mnv2_pw": (2048, 48, 48, 16, 96, 1, 1, 0),
    "mnv2_pw2": (2048, 24, 24, 144, 24, 1, 1, 0),
}

T = G.MmaTile
VERSIONS = {  # name: tile; the production tiles first, then wider warp tiles and 64-deep K steps
    "tc128x128k64": G.MMA_TILES["tc128x128k64"], "tc256x64": G.MMA_TILES["tc256x64"],
    "tc128x128": G.MMA_TILES["tc128x128"], "tc128x64": G.MMA_TILES["tc128x64"],
    "tc128x32": G.MMA_TILES["tc128x32"], "tc256x16": G.MMA_TILES["tc256x16"], "tc64x64": G.MMA_TILES["tc64x64"],
    "w128x128": T(128, 128, 2, 2), "w128x64": T(128, 64, 2, 2), "w256x64": T(256, 64, 4, 2),
    "w128x32": T(128, 32, 2, 1), "w256x16": T(256, 16, 4, 1), "w256x32": T(256, 32, 4, 1),
    "k128x128": T(128, 128, 2, 4, 64), "k128x64": T(128, 64, 4, 2, 64), "kw128x64": T(128, 64, 2, 2, 64),
    "kw128x128": T(128, 128, 2, 2, 64), "k256x16": T(256, 16, 8, 1, 64), "kw256x16": T(256, 16, 4, 1, 64),
    "k128x32": T(128, 32, 4, 1, 64), "kw128x32": T(128, 32, 2, 1, 64),
}


def out_size(h, k, s, p):
    return (h + 2 * p - k) // s + 1


def reference_rows(x, w, rows, Ho, Wo, k, s, p):
    """float64 conv outputs of the sampled output pixels `rows` (indices into N*Ho*Wo)."""
    N, H, W, C = x.shape
    out = np.zeros((len(rows), w.shape[0]))
    for r, m in enumerate(rows):
        n, rem = divmod(int(m), Ho * Wo)
        ho, wo = divmod(rem, Wo)
        patch = np.zeros((k, k, C))
        for i in range(k):
            for j in range(k):
                hi, wi = ho * s - p + i, wo * s - p + j
                if 0 <= hi < H and 0 <= wi < W:
                    patch[i, j] = x[n, hi, wi]
        out[r] = w.reshape(w.shape[0], -1) @ patch.reshape(-1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--versions", default=",".join(VERSIONS))
    ap.add_argument("--stages", default="0,3,4")
    ap.add_argument("--stores", default="coalesce,direct", help="the epilogue: coalesce (through shared memory), direct")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--halo-pixels", default="128,256,512",
                    help="the halo conv (footprint in shared memory) at these output pixels a block ('' for none)")
    ap.add_argument("--halo-stages", default="0,3",
                    help="the halo conv's weights: 0 resident, 2+ streamed through that many stages (halo_stream_kernel)")
    a = ap.parse_args(argv)
    import cupy as cp

    rng = np.random.default_rng(0)
    nsm = int(cp.cuda.Device().attributes["MultiProcessorCount"])
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    res = {"device": name, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "layers": {}}
    stages_list = [int(s) for s in a.stages.split(",")]
    for lname in a.layers.split(","):
        N, H, W, C, O, k, s, p = LAYERS[lname]
        Ho, Wo = out_size(H, k, s, p), out_size(W, k, s, p)
        M, K = N * Ho * Wo, k * k * C
        Kp = -(-K // G.MMA_KPAD) * G.MMA_KPAD
        variant = G.mma_variant(C, k, k, (s, s), (p, p, p, p))
        x16 = rng.standard_normal((N, H, W, C)).astype(np.float16)
        w16 = (rng.standard_normal((O, k, k, C)) / np.sqrt(K)).astype(np.float16)
        wq = np.zeros((O, Kp), np.float16)
        wq[:, :K] = w16.reshape(O, K)
        dx, dw = cp.asarray(x16), cp.asarray(wq)
        bias = cp.zeros(O, cp.float32)
        y = cp.empty((M, O), cp.float16)
        rows = np.concatenate([[0, M - 1], rng.choice(M, 126, replace=False)])
        ref = reference_rows(x16.astype(np.float64), w16.astype(np.float64), rows, Ho, Wo, k, s, p)
        flop = 2.0 * M * O * K
        chosen = choose_mma_tile(M, O, K, nsm, variant)
        ctile = G.MMA_TILES[chosen]
        kernels = []
        for vname in a.versions.split(","):
            tile = VERSIONS[vname]
            if O <= tile.bn // 2 and tile.bn > 16:
                continue
            for st in stages_list:
                if st and variant == "scalar":
                    continue
                for store in a.stores.split(","):
                    kernels.append((vname, st, store, tile, G.mma_conv_kernel(tile, variant, "f16", (), stages=st,
                                                                              coalesce=store == "coalesce")))
        geom = G.HaloGeom(C, H, W, Ho, Wo, k, k, s, s, p, p, 1, 1)
        halo_pick = choose_halo(geom, O, N, nsm)
        for px in (int(v) for v in a.halo_pixels.split(",") if v):
            for bst in (int(v) for v in a.halo_stages.split(",") if v):
                ht = G.halo_tile(geom, O, N, px, bstages=bst)
                if ht is None:
                    continue
                make = G.halo_stream_kernel if bst else G.halo_conv_kernel
                for store in a.stores.split(","):
                    hk = make(geom, ht, "f16", (), coalesce=store == "coalesce")
                    kernels.append((f"halo{px}" + (f"w{bst}" if bst else ""), bst, store, ht, hk))
        mod = cp.RawModule(code=G.module_source(k_ for *_, k_ in kernels), options=("--std=c++17",))
        dims = dict(N=N, H=H, W=W, C=C, Ho=Ho, Wo=Wo, O=O, KW=k, sh=s, sw=s, ph=p, pw=p, dh=1, dw=1, K=K, Kp=Kp)
        ptrs = {"x": dx, "w": dw, "bias": bias, "y": y}
        entry = {"shape": dict(N=N, H=H, W=W, C=C, O=O, k=k, stride=s, pad=p), "M": M, "K": K, "variant": variant,
                 "gflop": flop / 1e9, "planner": chosen, "versions": []}
        res["layers"][lname] = entry
        print(f"== {lname}: N={N} {H}x{W}x{C} -> {O}, {k}x{k} s{s} p{p}, {variant}, {flop / 1e9:.1f} GFLOP; "
              f"planner: " + (f"halo {halo_pick}" if halo_pick else f"{chosen} (stages {G.mma_stages(variant, ctile)}, "
                              f"{'coalesced' if G.mma_coalesce(ctile) else 'direct'} store)"), flush=True)
        if halo_pick:
            entry["planner"] = f"halo {halo_pick}"
        for vname, st, store, tile, kern in kernels:
            fn = mod.get_function(kern.name)
            smem = kern.static["smem"]
            if smem > G.STATIC_SMEM:
                fn.max_dynamic_shared_size_bytes = smem
            args = tuple(ptrs[n] if n in ptrs else np.int32(dims[n]) for _, n in kern.params)
            halo = kern.family == "mma_halo"
            grid = ((tile.blocks(geom, N), -(-O // tile.bn), 1) if halo
                    else (-(-M // tile.bm), -(-O // tile.bn), 1))
            threads = tile.threads(geom) if halo else tile.threads
            y.fill(np.float16(np.nan))
            try:
                fn(grid, (threads,), args, shared_mem=smem)
                cp.cuda.Device().synchronize()
            except Exception as e:  # noqa: BLE001 - a version that cannot launch is reported
                entry["versions"].append({"version": vname, "stages": st, "store": store, "error": str(e)[:200]})
                print(f"   {vname:<10} st{st} {store}: {e}")
                continue
            got = cp.asnumpy(y[cp.asarray(rows)]).astype(np.float64)
            err = float(np.abs(got - ref).max() / np.abs(ref).max()) if np.isfinite(got).all() else float("inf")
            ev = [cp.cuda.Event() for _ in range(2 * a.reps)]
            for _ in range(2):
                fn(grid, (threads,), args, shared_mem=smem)
            ts = []
            for i in range(a.reps):
                ev[2 * i].record()
                fn(grid, (threads,), args, shared_mem=smem)
                ev[2 * i + 1].record()
            ev[-1].synchronize()
            ts = [cp.cuda.get_elapsed_time(ev[2 * i], ev[2 * i + 1]) for i in range(a.reps)]
            ms = statistics.median(ts)
            if halo:
                mark = "*" if (halo_pick == tile and (store == "coalesce") == G.mma_coalesce_halo(tile)) else " "
                shape = [tile.rows, tile.imgs, tile.bn, tile.warps_n]
                desc = f"{tile.imgs}img x {tile.rows}rows x {tile.bn}ch, {threads} threads, {smem} B smem"
            else:
                mark = "*" if (halo_pick is None and vname == chosen and st == G.mma_stages(variant, ctile)
                               and (store == "coalesce") == G.mma_coalesce(ctile)) else " "
                shape = [tile.bm, tile.bn, tile.warps_m, tile.warps_n, tile.bk]
                desc = f"{tile.bm}x{tile.bn} warps {tile.warps_m}x{tile.warps_n} bk{tile.bk}"
            entry["versions"].append({"version": vname, "tile": shape,
                                      "stages": st, "store": store, "ms": ms, "tflops": flop / ms / 1e9,
                                      "rel_err": err, "planner": mark == "*"})
            print(f" {mark} {vname:<10} st{st} {store:<8} {desc}: "
                  f"{ms * 1e3:8.1f} us {flop / ms / 1e9:6.1f} TFLOP/s  err {err:.1e}", flush=True)
        best = min((v for v in entry["versions"] if "ms" in v and v["rel_err"] < 1e-2), key=lambda v: v["ms"])
        entry["best"] = best
        print(f"   best: {best['version']} st{best['stages']} {best['store']} {best['ms'] * 1e3:.1f} us", flush=True)
        del dx, dw, y
        cp.get_default_memory_pool().free_all_blocks()
    if a.json:
        from cnnrt.fileio import write_json

        write_json(a.json, res, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
