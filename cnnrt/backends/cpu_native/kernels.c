/* cnnrt's optional compiled CPU kernels (cnnrt.backends.native compiles this at first use).
 *
 * NHWC float32, one call per block of images and output rows, so that Python threads (ctypes
 * releases the GIL) split the work exactly as they do the NumPy kernels'. Each kernel applies its
 * step's epilogue (bias, activations, a residual add) to an output vector while it is still in
 * registers: one write of the output, no pass over memory after it.
 *
 * Written with GCC/Clang vector extensions: VW floats per vector (16 where the compiler targets
 * AVX-512, else 8), no intrinsics, so it builds for whatever CPU compiles it.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>
#include <math.h>

#if defined(__AVX512F__)
#define VW 16
#else
#define VW 8
#endif
typedef float vf __attribute__((vector_size(VW * 4)));
typedef int vi __attribute__((vector_size(VW * 4)));

static inline vf ld(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf ldn(const float *p, int n) { float t[VW] = {0}; memcpy(t, p, n * 4); return ld(t); }
static inline void stn(float *p, vf v, int n) { float t[VW]; st(t, v); memcpy(p, t, n * 4); }
static inline vf splat(float a) { vf v; for (int i = 0; i < VW; i++) v[i] = a; return v; }
static inline vf vsel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
static inline vf vmax(vf a, vf b) { return vsel(a > b, a, b); }
static inline vf vmin(vf a, vf b) { return vsel(a < b, a, b); }

enum { E_BIAS = 1, E_RELU, E_CLIP, E_LEAKY, E_HSWISH, E_HSIG, E_ADD };

typedef struct {
    int n;          /* ops */
    int code[8];
    float a[8], b[8];
    const float *bias; /* per output channel */
    const float *res;  /* a residual laid out as the output */
} Epi;

/* epilogue op k on n (<= VW) values of channel ch at output offset off */
static inline vf epi1(vf v, const Epi *e, int k, size_t off, int ch, int n) {
    switch (e->code[k]) {
    case E_BIAS: v += n == VW ? ld(e->bias + ch) : ldn(e->bias + ch, n); break;
    case E_RELU: v = vmax(v, splat(0.f)); break;
    case E_CLIP: v = vmin(vmax(v, splat(e->a[k])), splat(e->b[k])); break;
    case E_LEAKY: v = vsel(v < splat(0.f), v * e->a[k], v); break;
    case E_HSWISH: v = v * vmin(vmax(v / 6.f + 0.5f, splat(0.f)), splat(1.f)); break;
    case E_HSIG: v = vmin(vmax(v * e->a[k] + e->b[k], splat(0.f)), splat(1.f)); break;
    case E_ADD: v += n == VW ? ld(e->res + off) : ldn(e->res + off, n); break;
    }
    return v;
}

/* the whole epilogue on n (<= VW) values of channel ch at output offset off */
static inline vf epi(vf v, const Epi *e, size_t off, int ch, int n) {
    for (int k = 0; k < e->n; k++) v = epi1(v, e, k, off, ch, n);
    return v;
}

/* The epilogue on a register block acc[PX][G] (output-channel block ob, np valid pixels; OFF(p):
 * an expression in p, the output offset of pixel p's channel 0): one test of the op per block, not one per vector, so
 * that a layer with a short reduction (16 input channels: 16 multiply-adds per output) does not
 * spend more on its epilogue than on its arithmetic. Rarer ops go through epi1 vector by vector. */
#define EPI_BLOCK(G, PX, OFF)                                                                       \
    for (int k = 0; k < e->n; k++) {                                                                \
        const int code = e->code[k];                                                                \
        if (code == E_BIAS) {                                                                       \
            for (int g = 0; g < G; g++) {                                                           \
                int ch = ob * ob_ + g * VW, cnt = O - ch < VW ? O - ch : VW;                        \
                if (cnt <= 0) continue;                                                             \
                vf bv = cnt == VW ? ld(e->bias + ch) : ldn(e->bias + ch, cnt);                      \
                for (int p = 0; p < PX; p++) acc[p][g] += bv;                                       \
            }                                                                                       \
        } else if (code == E_RELU) {                                                                \
            for (int p = 0; p < PX; p++)                                                            \
                for (int g = 0; g < G; g++) acc[p][g] = vmax(acc[p][g], splat(0.f));                \
        } else if (code == E_CLIP) {                                                                \
            vf lo = splat(e->a[k]), hi = splat(e->b[k]);                                            \
            for (int p = 0; p < PX; p++)                                                            \
                for (int g = 0; g < G; g++) acc[p][g] = vmin(vmax(acc[p][g], lo), hi);              \
        } else {                                                                                    \
            for (int p = 0; p < np; p++)                                                            \
                for (int g = 0; g < G; g++) {                                                       \
                    int ch = ob * ob_ + g * VW, cnt = O - ch < VW ? O - ch : VW;                    \
                    if (cnt > 0) acc[p][g] = epi1(acc[p][g], e, k, (size_t)(OFF) + ch, ch, cnt);    \
                }                                                                                   \
        }                                                                                           \
    }

/* geo (the layer's shape, fixed when the graph is compiled): H, W, C, O, KH, KW, SH, SW, DH, DW,
 * PT, PL, HO, WO. */

#define PATCH 1024 /* the longest kernel row (KW*C floats) gathered for a border pixel */
#ifndef DIRECT_PIX_OUTER_BYTES
#define DIRECT_PIX_OUTER_BYTES 32768 /* L1 data: 32 KB on Zen 4, 48 KB on the Xeon */
#endif

/* Direct convolution, any kernel/stride/dilation/padding, one group. Weights packed as
 * [O/(G*VW)][KH][KW][C][G*VW] (zeros past O). Loops: output-channel block outermost (its weights,
 * KH*KW*C*G*VW floats, stay in the core's L2 while every pixel of the call uses them), then the
 * call's output pixels (images i0..i1, rows r0..r1, in storage order) in blocks of PX: G*PX
 * vector accumulators. A call computes channel blocks b0..b1 (threads may split those too). Taps
 * that fall in the padding read a row of zeros instead (no branches in the inner loop). */
#define DIRECT(NAME, G, PX)                                                                         \
void NAME(const float *x, const int *geo, const float *wp, float *y,                                \
          int i0, int i1, int r0, int r1, int b0, int b1, const float *zeros, const Epi *e) {      \
    const int H = geo[0], W = geo[1], C = geo[2], O = geo[3], KH = geo[4], KW = geo[5];            \
    const int SH = geo[6], SW = geo[7], DH = geo[8], DW = geo[9], PT = geo[10], PL = geo[11];      \
    const int HO = geo[12], WO = geo[13];                                                           \
    const int ob_ = G * VW;                                                                         \
    const int KC = KW * C <= PATCH ? KW * C : 1;                                                    \
    float patch[PX * KC]; /* border pixels' gathered kernel rows (on the stack: at most 64 KB) */  \
    const long total = (long)(i1 - i0) * (r1 - r0) * WO;                                           \
    /* small weights (all the call's blocks in L1): pixel blocks outermost, each read once for     \
     * every channel block, instead of once per channel block */                                   \
    const int pix_outer = (long)(b1 - b0) * KH * KW * C * ob_ * 4 <= DIRECT_PIX_OUTER_BYTES;       \
    for (int obo = b0; obo < (pix_outer ? b0 + 1 : b1); obo++) {                                    \
    int cn = i0, coy = r0, cox = 0; /* the next pixel, counted up (no divisions per pixel) */      \
    for (long q0 = 0; q0 < total; q0 += PX) {                                                       \
        const float *xb[PX];                                                                        \
        float *yp[PX];                                                                              \
        int iy0[PX], ix0[PX], np = total - q0 < PX ? (int)(total - q0) : PX;                        \
        for (int p = 0; p < PX; p++) {                                                              \
            if (p < np) {                                                                           \
                xb[p] = x + (size_t)cn * H * W * C;                                                 \
                yp[p] = y + (((size_t)cn * HO + coy) * WO + cox) * O;                               \
                iy0[p] = coy * SH - PT;                                                             \
                ix0[p] = cox * SW - PL;                                                             \
                if (++cox == WO) { cox = 0; if (++coy == r1) { coy = r0; cn++; } }                  \
            } else { /* past the end: pixel 0 again, its result dropped */                          \
                xb[p] = xb[0]; yp[p] = yp[0]; iy0[p] = iy0[0]; ix0[p] = ix0[0];                     \
            }                                                                                       \
        }                                                                                           \
        for (int ob = obo; ob < (pix_outer ? b1 : obo + 1); ob++) {                                 \
        vf acc[PX][G];                                                                              \
        for (int p = 0; p < PX; p++)                                                                \
            for (int g = 0; g < G; g++) acc[p][g] = splat(0.f);                                     \
        for (int ky = 0; ky < KH; ky++) {                                                           \
            /* Undilated: each pixel's kernel row is one run of KW*C floats: in the input where it  \
             * lies inside, the zero row where the whole row is padding, else (few channels: short  \
             * runs per tap would cost more) gathered, the part inside with zeros around it, into  \
             * the pixel's patch. Then one loop for every pixel. Many channels: the block takes    \
             * this path only when every pixel's row lies inside, else the per-tap path below. */  \
            const float *xs[PX];                                                                    \
            int run = DW == 1 && KW * C <= PATCH && C < 4 * VW;                                     \
            if (DW == 1 && !run) {                                                                  \
                run = 1;                                                                            \
                for (int p = 0; p < PX && run; p++) {                                               \
                    int iy = iy0[p] + ky * DH;                                                      \
                    run = iy >= 0 && iy < H && ix0[p] >= 0 && ix0[p] + KW <= W;                     \
                }                                                                                   \
            }                                                                                       \
            if (run) {                                                                              \
                for (int p = 0; p < PX; p++) {                                                      \
                    int iy = iy0[p] + ky * DH, ix = ix0[p];                                         \
                    if (iy < 0 || iy >= H) { xs[p] = zeros; continue; }                             \
                    const float *row = xb[p] + (size_t)iy * W * C;                                  \
                    if (ix >= 0 && ix + KW <= W) { xs[p] = row + (size_t)ix * C; continue; }        \
                    float *pt = patch + (size_t)p * KC;                                          \
                    for (int kx = 0; kx < KW; kx++) {                                               \
                        int jx = ix + kx;                                                           \
                        if (jx >= 0 && jx < W) memcpy(pt + kx * C, row + (size_t)jx * C, C * 4);    \
                        else memset(pt + kx * C, 0, C * 4);                                         \
                    }                                                                               \
                    xs[p] = pt;                                                                     \
                }                                                                                   \
                const float *wk = wp + ((size_t)ob * KH + ky) * KW * C * ob_;                       \
                for (int c = 0; c < KW * C; c++) {                                                  \
                    vf w[G];                                                                        \
                    for (int g = 0; g < G; g++) w[g] = ld(wk + (size_t)c * ob_ + g * VW);           \
                    for (int p = 0; p < PX; p++) {                                                  \
                        float v = xs[p][c];                                                         \
                        for (int g = 0; g < G; g++) acc[p][g] += v * w[g];                          \
                    }                                                                               \
                }                                                                                   \
                continue;                                                                           \
            }                                                                                       \
            for (int kx = 0; kx < KW; kx++) {                                                       \
                int any = 0;                                                                        \
                for (int p = 0; p < PX; p++) {                                                      \
                    int iy = iy0[p] + ky * DH, ix = ix0[p] + kx * DW;                               \
                    int ok = iy >= 0 && iy < H && ix >= 0 && ix < W;                                \
                    xs[p] = ok ? xb[p] + ((size_t)iy * W + ix) * C : zeros;                         \
                    any |= ok;                                                                      \
                }                                                                                   \
                if (!any) continue;                                                                 \
                const float *wk = wp + (((size_t)ob * KH + ky) * KW + kx) * C * ob_;                \
                for (int c = 0; c < C; c++) {                                                       \
                    vf w[G];                                                                        \
                    for (int g = 0; g < G; g++) w[g] = ld(wk + (size_t)c * ob_ + g * VW);           \
                    for (int p = 0; p < PX; p++) {                                                  \
                        float v = xs[p][c];                                                         \
                        for (int g = 0; g < G; g++) acc[p][g] += v * w[g];                          \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        /* the epilogue op by op over the whole block */                                          \
        EPI_BLOCK(G, PX, yp[p] - y)                                                                 \
        for (int p = 0; p < np; p++)                                                                \
            for (int g = 0; g < G; g++) {                                                           \
                int ch = ob * ob_ + g * VW, cnt = O - ch < VW ? O - ch : VW;                        \
                if (cnt == VW) st(yp[p] + ch, acc[p][g]); else if (cnt > 0) stn(yp[p] + ch, acc[p][g], cnt); \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
    }                                                                                               \
}

/* register blocks (G vectors of channels x PX pixels), chosen by measurement on AVX-512 (32 vector
 * registers) and sized for AVX2's 16. One vector of channels (O <= 16): 16 pixels on the Xeon it was
 * tuned on; native.py passes DIRECT_G1_PX=8 on AMD, where a ResNet-20 stage-1 conv ran 0.99 ms with
 * 16 and 0.79-0.81 ms with 6 or 8 (Zen 4, one thread, benchmarks/cpu_profile.py). */
#ifndef DIRECT_G1_PX
#define DIRECT_G1_PX 16
#endif
#ifndef DIRECT_G2_PX
#define DIRECT_G2_PX 8
#endif
#ifndef DIRECT_G4_PX
#define DIRECT_G4_PX 6
#endif
/* three vectors (O a multiple of 3 VW but not of 4: MobileNetV2's 48, 96, 144, 240 ...), which
 * would otherwise take two-vector blocks (144: 10 vectors for 9, the last block half empty) */
#ifndef DIRECT_G3_PX
#define DIRECT_G3_PX 8
#endif
#if VW == 16
DIRECT(conv_direct_g1, 1, DIRECT_G1_PX)
DIRECT(conv_direct_g2, 2, DIRECT_G2_PX)
DIRECT(conv_direct_g3, 3, DIRECT_G3_PX)
DIRECT(conv_direct_g4, 4, DIRECT_G4_PX)
#else
DIRECT(conv_direct_g1, 1, 12)
DIRECT(conv_direct_g2, 2, 6)
DIRECT(conv_direct_g3, 3, 4)
DIRECT(conv_direct_g4, 4, 3)
#endif
/* pixels per register block of conv_direct_g<g> (for the planner's cost of a part) */
int cnnrt_direct_px(int g) {
#if VW == 16
    return g == 1 ? DIRECT_G1_PX : g == 2 ? DIRECT_G2_PX : g == 3 ? DIRECT_G3_PX : DIRECT_G4_PX;
#else
    return g == 1 ? 12 : g == 2 ? 6 : g == 3 ? 4 : 3;
#endif
}

/* Winograd F(m x m, 3x3), m = 2 or 4 (stride 1, undilated, one group): per tile of m x m outputs
 * and channel pair, (m + 2)^2 multiply-adds instead of direct's 9 m^2 (16 instead of 36 for m = 2,
 * 36 instead of 144 for m = 4). U: the transformed weights G w G^T packed [nb][(m+2)^2][C][G*VW]
 * (zeros past O; cnnrt/backends/graph_kernels.py writes them with the G of the NumPy Winograd's
 * winograd_matrices and checks that its BT and AT are the ones written out below). A call: images
 * i0..i1, tile rows t0..t1 (m output rows each), channel blocks b0..b1. Per strip of up to WT
 * tiles (in storage order, across tile rows and images): every tile's input transform BT d B into
 * V [(m+2)^2][WT][CP]; per channel block the (m+2)^2 products over the channels into
 * M [(m+2)^2][WT][G*VW] (register blocks of PX tiles x G vectors); then A^T M A with the epilogue
 * into the output. V and M (L2-sized) are the call's own. */
/* BT = [-1 0 1 0; 0 1 1 0; 0 -1 1 0; 0 -1 0 1], AT = [1 1 1 0; 0 1 -1 1] (points 0, 1, -1) */
static inline void bt_f2(vf *o, const vf *d) { o[0] = d[2] - d[0]; o[1] = d[1] + d[2]; o[2] = d[2] - d[1]; o[3] = d[3] - d[1]; }
static inline void at_f2(vf *o, const vf *m) { o[0] = m[0] + m[1] + m[2]; o[1] = m[1] - m[2] + m[3]; }
/* BT = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1],
 * AT = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1] (points 0, 1, -1, 2, -2) */
static inline void bt_f4(vf *o, const vf *d) {
    const vf a = d[4] - 4.f * d[2], b = d[3] - 4.f * d[1], c = d[4] - d[2], e = 2.f * (d[3] - d[1]);
    o[0] = 4.f * d[0] - 5.f * d[2] + d[4];
    o[1] = a + b; o[2] = a - b; o[3] = c + e; o[4] = c - e;
    o[5] = 4.f * d[1] - 5.f * d[3] + d[5];
}
static inline void at_f4(vf *o, const vf *m) {
    const vf p1 = m[1] + m[2], m1 = m[1] - m[2], p2 = m[3] + m[4], m2 = m[3] - m[4];
    o[0] = m[0] + p1 + p2; o[1] = m1 + 2.f * m2; o[2] = p1 + 4.f * p2; o[3] = m1 + 8.f * m2 + m[5];
}
#ifndef WT
#define WT 16 /* tiles a strip */
#endif
#define WINO(NAME, MT, G, PX)                                                                       \
void NAME(const float *x, const int *geo, const float *U, float *y, int i0, int i1, int t0, int t1, \
          int b0, int b1, const Epi *e) {                                                           \
    enum { A = MT + 2, AA = (MT + 2) * (MT + 2) };                                                  \
    const int H = geo[0], W = geo[1], C = geo[2], O = geo[3], PT = geo[10], PL = geo[11];          \
    const int HO = geo[12], WO = geo[13];                                                           \
    const int ob_ = G * VW, CP = (C + VW - 1) / VW * VW, TW = (WO + MT - 1) / MT;                   \
    const size_t xs = (size_t)WT * CP;                                                              \
    float *V = malloc(sizeof(float) * AA * xs), *M = malloc(sizeof(float) * AA * WT * ob_);        \
    if (!V || !M) { /* never a result left unwritten: stop the process, saying why */             \
        fputs("cnnrt: out of memory for the Winograd kernel's tiles\n", stderr);                      \
        abort();                                                                                    \
    }                                                                                               \
    const long total = (long)(i1 - i0) * (t1 - t0) * TW;                                           \
    int cn = i0, cty = t0, ctx = 0; /* the next tile, counted up (strips run across tile rows) */  \
    for (long q0 = 0; q0 < total; q0 += WT) {                                                       \
        const int nt = total - q0 < WT ? (int)(total - q0) : WT;                                    \
        int tn[WT], toy[WT], tox[WT];                                                               \
        for (int t = 0; t < nt; t++) {                                                              \
            tn[t] = cn; toy[t] = cty * MT; tox[t] = ctx * MT;                                       \
            if (++ctx == TW) { ctx = 0; if (++cty == t1) { cty = t0; cn++; } }                      \
        }                                                                                           \
        for (int t = 0; t < nt; t++) {                                                              \
            const float *xn = x + (size_t)tn[t] * H * W * C;                                        \
            const int iy0 = toy[t] - PT, ix0 = tox[t] - PL;                                         \
            const int inside = iy0 >= 0 && iy0 + A <= H && ix0 >= 0 && ix0 + A <= W;                \
            for (int c0 = 0; c0 < C; c0 += VW) {                                                    \
                const int cnt = C - c0 < VW ? C - c0 : VW;                                          \
                vf d[A][A], s[A][A], col[A], tc[A];                                                 \
                for (int u = 0; u < A; u++)                                                         \
                    for (int v = 0; v < A; v++) {                                                   \
                        const int iy = iy0 + u, ix = ix0 + v;                                       \
                        if (!inside && (iy < 0 || iy >= H || ix < 0 || ix >= W)) {                  \
                            d[u][v] = splat(0.f);                                                   \
                            continue;                                                               \
                        }                                                                           \
                        const float *q = xn + ((size_t)iy * W + ix) * C + c0;                       \
                        d[u][v] = cnt == VW ? ld(q) : ldn(q, cnt);                                  \
                    }                                                                               \
                for (int v = 0; v < A; v++) { /* BT d */                                            \
                    for (int u = 0; u < A; u++) col[u] = d[u][v];                                   \
                    bt_f##MT(tc, col);                                                              \
                    for (int u = 0; u < A; u++) s[u][v] = tc[u];                                    \
                }                                                                                   \
                for (int u = 0; u < A; u++) { /* (BT d) B */                                        \
                    bt_f##MT(tc, s[u]);                                                             \
                    float *vp = V + ((size_t)(u * A) * WT + t) * CP + c0;                           \
                    for (int v = 0; v < A; v++) st(vp + v * xs, tc[v]);                             \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        for (int ob = b0; ob < b1; ob++) {                                                          \
            for (int xi = 0; xi < AA; xi++) {                                                       \
                const float *wk = U + ((size_t)ob * AA + xi) * C * ob_;                             \
                const float *vx = V + (size_t)xi * xs;                                              \
                float *mx = M + (size_t)xi * WT * ob_;                                              \
                for (int p0 = 0; p0 < nt; p0 += PX) {                                               \
                    const float *vr[PX];                                                            \
                    for (int p = 0; p < PX; p++) vr[p] = vx + (size_t)(p0 + p < nt ? p0 + p : p0) * CP; \
                    vf acc[PX][G];                                                                  \
                    for (int p = 0; p < PX; p++)                                                    \
                        for (int g = 0; g < G; g++) acc[p][g] = splat(0.f);                         \
                    for (int c = 0; c < C; c++) {                                                   \
                        vf w[G];                                                                    \
                        for (int g = 0; g < G; g++) w[g] = ld(wk + (size_t)c * ob_ + g * VW);       \
                        for (int p = 0; p < PX; p++) {                                              \
                            const float v = vr[p][c];                                               \
                            for (int g = 0; g < G; g++) acc[p][g] += v * w[g];                      \
                        }                                                                           \
                    }                                                                               \
                    for (int p = 0; p < PX && p0 + p < nt; p++)                                     \
                        for (int g = 0; g < G; g++) st(mx + (size_t)(p0 + p) * ob_ + g * VW, acc[p][g]); \
                }                                                                                   \
            }                                                                                       \
            for (int t = 0; t < nt; t++) { /* A^T M A, then the epilogue */                         \
                const int n = tn[t], oy0 = toy[t], ox0 = tox[t];                                    \
                for (int g = 0; g < G; g++) {                                                       \
                    const int ch = ob * ob_ + g * VW, cnt = O - ch < VW ? O - ch : VW;              \
                    if (cnt <= 0) continue;                                                         \
                    vf m[A][A], r[MT][A], col[A], tc[MT], o[MT];                                    \
                    for (int xi = 0; xi < AA; xi++) m[xi / A][xi % A] = ld(M + ((size_t)xi * WT + t) * ob_ + g * VW); \
                    for (int v = 0; v < A; v++) {                                                   \
                        for (int u = 0; u < A; u++) col[u] = m[u][v];                               \
                        at_f##MT(tc, col);                                                          \
                        for (int i = 0; i < MT; i++) r[i][v] = tc[i];                               \
                    }                                                                               \
                    for (int i = 0; i < MT && oy0 + i < HO; i++) {                                  \
                        at_f##MT(o, r[i]);                                                          \
                        const size_t off = (((size_t)n * HO + oy0 + i) * WO + ox0) * O + ch;        \
                        for (int j = 0; j < MT && ox0 + j < WO; j++) {                              \
                            const vf v = epi(o[j], e, off + (size_t)j * O, ch, cnt);                \
                            if (cnt == VW) st(y + off + (size_t)j * O, v); else stn(y + off + (size_t)j * O, v, cnt); \
                        }                                                                           \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
    free(V);                                                                                        \
    free(M);                                                                                        \
}

#ifndef WINO_G1_PX
#define WINO_G1_PX 8
#endif
#ifndef WINO_G2_PX
#define WINO_G2_PX 8
#endif
#ifndef WINO_G4_PX
#define WINO_G4_PX 6
#endif
#if VW == 16
#define WINO_PX(G) (G == 1 ? WINO_G1_PX : G == 2 ? WINO_G2_PX : G == 3 ? 8 : WINO_G4_PX)
#else
#define WINO_PX(G) (G == 1 ? 12 : G == 2 ? 6 : G == 3 ? 4 : 3)
#endif
WINO(conv_wino2_g1, 2, 1, WINO_PX(1))
WINO(conv_wino2_g2, 2, 2, WINO_PX(2))
WINO(conv_wino2_g3, 2, 3, WINO_PX(3))
WINO(conv_wino2_g4, 2, 4, WINO_PX(4))
WINO(conv_wino4_g1, 4, 1, WINO_PX(1))
WINO(conv_wino4_g2, 4, 2, WINO_PX(2))
WINO(conv_wino4_g3, 4, 3, WINO_PX(3))
WINO(conv_wino4_g4, 4, 4, WINO_PX(4))

/* Depthwise 3x3: per row of output and block of 2 vectors of channels, the 9 taps' weights held
 * in registers; interior pixels read their 9 inputs without bounds checks. */
/* The usual epilogues of a depthwise layer (bias, then nothing, ReLU, a clip or HardSwish) held in
 * registers for a block of 2 VW channels: one test per block instead of a dispatch per op per
 * vector. kind 0: something else (epi, op by op). */
typedef struct { int kind; vf b0, b1, lo, hi; } FastEpi;

static inline FastEpi fast_epi(const Epi *e, int c0, int cnt0, int cnt1) {
    FastEpi f;
    f.kind = 0;
    f.b0 = f.b1 = f.lo = f.hi = splat(0.f);
    if (e->n < 1 || e->n > 2 || e->code[0] != E_BIAS) return f;
    int act = e->n == 2 ? e->code[1] : 0;
    if (act == E_RELU) { f.kind = 2; }
    else if (act == E_CLIP) { f.kind = 3; f.lo = splat(e->a[1]); f.hi = splat(e->b[1]); }
    else if (act == E_HSWISH) { f.kind = 4; }
    else if (act == 0) { f.kind = 1; }
    else return f;
    f.b0 = cnt0 == VW ? ld(e->bias + c0) : ldn(e->bias + c0, cnt0);
    if (cnt1 > 0) f.b1 = cnt1 == VW ? ld(e->bias + c0 + VW) : ldn(e->bias + c0 + VW, cnt1);
    return f;
}

static inline vf fast_apply(vf a, vf b, const FastEpi *f) {
    a += b;
    switch (f->kind) {
    case 2: return vmax(a, splat(0.f));
    case 3: return vmin(vmax(a, f->lo), f->hi);
    case 4: return a * vmin(vmax(a / 6.f + 0.5f, splat(0.f)), splat(1.f));
    default: return a;
    }
}

static void dw3x3(const float *x, int H, int W, int C, const float *w, int SH, int SW, int DH, int DW,
                  int PT, int PL, float *y, int HO, int WO, int i0, int i1, int r0, int r1, int cpad,
                  const Epi *e) {
    for (int n = i0; n < i1; n++) {
        const float *xn = x + (size_t)n * H * W * C;
        for (int oy = r0; oy < r1; oy++) {
            int iy0 = oy * SH - PT;
            int rows_in = iy0 >= 0 && iy0 + 2 * DH < H;
            for (int c0 = 0; c0 < C; c0 += 2 * VW) {
                int cnt0 = C - c0 < VW ? C - c0 : VW;
                int cnt1 = C - c0 - VW < VW ? C - c0 - VW : VW;
                int full = cnt0 == VW && cnt1 == VW;
                const FastEpi fe = fast_epi(e, c0, cnt0, cnt1);
                vf w0[9], w1[9];
                for (int t = 0; t < 9; t++) {
                    w0[t] = ld(w + (size_t)t * cpad + c0);
                    w1[t] = ld(w + (size_t)t * cpad + c0 + VW);
                }
                for (int ox = 0; ox < WO; ox++) {
                    int ix0 = ox * SW - PL;
                    float *yp = y + (((size_t)n * HO + oy) * WO + ox) * C;
                    size_t off = (size_t)(yp - y);
                    vf a0 = splat(0.f), a1 = splat(0.f);
                    if (full && rows_in && ix0 >= 0 && ix0 + 2 * DW < W) {
                        const float *xp = xn + ((size_t)iy0 * W + ix0) * C + c0;
                        for (int ky = 0; ky < 3; ky++)
                            for (int kx = 0; kx < 3; kx++) {
                                const float *q = xp + ((size_t)ky * DH * W + (size_t)kx * DW) * C;
                                a0 += ld(q) * w0[ky * 3 + kx];
                                a1 += ld(q + VW) * w1[ky * 3 + kx];
                            }
                    } else {
                        for (int ky = 0; ky < 3; ky++) {
                            int iy = iy0 + ky * DH;
                            if (iy < 0 || iy >= H) continue;
                            for (int kx = 0; kx < 3; kx++) {
                                int ix = ix0 + kx * DW;
                                if (ix < 0 || ix >= W) continue;
                                const float *q = xn + ((size_t)iy * W + ix) * C + c0;
                                a0 += (cnt0 == VW ? ld(q) : ldn(q, cnt0)) * w0[ky * 3 + kx];
                                if (cnt1 > 0) a1 += (cnt1 == VW ? ld(q + VW) : ldn(q + VW, cnt1)) * w1[ky * 3 + kx];
                            }
                        }
                    }
                    if (fe.kind) {
                        a0 = fast_apply(a0, fe.b0, &fe);
                        a1 = fast_apply(a1, fe.b1, &fe);
                    } else {
                        a0 = epi(a0, e, off + c0, c0, cnt0);
                        if (cnt1 > 0) a1 = epi(a1, e, off + c0 + VW, c0 + VW, cnt1);
                    }
                    if (cnt0 == VW) st(yp + c0, a0); else stn(yp + c0, a0, cnt0);
                    if (cnt1 > 0) {
                        if (cnt1 == VW) st(yp + c0 + VW, a1); else stn(yp + c0 + VW, a1, cnt1);
                    }
                }
            }
        }
    }
}

/* Depthwise convolution (channel multiplier 1). Weights [KH][KW][Cpad], Cpad a multiple of 2 VW. */
void conv_depthwise(const float *x, const int *geo, const float *w, float *y, int i0, int i1, int r0, int r1,
                    int cpad, const Epi *e) {
    const int H = geo[0], W = geo[1], C = geo[2], KH = geo[4], KW = geo[5];
    const int SH = geo[6], SW = geo[7], DH = geo[8], DW = geo[9], PT = geo[10], PL = geo[11];
    const int HO = geo[12], WO = geo[13];
    if (KH == 3 && KW == 3) {
        dw3x3(x, H, W, C, w, SH, SW, DH, DW, PT, PL, y, HO, WO, i0, i1, r0, r1, cpad, e);
        return;
    }
    for (int n = i0; n < i1; n++) {
        const float *xn = x + (size_t)n * H * W * C;
        for (int oy = r0; oy < r1; oy++) {
            for (int ox = 0; ox < WO; ox++) {
                float *yp = y + (((size_t)n * HO + oy) * WO + ox) * C;
                size_t off = (size_t)(yp - y);
                for (int c0 = 0; c0 < C; c0 += 2 * VW) {
                    int cnt0 = C - c0 < VW ? C - c0 : VW;
                    int cnt1 = C - c0 - VW < VW ? C - c0 - VW : VW;
                    vf a0 = splat(0.f), a1 = splat(0.f);
                    for (int ky = 0; ky < KH; ky++) {
                        int iy = oy * SH - PT + ky * DH;
                        if (iy < 0 || iy >= H) continue;
                        for (int kx = 0; kx < KW; kx++) {
                            int ix = ox * SW - PL + kx * DW;
                            if (ix < 0 || ix >= W) continue;
                            const float *xp = xn + ((size_t)iy * W + ix) * C + c0;
                            const float *wk = w + (size_t)(ky * KW + kx) * cpad + c0;
                            a0 += (cnt0 == VW ? ld(xp) : ldn(xp, cnt0)) * ld(wk);
                            if (cnt1 > 0) a1 += (cnt1 == VW ? ld(xp + VW) : ldn(xp + VW, cnt1)) * ld(wk + VW);
                        }
                    }
                    a0 = epi(a0, e, off + c0, c0, cnt0);
                    if (cnt0 == VW) st(yp + c0, a0); else stn(yp + c0, a0, cnt0);
                    if (cnt1 > 0) {
                        a1 = epi(a1, e, off + c0 + VW, c0 + VW, cnt1);
                        if (cnt1 == VW) st(yp + c0 + VW, a1); else stn(yp + c0 + VW, a1, cnt1);
                    }
                }
            }
        }
    }
}

/* Max-pool (avg = 0) or average pool (avg = 1, inv: 1/count per output pixel, HO*WO). */
void pool2d(const float *x, int H, int W, int C, int KH, int KW, int SH, int SW, int DH, int DW,
            int PT, int PL, float *y, int HO, int WO, int i0, int i1, int r0, int r1, int avg,
            const float *inv, const Epi *e) {
    if (!avg && e->n == 0 && KH == 2 && KW == 2 && SH == 2 && SW == 2 && DH == 1 && DW == 1 && PT == 0 && PL == 0
        && 2 * HO <= H && 2 * WO <= W) {
        /* the common 2x2/2 max-pool inside the map: four loads and three maxima per vector */
        for (int n = i0; n < i1; n++) {
            const float *xn = x + (size_t)n * H * W * C;
            for (int oy = r0; oy < r1; oy++) {
                const float *x0 = xn + (size_t)(2 * oy) * W * C, *x1 = x0 + (size_t)W * C;
                float *yp = y + (((size_t)n * HO + oy) * WO) * C;
                for (int ox = 0; ox < WO; ox++, yp += C) {
                    const float *a = x0 + (size_t)(2 * ox) * C, *b = x1 + (size_t)(2 * ox) * C;
                    int c0 = 0;
                    for (; c0 + VW <= C; c0 += VW)
                        st(yp + c0, vmax(vmax(ld(a + c0), ld(a + C + c0)), vmax(ld(b + c0), ld(b + C + c0))));
                    for (; c0 < C; c0++) {
                        float m = a[c0] > a[C + c0] ? a[c0] : a[C + c0];
                        float m2 = b[c0] > b[C + c0] ? b[c0] : b[C + c0];
                        yp[c0] = m > m2 ? m : m2;
                    }
                }
            }
        }
        return;
    }
    for (int n = i0; n < i1; n++) {
        const float *xn = x + (size_t)n * H * W * C;
        for (int oy = r0; oy < r1; oy++) {
            for (int ox = 0; ox < WO; ox++) {
                float *yp = y + (((size_t)n * HO + oy) * WO + ox) * C;
                size_t off = (size_t)(yp - y);
                for (int c0 = 0; c0 < C; c0 += VW) {
                    int cnt = C - c0 < VW ? C - c0 : VW;
                    vf a = splat(avg ? 0.f : -__builtin_inff());
                    for (int ky = 0; ky < KH; ky++) {
                        int iy = oy * SH - PT + ky * DH;
                        if (iy < 0 || iy >= H) continue;
                        for (int kx = 0; kx < KW; kx++) {
                            int ix = ox * SW - PL + kx * DW;
                            if (ix < 0 || ix >= W) continue;
                            const float *xp = xn + ((size_t)iy * W + ix) * C + c0;
                            vf v = cnt == VW ? ld(xp) : ldn(xp, cnt);
                            a = avg ? a + v : vmax(a, v);
                        }
                    }
                    if (avg) a *= inv[oy * WO + ox];
                    a = epi(a, e, off + c0, c0, cnt);
                    if (cnt == VW) st(yp + c0, a); else stn(yp + c0, a, cnt);
                }
            }
        }
    }
}

/* Dense (y[i, c] = epilogue(sum_k x[i, k] * w[k, c])) for images [i0, i1) and output columns
 * [c0, c1), c0 a multiple of DB_W. The weights come packed in strips of DB_W columns, each strip
 * K rows of DB_W floats, contiguous (zeros past N): read straight from the (K, N) matrix, a strip's
 * rows are N floats apart (4 KB for Deep MNIST's fc1), every one in the same few cache sets and on
 * its own page, and the strip never stays in cache; BLAS avoids that by packing the whole matrix
 * on every call (25 MB of memory traffic for fc1's 12.8 MB, which on 16 threads of small chunks
 * cost more than the arithmetic). Here a strip (K * DB_W floats: 800 KB for fc1 at VW = 16) stays
 * in L2 while every group of up to 4 images goes through it: 4 x DB_V accumulators.
 * With skip_zeros only the k where some image of the group has a non-zero input are visited
 * (after ReLU and max-pool most inputs are exact zeros: one Deep MNIST image reads 12% of fc1's
 * weights), from a list made once per group, so no branch depends on the data; callers set it
 * only when every weight is finite, so a skipped term is an exact zero. */
#define DB_V 4
#define DB_W (DB_V * VW)
#define DB_LOOP(R)                                                                                  \
    for (int j = 0; j < m; j++) {                                                                   \
        const int k = ks ? ks[j] : j;                                                               \
        const float *wk = ws + (size_t)k * DB_W;                                                    \
        const vf b0 = ld(wk), b1 = ld(wk + VW), b2 = ld(wk + 2 * VW), b3 = ld(wk + 3 * VW);          \
        for (int r = 0; r < R; r++) {                                                               \
            const float a = xr[r][k]; /* (vector * scalar: one broadcast; splat() here was 16) */     \
            acc[r][0] += b0 * a; acc[r][1] += b1 * a; acc[r][2] += b2 * a; acc[r][3] += b3 * a;     \
        }                                                                                           \
    }
void dense_block(const float *x, const int *geo, const float *wp, float *y, int i0, int i1, int c0, int c1,
                 int skip_zeros, const Epi *e) {
    const int K = geo[0], N = geo[1], nq = (i1 - i0 + 3) / 4;
    if (nq <= 0 || c1 <= c0) return;
    int stack_ks[4096], *lists = NULL, counts[64], *cnt = counts;
    if (skip_zeros) {
        size_t need = (size_t)nq * K;
        lists = need <= 4096 ? stack_ks : malloc(need * sizeof(int));
        if (nq > 64) cnt = malloc(nq * sizeof(int));
        if (!lists || !cnt) { /* no memory for the lists: every k */
            if (lists && lists != stack_ks) free(lists);
            if (cnt && cnt != counts) free(cnt);
            lists = NULL; cnt = counts; skip_zeros = 0;
        }
    }
    if (skip_zeros)
        for (int q = 0; q < nq; q++) {
            const int i = i0 + 4 * q, nr = i1 - i < 4 ? i1 - i : 4;
            int *ks = lists + (size_t)q * K, m = 0;
            for (int k = 0; k < K; k++) {
                int nz = 0;
                for (int r = 0; r < nr; r++) nz |= x[(size_t)(i + r) * K + k] != 0.f;
                ks[m] = k;
                m += nz;
            }
            cnt[q] = m;
        }
    for (int c = c0; c < c1; c += DB_W) {
        const float *ws = wp + (size_t)(c / DB_W) * K * DB_W;
        const int w = (c1 < N ? c1 : N) - c;
        for (int q = 0; q < nq; q++) {
            const int i = i0 + 4 * q, nr = i1 - i < 4 ? i1 - i : 4;
            const int *ks = skip_zeros ? lists + (size_t)q * K : NULL, m = skip_zeros ? cnt[q] : K;
            const float *xr[4];
            for (int r = 0; r < 4; r++) xr[r] = x + (size_t)(i + (r < nr ? r : nr - 1)) * K;
            vf acc[4][DB_V];
            for (int r = 0; r < 4; r++)
                for (int v = 0; v < DB_V; v++) acc[r][v] = splat(0.f);
            switch (nr) {
            case 4: DB_LOOP(4) break;
            case 3: DB_LOOP(3) break;
            case 2: DB_LOOP(2) break;
            default: DB_LOOP(1) break;
            }
            for (int r = 0; r < nr; r++)
                for (int v = 0; v < DB_V && v * VW < w; v++) {
                    const int n = w - v * VW < VW ? w - v * VW : VW, ch = c + v * VW;
                    const size_t off = (size_t)(i + r) * N + ch;
                    const vf o = epi(acc[r][v], e, off, ch, n);
                    if (n == VW) st(y + off, o); else stn(y + off, o, n);
                }
        }
    }
    if (lists && lists != stack_ks) free(lists);
    if (cnt != counts) free(cnt);
}

int cnnrt_dense_strip(void) { return DB_W; }

/* Softmax (or log-softmax) over the last axis, for a program's part: images [i0, i1), each of
 * geo[1] rows of geo[0] values. The same steps as the NumPy kernel: subtract the row's maximum,
 * exponentiate, divide by the sum (log: subtract the sum's log). */
void softmax_rows(const float *x, const int *geo, float *y, int i0, int i1, int log_) {
    const int C = geo[0], R = geo[1];
    for (size_t r = (size_t)i0 * R; r < (size_t)i1 * R; r++) {
        const float *a = x + r * C;
        float *b = y + r * C, m = a[0], sum = 0.f;
        for (int c = 1; c < C; c++) m = a[c] > m || a[c] != a[c] ? a[c] : m;
        for (int c = 0; c < C; c++) {
            const float e = expf(a[c] - m);
            sum += e;
            if (!log_) b[c] = e;
        }
        if (log_) {
            const float ls = logf(sum);
            for (int c = 0; c < C; c++) b[c] = (a[c] - m) - ls;
        } else {
            for (int c = 0; c < C; c++) b[c] /= sum;
        }
    }
}

int cnnrt_vector_width(void) { return VW; }

/* ------------------------------------------------------------------ programs
 *
 * A run of compiled steps in one call, for one image (or a few) over several threads: Python's
 * per-step cost (a thread pool's submit and wait, tens of microseconds) is more than a small
 * layer's whole work, so the steps' parts are handed to threads here instead. Each step is a list
 * of parts (tasks); the threads take parts as they finish their last (an atomic counter per step)
 * and meet at a barrier before the next step. The worker threads live as long as the process;
 * between programs they spin a little (the next program is often microseconds away), then sleep.
 * One program runs at a time; a caller asking for one thread runs it inline. */

typedef struct {
    int kind;            /* 1-4: conv_direct_g1/g2/g3/g4; 11-14: conv_wino2_g1..g4; 21-24: conv_wino4_g1..g4; 5: conv_depthwise; 6: pool2d; 7: dense_block; 8: softmax_rows */
    int i0, i1, r0, r1, b0, b1, cpad_or_avg;
    const float *x, *w, *zeros, *inv;
    float *y;
    const int *geo;      /* conv: as the kernels take it; pool: H W C KH KW SH SW DH DW PT PL HO WO */
    const Epi *e;
} Task;

static void run_task(const Task *t) {
    switch (t->kind) {
    case 1: conv_direct_g1(t->x, t->geo, t->w, t->y, t->i0, t->i1, t->r0, t->r1, t->b0, t->b1, t->zeros, t->e); break;
    case 2: conv_direct_g2(t->x, t->geo, t->w, t->y, t->i0, t->i1, t->r0, t->r1, t->b0, t->b1, t->zeros, t->e); break;
    case 3: conv_direct_g3(t->x, t->geo, t->w, t->y, t->i0, t->i1, t->r0, t->r1, t->b0, t->b1, t->zeros, t->e); break;
    case 4: conv_direct_g4(t->x, t->geo, t->w, t->y, t->i0, t->i1, t->r0, t->r1, t->b0, t->b1, t->zeros, t->e); break;
    case 11: conv_wino2_g1(t->x, t->geo, t->w, t->y, t->i0, t->i1, t->r0, t->r1, t->b0, t->b1, t->e); break;
    case 12: conv_wino2_g2(t->x, t->geo, t->w, t->y, t->i0, t->i1, t->r0, t->r1, t->b0, t->b1, t->e); break;
    case 13: conv_wino2_g3(t->x, t->geo, t->w, t->y, t->i0, t->i1, t->r0, t->r1, t->b0, t->b1, t->e); break;
    case 14: conv_wino2_g4(t->x, t->geo, t->w, t->y, t->i0, t->i1, t->r0, t->r1, t->b0, t->b1, t->e); break;
    case 21: conv_wino4_g1(t->x, t->geo, t->w, t->y, t->i0, t->i1, t->r0, t->r1, t->b0, t->b1, t->e); break;
    case 22: conv_wino4_g2(t->x, t->geo, t->w, t->y, t->i0, t->i1, t->r0, t->r1, t->b0, t->b1, t->e); break;
    case 23: conv_wino4_g3(t->x, t->geo, t->w, t->y, t->i0, t->i1, t->r0, t->r1, t->b0, t->b1, t->e); break;
    case 24: conv_wino4_g4(t->x, t->geo, t->w, t->y, t->i0, t->i1, t->r0, t->r1, t->b0, t->b1, t->e); break;
    case 5: conv_depthwise(t->x, t->geo, t->w, t->y, t->i0, t->i1, t->r0, t->r1, t->cpad_or_avg, t->e); break;
    case 6: {
        const int *g = t->geo;
        pool2d(t->x, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], t->y, g[11], g[12],
               t->i0, t->i1, t->r0, t->r1, t->cpad_or_avg, t->inv, t->e);
        break;
    }
    case 7: dense_block(t->x, t->geo, t->w, t->y, t->i0, t->i1, t->b0, t->b1, t->cpad_or_avg, t->e); break;
    case 8: softmax_rows(t->x, t->geo, t->y, t->i0, t->i1, t->cpad_or_avg); break;
    }
}

#define MAX_WORKERS 255
static long spin_ns = 100000L; /* how long a worker waits for the next program before it sleeps */
void cnnrt_set_spin_ns(long ns) { spin_ns = ns < 0 ? 0 : ns; }
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER, prog_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cv = PTHREAD_COND_INITIALIZER;
static int n_workers;
static pthread_t workers[MAX_WORKERS];
static int caller_cpu = -1; /* the CPU the workers were last kept off */
static atomic_int job_gen, bar_count, bar_phase, ticket[MAX_WORKERS];
static const Task *job_tasks;
static const int *job_starts;
static int job_steps, job_threads;
static atomic_int *job_next;
static int job_next_cap;

static inline void cpu_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

/* Spin, then yield the core: with more threads than free cores the thread waited for may need it. */
static void barrier(int n) {
    int ph = atomic_load(&bar_phase);
    if (atomic_fetch_add(&bar_count, 1) == n - 1) {
        atomic_store(&bar_count, 0);
        atomic_fetch_add(&bar_phase, 1);
    } else {
        for (long k = 0; atomic_load(&bar_phase) == ph; k++) {
            if (k < 2000) cpu_pause(); else sched_yield();
        }
    }
}

/* Per-step wall time of programs, for profiling (benchmarks/cpu_threads.py): when a buffer is set,
 * the caller adds each step's nanoseconds (from the previous barrier to the end of this one) to
 * prof_ns[step]. Off (NULL) by default: one predictable branch per step. */
static long *prof_ns;
static int prof_cap;
void cnnrt_program_profile(long *buf, int cap) { prof_ns = buf; prof_cap = buf ? cap : 0; }

static void run_share(int caller) {
    long t = caller && prof_ns ? now_ns() : 0;
    for (int s = 0; s < job_steps; s++) {
        int a = job_starts[s], b = job_starts[s + 1];
        for (int k; (k = a + atomic_fetch_add(&job_next[s], 1)) < b;) run_task(job_tasks + k);
        barrier(job_threads);
        if (t && s < prof_cap) { long u = now_ns(); prof_ns[s] += u - t; t = u; }
    }
}

static void run_inline(const Task *tasks, const int *starts, int nsteps) {
    long t = prof_ns ? now_ns() : 0;
    for (int s = 0; s < nsteps; s++) {
        for (int k = starts[s]; k < starts[s + 1]; k++) run_task(tasks + k);
        if (t && s < prof_cap) { long u = now_ns(); prof_ns[s] += u - t; t = u; }
    }
}

/* Worker id waits for its ticket to change (the caller hands one to each thread a program needs,
 * after the program's description is written), runs its share, and waits again. */
static void *worker(void *arg) {
    int id = (int)(intptr_t)arg, seen = 0; /* tickets start at 0; a job's is at least 1 */
    for (;;) {
        long k = 0, t0 = 0;
        while (atomic_load(&ticket[id]) == seen) {
            if ((++k & 63) != 0) { cpu_pause(); continue; }
            if (t0 == 0) t0 = now_ns();
            if (now_ns() - t0 < spin_ns) { sched_yield(); continue; }
            pthread_mutex_lock(&pool_mu);
            while (atomic_load(&ticket[id]) == seen) pthread_cond_wait(&pool_cv, &pool_mu);
            pthread_mutex_unlock(&pool_mu);
        }
        seen = atomic_load(&ticket[id]);
        run_share(0);
    }
    return NULL;
}

/* Keep the workers off the caller's CPU. After an idle spell the scheduler tends to wake a worker
 * on the CPU of the thread that woke it (the caller); there the two then take turns on one core
 * for every step (measured: one Deep MNIST image 0.65 ms instead of 0.16 ms on 2 cores, the same
 * as with both pinned to one CPU). Only when the caller's CPU changes: a syscall per worker. */
static void keep_off_caller(int threads) {
    int me = sched_getcpu();
    if (me < 0 || me == caller_cpu) return;
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0 || CPU_COUNT(&allowed) < 2) return;
    CPU_CLR(me, &allowed);
    for (int i = 0; i < threads - 1 && i < n_workers; i++) pthread_setaffinity_np(workers[i], sizeof allowed, &allowed);
    caller_cpu = me;
}

static void after_fork_child(void) { /* the workers did not come along */
    n_workers = 0;
    caller_cpu = -1;
    for (int i = 0; i < MAX_WORKERS; i++) atomic_store(&ticket[i], 0);
    atomic_store(&bar_count, 0);
    pthread_mutex_init(&pool_mu, NULL);
    pthread_mutex_init(&prog_mu, NULL);
    pthread_cond_init(&pool_cv, NULL);
}

/* Run nsteps steps: step s is tasks[starts[s]] .. tasks[starts[s+1]-1], on `threads` threads (the
 * caller's included). Returns the threads used (fewer when workers could not be started). */
int cnnrt_run_program(const Task *tasks, const int *starts, int nsteps, int threads) {
    static int atfork_done;
    if (threads > MAX_WORKERS + 1) threads = MAX_WORKERS + 1;
    if (threads <= 1) {
        run_inline(tasks, starts, nsteps);
        return 1;
    }
    pthread_mutex_lock(&prog_mu);
    if (!atfork_done) { pthread_atfork(NULL, NULL, after_fork_child); atfork_done = 1; }
    while (n_workers < threads - 1) {
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &at, worker, (void *)(intptr_t)n_workers);
        pthread_attr_destroy(&at);
        if (rc != 0) break;
        workers[n_workers++] = t;
        caller_cpu = -1; /* the new one is not kept off yet */
    }
    if (threads > n_workers + 1) threads = n_workers + 1;
    if (threads <= 1) {
        pthread_mutex_unlock(&prog_mu);
        run_inline(tasks, starts, nsteps);
        return 1;
    }
    if (job_next_cap < nsteps) {
        atomic_int *p = realloc(job_next, sizeof(atomic_int) * nsteps);
        if (!p) {
            pthread_mutex_unlock(&prog_mu);
            run_inline(tasks, starts, nsteps);
            return 1;
        }
        job_next = p;
        job_next_cap = nsteps;
    }
    for (int s = 0; s < nsteps; s++) atomic_init(&job_next[s], 0);
    keep_off_caller(threads);
    job_tasks = tasks; job_starts = starts; job_steps = nsteps; job_threads = threads;
    int gen = atomic_fetch_add(&job_gen, 1) + 1;
    pthread_mutex_lock(&pool_mu);
    for (int i = 0; i < threads - 1; i++) atomic_store(&ticket[i], gen); /* publishes the job */
    pthread_cond_broadcast(&pool_cv);
    pthread_mutex_unlock(&pool_mu);
    run_share(1); /* its last barrier: every thread is done with every task */
    pthread_mutex_unlock(&prog_mu);
    return threads;
}

int cnnrt_task_size(void) { return (int)sizeof(Task); }
