// cnnrt CUDA kernels for the Deep MNIST net (28x28x1 -> conv5x5x32 -> pool -> conv5x5x64 -> pool
// -> fc -> fc -> softmax), compiled at run time by NVRTC through CuPy's RawModule.
//
// No headers: fp16 values travel as raw 16-bit patterns and are converted with inline PTX, and the
// tensor cores are driven with inline PTX (ldmatrix + mma.sync m16n8k16, fp16 in, fp32 accumulate),
// so this builds with the headers that pip-installed CUDA wheels ship.
//
// Layouts (the engine's): activations NHWC, conv weights [out][kh][kw][in], dense weights [out][in]
// with `in` in NHWC flatten order.
//
//   features_*      uint8 (or float) images -> conv1 + bias + ReLU + 2x2 max-pool -> conv2 + bias +
//                   ReLU + 2x2 max-pool -> fp16 features [n][7*7*64]. The 28x28x32 and 14x14x64
//                   activations never leave the SM; the 14x14x32 one lives in shared memory.
//                   conv1 and conv2 are implicit GEMMs on the tensor cores; pooling is done on the
//                   accumulators (conv1: a thread holds a whole 2x2 window; conv2: a thread pair).
//                   _persistent: one block per SM for large batches; _small: 13 blocks per image.
//   fc2_softmax     relu(fc1 + bias) read once -> fc2 + bias -> softmax + argmax, 4 images per warp
//                   (fc1 itself is a cuBLAS fp16 GEMM with fp32 accumulation).
//   fc1_small       fc1 for a few images (a GEMM library's tiles would be mostly empty).
//   fc12_small      the latency path's fc1 + fc2 + softmax + argmax in one launch.
//   spin            a timing helper.
//
// The dev/cuda/ directory holds the earlier and alternative versions, CPU reference checks, and
// timings (dev/cuda/NOTES.md).

typedef unsigned short half_t;
typedef unsigned int u32;

#define FULL_MASK 0xffffffffu

// Which kernels this translation unit holds: cnnrt.backends.cuda.load_module compiles the file
// once per part (-DCNNRT_PART=k, DEEP_MNIST_PARTS there), side by side; without CNNRT_PART it
// holds them all.
#ifndef CNNRT_PART
#define CNNRT_PART -1
#endif
#define CNNRT_IN_PART(k) (CNNRT_PART < 0 || CNNRT_PART == (k))

// our own 16-byte vectors (no dependence on the vector-type headers)
struct alignas(16) u32x4 { u32 x, y, z, w; };
struct alignas(16) f32x4 { float x, y, z, w; };

// conv2 weights in shared memory: 64 rows (output channels) of 800 fp16 (kh, kw, c), padded by 16 B
// so that the 8 row addresses of one ldmatrix land in 8 different bank groups.
#define W2_ROW_BYTES 1616
#define W2_BYTES (64 * W2_ROW_BYTES)
// one image's pooled conv1 output: 14 rows of 16 pixels (columns 14, 15 stay zero) x 32 channels
// fp16 = 4 chunks of 16 B per pixel, the chunk index XOR-swizzled with bits 1..2 of the column
// (conflict-free ldmatrix rows). A tap that falls left or right of the image lands on a zero
// column; one above or below is sent to the zero band, which also sits right before the images.
#define ACT_ROW_BYTES 1024
#define ACT_IMG_BYTES (14 * ACT_ROW_BYTES)
#define ZB_BYTES 1152
// per image: the input as fp16, zero-padded to 32x32 (2 pixels each side)
#define SCR_BYTES 2048

// P_GROUP (images per step in the persistent kernel), P_WARPS, P_SMEM_BYTES and FC2_MAXC come from
// cnnrt/backends/cuda.py, which passes them to NVRTC; the layout here must add up to P_SMEM_BYTES.
#if !defined(P_GROUP) || !defined(P_WARPS) || !defined(P_SMEM_BYTES) || !defined(FC2_MAXC)
#error "compile through cnnrt.backends.cuda.load_module: it defines P_GROUP, P_WARPS, P_SMEM_BYTES, FC2_MAXC"
#endif

#define OFF_W2 0
#define OFF_ZB (OFF_W2 + W2_BYTES)
#define OFF_ACT (OFF_ZB + ZB_BYTES)
#define OFF_SCR (OFF_ACT + P_GROUP * ACT_IMG_BYTES)
static_assert(P_SMEM_BYTES == OFF_SCR + P_GROUP * SCR_BYTES + 64,  // + 64: the base is aligned up at run time
              "P_SMEM_BYTES (cuda.py) does not match this shared-memory layout");

// ------------------------------------------------------------------ small helpers

__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}

__device__ __forceinline__ half_t f2h(float f) {
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float h2f(half_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// two floats -> one f16x2 word, `lo` in the low half
__device__ __forceinline__ u32 pack_h2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// D = A(16x16, row) * B(16x8, col) + D, fp16 inputs, fp32 accumulators
__device__ __forceinline__ void mma16816(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2x2 max-pool of one accumulator pair, then bias + ReLU, packed to f16x2.
// The thread holds rows g (top pixel) and g+8 (bottom pixel) of one window; the horizontal
// neighbour is in lane ^ 4. All 32 lanes must call this.
__device__ __forceinline__ u32 pool_bias_relu(const float (&c)[4], float bias0, float bias1) {
    float v0 = fmaxf(c[0], c[2]);
    float v1 = fmaxf(c[1], c[3]);
    v0 = fmaxf(v0, __shfl_xor_sync(FULL_MASK, v0, 4));
    v1 = fmaxf(v1, __shfl_xor_sync(FULL_MASK, v1, 4));
    return pack_h2(fmaxf(v0 + bias0, 0.f), fmaxf(v1 + bias1, 0.f));
}

// ------------------------------------------------------------------ input image -> fp16 scratch

// scratch: 32x32 fp16, pixel (y, x) at [(y+2)*32 + x+2], the border already zero
__device__ __forceinline__ void load_image(const unsigned char* img, half_t* scr, float scale, int i0, int step) {
    for (int c = i0; c < 49; c += step) {  // 784 bytes = 49 chunks of 16
        const u32x4 v = *reinterpret_cast<const u32x4*>(img + c * 16);
        u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int b = 0; b < 16; b++) {
            int p = c * 16 + b;
            int y = p / 28, x = p - y * 28;
            scr[(y + 2) * 32 + x + 2] = f2h((float)((w[b >> 2] >> ((b & 3) * 8)) & 0xffu) * scale);
        }
    }
}

__device__ __forceinline__ void load_image(const float* img, half_t* scr, float scale, int i0, int step) {
    for (int c = i0; c < 196; c += step) {  // 784 floats = 196 float4
        const f32x4 v = *reinterpret_cast<const f32x4*>(img + c * 4);
        float f[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int b = 0; b < 4; b++) {
            int p = c * 4 + b;
            int y = p / 28, x = p - y * 28;
            scr[(y + 2) * 32 + x + 2] = f2h(f[b] * scale);
        }
    }
}

// ------------------------------------------------------------------ conv1 + bias + ReLU + pool (one warp)

// conv1 as a GEMM whose rows are horizontal pixel pairs: row = (y, x even), K = 5 rows x 6 columns
// of the input patch around the pair (k = kh*6 + c, 30 used, padded to 32), N = 64 = 32 channels of
// the left pixel (weights in columns c = 0..4) and 32 of the right pixel (the same weights, c = 1..5).
// A 16-row m-tile holds 8 pool windows: row g = top pair of window g, row g+8 = bottom pair, so a
// thread holds all four pixels of its window and pools without shuffles. Every A register is one
// aligned 32-bit load (k pairs never straddle a patch row; x and c are even).
// w1f: [64 n][32 k] fp16 read as u32. Writes units u0, u0+ustep, ... (of 25) of one image.
__device__ __forceinline__ void conv1_units(const half_t* scr, unsigned char* act, const u32* __restrict__ w1f,
                                            const float* __restrict__ b1, int lane, int u0, int ustep) {
    const int g = lane >> 2, t = lane & 3;
    u32 bf[8][2][2];
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int s = 0; s < 2; s++) {
            bf[nt][s][0] = __ldg(w1f + (8 * nt + g) * 16 + 8 * s + t);
            bf[nt][s][1] = __ldg(w1f + (8 * nt + g) * 16 + 8 * s + t + 4);
        }
    int off[2][2];
#pragma unroll
    for (int s = 0; s < 2; s++)
#pragma unroll
        for (int q = 0; q < 2; q++) {
            const int k = 16 * s + 2 * t + 8 * q;
            off[s][q] = k < 30 ? (k / 6) * 32 + (k % 6) : 0;  // zero weights past 30: any finite value
        }
    float bias[4][2];
#pragma unroll
    for (int nt = 0; nt < 4; nt++) {
        bias[nt][0] = __ldg(b1 + 8 * nt + 2 * t);
        bias[nt][1] = __ldg(b1 + 8 * nt + 2 * t + 1);
    }
    for (int u = u0; u < 25; u += ustep) {
        const int w = 8 * u + g;           // pool window (of 196) of rows g and g+8
        const int wc = w < 196 ? w : 195;  // rows past the image compute something finite, stored nowhere
        const int py = wc / 14, px = wc - py * 14;
        const half_t* r0 = scr + (2 * py) * 32 + 2 * px;  // top pair, tap (0,0), padded coordinates
        float acc[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[nt][e] = 0.f;
#pragma unroll
        for (int s = 0; s < 2; s++) {
            u32 a[4];
            a[0] = *reinterpret_cast<const u32*>(r0 + off[s][0]);
            a[1] = *reinterpret_cast<const u32*>(r0 + 32 + off[s][0]);
            a[2] = *reinterpret_cast<const u32*>(r0 + off[s][1]);
            a[3] = *reinterpret_cast<const u32*>(r0 + 32 + off[s][1]);
#pragma unroll
            for (int nt = 0; nt < 8; nt++) mma16816(acc[nt], a, bf[nt][s][0], bf[nt][s][1]);
        }
        if (w < 196) {
            unsigned char* dst = act + py * ACT_ROW_BYTES + px * 64 + t * 4;
            const int swz = (px >> 1) & 3;
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                const float v0 = fmaxf(fmaxf(acc[nt][0], acc[nt][2]), fmaxf(acc[nt + 4][0], acc[nt + 4][2]));
                const float v1 = fmaxf(fmaxf(acc[nt][1], acc[nt][3]), fmaxf(acc[nt + 4][1], acc[nt + 4][3]));
                *reinterpret_cast<u32*>(dst + ((nt ^ swz) << 4)) =
                    pack_h2(fmaxf(v0 + bias[nt][0], 0.f), fmaxf(v1 + bias[nt][1], 0.f));
            }
        }
    }
}

// ------------------------------------------------------------------ conv2 job (persistent kernel)

__device__ __forceinline__ int sext_byte(u32 x, int k) { return ((int)(x << (24 - 8 * k))) >> 24; }

// One warp: MT m-tiles (4 pool windows, 16 GEMM rows each) from m-tile mstart x 32 output channels
// (half nh), K = 800. B (weights) from shared memory, A gathered by ldmatrix from the 14x16x32
// images. Windows at or past nwin are computed on zeros and not stored.
template <int MT>
__device__ __forceinline__ void conv2_job(u32 act_s, u32 w2_s, u32 zb_s, int mstart, int nh, int nwin,
                                          const float* __restrict__ b2, half_t* __restrict__ feat, int lane) {
    const int g = lane >> 2, t = lane & 3;
    const int r = lane & 15, cA = lane >> 4;
    u32 rb0[MT], cols[MT];
    int oyv[MT];
#pragma unroll
    for (int i = 0; i < MT; i++) {
        const int w = 4 * (mstart + i) + ((r & 7) >> 1);
        if (w < nwin) {
            const int im = w / 49, wi = w - im * 49;
            const int py = wi / 7, px = wi - py * 7;
            const int oy = 2 * py + (r >> 3), ox = 2 * px + (r & 1);
            rb0[i] = act_s + im * ACT_IMG_BYTES + (oy - 2) * ACT_ROW_BYTES;
            oyv[i] = oy;
            u32 c = 0;
#pragma unroll
            for (int kw = 0; kw < 4; kw++) {  // column offset of tap kw in 16-byte units, one signed byte each
                const int ix = ox + kw - 2;
                c |= ((u32)(ix * 4 + (cA ^ ((ix >> 1) & 3))) & 0xffu) << (8 * kw);
            }
            cols[i] = c;
        } else {
            rb0[i] = 0; oyv[i] = -64; cols[i] = 0;  // every row out of range: reads the zero band
        }
    }
    float acc[MT][4][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][nt][e] = 0.f;

    // B: ldmatrix.x4 over n-tiles (2q, 2q+1): lanes 0-7 rows n0..n0+7 k 0-7, 8-15 same rows k 8-15,
    // 16-23 rows n0+8.. k 0-7, 24-31 rows n0+8.. k 8-15
    const u32 bB = w2_s + (32 * nh + (lane & 7) + ((lane >> 4) << 3)) * W2_ROW_BYTES + ((lane >> 3) & 1) * 16;
    const u32 zrow = zb_s + 128;

#pragma unroll 1
    for (int kh = 0; kh < 5; kh++) {
        u32 rbase[MT];
#pragma unroll
        for (int i = 0; i < MT; i++)
            rbase[i] = (unsigned)(oyv[i] + kh - 2) < 14u ? rb0[i] + kh * ACT_ROW_BYTES : zrow;
#pragma unroll
        for (int kw = 0; kw < 5; kw++) {
            u32 aa[MT];
#pragma unroll
            for (int i = 0; i < MT; i++) {
                // tap kw = 4 is tap 0 four columns right: same swizzle bits 1 (XOR 2), +16 units
                const int v = kw < 4 ? sext_byte(cols[i], kw) : ((sext_byte(cols[i], 0) ^ 2) + 16);
                aa[i] = rbase[i] + (v << 4);
            }
            const u32 bt = bB + (kh * 5 + kw) * 64;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                u32 b[4][2];
#pragma unroll
                for (int q = 0; q < 2; q++) {
                    u32 rr[4];
                    ldsm_x4(rr, bt + h * 32 + q * 16 * W2_ROW_BYTES);
                    b[2 * q][0] = rr[0]; b[2 * q][1] = rr[1];
                    b[2 * q + 1][0] = rr[2]; b[2 * q + 1][1] = rr[3];
                }
#pragma unroll
                for (int i = 0; i < MT; i++) {
                    u32 a[4];
                    ldsm_x4(a, aa[i] ^ (h << 5));
#pragma unroll
                    for (int nt = 0; nt < 4; nt++) mma16816(acc[i][nt], a, b[nt][0], b[nt][1]);
                }
            }
        }
    }
    float bias[4][2];
#pragma unroll
    for (int nt = 0; nt < 4; nt++) {
        bias[nt][0] = __ldg(b2 + 32 * nh + 8 * nt + 2 * t);
        bias[nt][1] = __ldg(b2 + 32 * nh + 8 * nt + 2 * t + 1);
    }
#pragma unroll
    for (int i = 0; i < MT; i++) {
        u32 res[4];
#pragma unroll
        for (int nt = 0; nt < 4; nt++) res[nt] = pool_bias_relu(acc[i][nt], bias[nt][0], bias[nt][1]);
        const int w = 4 * (mstart + i) + (g >> 1);
        if ((g & 1) == 0 && w < nwin) {
            const int im = w / 49, wi = w - im * 49;
            u32* dst = reinterpret_cast<u32*>(feat + (size_t)im * 3136 + wi * 64 + 32 * nh + 2 * t);
#pragma unroll
            for (int nt = 0; nt < 4; nt++) dst[4 * nt] = res[nt];
        }
    }
}

// ------------------------------------------------------------------ persistent fused features kernel

// One block per SM (its conv2 weights, 103 KB, stay in shared memory), looping over groups of 4
// images in three phases: the images into fp16 scratch (all threads), conv1 (100 units of 8 windows
// spread over the 8 warps), conv2 (warp w takes channel half w&1 and a quarter of the 49 m-tiles,
// in jobs of 6 or 7 m-tiles). Two barriers per group; warps done with conv2 go on to the next
// group's loads.
template <typename T>
__device__ __forceinline__ void features_persistent(const T* __restrict__ images, int n, float scale,
                                                    const u32* __restrict__ w1f, const float* __restrict__ b1,
                                                    const half_t* __restrict__ w2, const float* __restrict__ b2,
                                                    half_t* __restrict__ feat) {
    extern __shared__ unsigned char smem_raw[];
    const u32 raw_s = smem_u32(smem_raw);
    unsigned char* smem = smem_raw + (((raw_s + 63u) & ~63u) - raw_s);
    const u32 sbase = smem_u32(smem);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    for (int c = tid; c < 64 * 100; c += blockDim.x) {
        const int row = c / 100, col = c - row * 100;
        *reinterpret_cast<u32x4*>(smem + OFF_W2 + row * W2_ROW_BYTES + col * 16) = reinterpret_cast<const u32x4*>(w2)[c];
    }
    // zero band, images (their columns 14 and 15 must stay zero) and scratch (its border)
    for (int c = tid; c < (P_SMEM_BYTES - 64 - OFF_ZB) / 16; c += blockDim.x)
        *reinterpret_cast<u32x4*>(smem + OFF_ZB + c * 16) = u32x4{0u, 0u, 0u, 0u};
    __syncthreads();

    const int ngroups = (n + P_GROUP - 1) / P_GROUP;
    for (int gi = blockIdx.x; gi < ngroups; gi += gridDim.x) {
        const int img0 = gi * P_GROUP;
        const int ng = min(P_GROUP, n - img0);
        // phase 0: the group's images -> fp16 scratch, one per image
        const int per = sizeof(T) == 1 ? 49 : 196;  // 16-byte chunks per image
        for (int c = tid; c < ng * per; c += blockDim.x) {
            const int li = c / per;
            load_image(images + (size_t)(img0 + li) * 784, reinterpret_cast<half_t*>(smem + OFF_SCR + li * SCR_BYTES),
                       scale, c - li * per, 1 << 30);
        }
        __syncthreads();
        // phase 1: conv1 + pool, units of 8 windows
        for (int u = warp; u < ng * 25; u += P_WARPS) {
            const int li = u / 25;
            conv1_units(reinterpret_cast<const half_t*>(smem + OFF_SCR + li * SCR_BYTES), smem + OFF_ACT + li * ACT_IMG_BYTES,
                        w1f, b1, lane, u - li * 25, 1 << 30);
        }
        __syncthreads();
        // phase 2: conv2 + pool
        const int nwin = 49 * ng, nm = (nwin + 3) / 4;
        const int nh = warp & 1, q = warp >> 1;
        int ms = nm * q / 4;
        const int me = nm * (q + 1) / 4;
        half_t* fg = feat + (size_t)img0 * 3136;
        while (ms < me) {
            const int cnt = me - ms;
            if (cnt == 6 || cnt == 12) {
                conv2_job<6>(sbase + OFF_ACT, sbase + OFF_W2, sbase + OFF_ZB, ms, nh, min(nwin, 4 * me), b2, fg, lane);
                ms += 6;
            } else {
                conv2_job<7>(sbase + OFF_ACT, sbase + OFF_W2, sbase + OFF_ZB, ms, nh, min(nwin, 4 * me), b2, fg, lane);
                ms += 7;
            }
        }
    }
}

static_assert(P_WARPS == 8, "features_persistent splits its work over exactly 8 warps");

#if CNNRT_IN_PART(0)
extern "C" __global__ void __launch_bounds__(P_WARPS * 32, 1)
features_persistent_u8(const unsigned char* images, int n, float scale, const u32* w1f, const float* b1,
                       const half_t* w2, const float* b2, half_t* feat) {
    features_persistent<unsigned char>(images, n, scale, w1f, b1, w2, b2, feat);
}
#endif

#if CNNRT_IN_PART(1)
extern "C" __global__ void __launch_bounds__(P_WARPS * 32, 1)
features_persistent_f32(const float* images, int n, float scale, const u32* w1f, const float* b1,
                        const half_t* w2, const float* b2, half_t* feat) {
    features_persistent<float>(images, n, scale, w1f, b1, w2, b2, feat);
}
#endif

// ------------------------------------------------------------------ latency kernel (few images)

// grid (13, n), 256 threads: block (mt, img) computes conv1 for the whole image (8 warps share the
// 25 units) and then conv2 m-tile mt (4 pool windows): warp w takes channels 16(w&3)..+15 and taps
// 13(w>>2).. (K split in two), with all its weights loaded into registers up front (one memory
// latency, not 25); the two K halves meet in shared memory. Spreads one image over 13 SMs.
template <typename T>
__device__ __forceinline__ void features_small(const T* __restrict__ images, int n, float scale,
                                               const u32* __restrict__ w1f, const float* __restrict__ b1,
                                               const u32x4* __restrict__ w2f, const float* __restrict__ b2,
                                               half_t* __restrict__ feat) {
    __shared__ __attribute__((aligned(128))) unsigned char zb_act[ZB_BYTES + ACT_IMG_BYTES];  // zero band, image
    __shared__ __attribute__((aligned(128))) unsigned char scrb[SCR_BYTES];
    __shared__ float part[4][2][4][32];  // K-half 1 partial sums: [warp&3][n-tile][element][lane]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int mt = blockIdx.x, img = blockIdx.y;
    const int g = lane >> 2, t = lane & 3;
    const int half = warp >> 2, nq = warp & 3;
    // this warp's weights: n-tiles (2nq, 2nq+1), taps 13*half.. (13 at most), from the fragment-major
    // copy w2f[n-tile][lane][k-step][2]: one 16-byte load per tap and n-tile (both k-steps of the tap)
    u32 bw[13][2][4];
#pragma unroll
    for (int i = 0; i < 13; i++) {
        const int tap = 13 * half + i;
        if (tap < 25) {
            const u32x4 f0 = w2f[((2 * nq) * 32 + lane) * 25 + tap];
            const u32x4 f1 = w2f[((2 * nq + 1) * 32 + lane) * 25 + tap];
            bw[i][0][0] = f0.x; bw[i][0][1] = f0.y; bw[i][1][0] = f0.z; bw[i][1][1] = f0.w;
            bw[i][0][2] = f1.x; bw[i][0][3] = f1.y; bw[i][1][2] = f1.z; bw[i][1][3] = f1.w;
        } else {
#pragma unroll
            for (int h = 0; h < 2; h++) bw[i][h][0] = bw[i][h][1] = bw[i][h][2] = bw[i][h][3] = 0u;
        }
    }
    for (int c = tid; c < (ZB_BYTES + ACT_IMG_BYTES) / 16; c += blockDim.x)
        *reinterpret_cast<u32x4*>(zb_act + c * 16) = u32x4{0u, 0u, 0u, 0u};
    for (int c = tid; c < SCR_BYTES / 16; c += blockDim.x)
        *reinterpret_cast<u32x4*>(scrb + c * 16) = u32x4{0u, 0u, 0u, 0u};
    __syncthreads();
    half_t* scr = reinterpret_cast<half_t*>(scrb);
    load_image(images + (size_t)img * 784, scr, scale, tid, blockDim.x);
    __syncthreads();
    unsigned char* act = zb_act + ZB_BYTES;
    conv1_units(scr, act, w1f, b1, lane, warp, 8);
    __syncthreads();

    const u32 act_s = smem_u32(act), zrow = smem_u32(zb_act) + 128;
    const int r = lane & 15, cA = lane >> 4;
    int oy, ox;
    {
        const int w = 4 * mt + ((r & 7) >> 1);
        if (w < 49) {
            const int py = w / 7, px = w - py * 7;
            oy = 2 * py + (r >> 3); ox = 2 * px + (r & 1);
        } else {
            oy = -64; ox = 0;
        }
    }
    float acc[2][4];
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[j][e] = 0.f;
#pragma unroll
    for (int i = 0; i < 13; i++) {
        const int tap = 13 * half + i;
        if (tap < 25) {
            const int kh = tap / 5, kw = tap - kh * 5;
            const int iy = oy + kh - 2, ix = ox + kw - 2;  // ix outside 0..13 lands on a zero column
            const u32 aa = (unsigned)iy < 14u ? act_s + iy * ACT_ROW_BYTES + ix * 64 + ((cA ^ ((ix >> 1) & 3)) << 4)
                                              : zrow + (cA << 4);
#pragma unroll
            for (int h = 0; h < 2; h++) {
                u32 a[4];
                ldsm_x4(a, aa ^ (h << 5));
                mma16816(acc[0], a, bw[i][h][0], bw[i][h][1]);
                mma16816(acc[1], a, bw[i][h][2], bw[i][h][3]);
            }
        }
    }
    if (half == 1) {
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) part[nq][j][e][lane] = acc[j][e];
    }
    __syncthreads();
    if (half == 0) {
        u32 res[2];
#pragma unroll
        for (int j = 0; j < 2; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) acc[j][e] += part[nq][j][e][lane];
            const int ch = 16 * nq + 8 * j + 2 * t;
            res[j] = pool_bias_relu(acc[j], __ldg(b2 + ch), __ldg(b2 + ch + 1));
        }
        const int w = 4 * mt + (g >> 1);
        if ((g & 1) == 0 && w < 49) {
            u32* dst = reinterpret_cast<u32*>(feat + (size_t)img * 3136 + w * 64 + 16 * nq + 2 * t);
            dst[0] = res[0];
            dst[4] = res[1];
        }
    }
}

#if CNNRT_IN_PART(3)
extern "C" __global__ void __launch_bounds__(256)
features_small_u8(const unsigned char* images, int n, float scale, const u32* w1f, const float* b1,
                  const u32x4* w2f, const float* b2, half_t* feat) {
    features_small<unsigned char>(images, n, scale, w1f, b1, w2f, b2, feat);
}
#endif

#if CNNRT_IN_PART(3)
extern "C" __global__ void __launch_bounds__(256)
features_small_f32(const float* images, int n, float scale, const u32* w1f, const float* b1,
                   const u32x4* w2f, const float* b2, half_t* feat) {
    features_small<float>(images, n, scale, w1f, b1, w2f, b2, feat);
}
#endif

// ------------------------------------------------------------------ fc2 + softmax + argmax

#define FC2_IMGS 4

// hid: [n][H] fp16 = fc1 before bias (cuBLAS output); b1: [H]; w: [C][H] fp16; b: [C].
// One warp per 4 images (the bias and weight loads are shared by the 4): x = relu(hid + b1),
// logits = w x + b, probs = softmax, label = first argmax.
#if CNNRT_IN_PART(2)
extern "C" __global__ void __launch_bounds__(256)
fc2_softmax(const half_t* __restrict__ hid, const float* __restrict__ b1, const half_t* __restrict__ w,
            const float* __restrict__ b, int n, int H, int C, float* __restrict__ probs, int* __restrict__ labels) {
    const int row0 = ((blockIdx.x * blockDim.x + threadIdx.x) >> 5) * FC2_IMGS;
    const int lane = threadIdx.x & 31;
    if (row0 >= n) return;
    float acc[FC2_IMGS][FC2_MAXC];
#pragma unroll
    for (int m = 0; m < FC2_IMGS; m++)
#pragma unroll
        for (int c = 0; c < FC2_MAXC; c++) acc[m][c] = 0.f;
    for (int j = lane * 8; j < H; j += 256) {
        const f32x4 bl = *reinterpret_cast<const f32x4*>(b1 + j), bh = *reinterpret_cast<const f32x4*>(b1 + j + 4);
        const float bb[8] = {bl.x, bl.y, bl.z, bl.w, bh.x, bh.y, bh.z, bh.w};
        float x[FC2_IMGS][8];
#pragma unroll
        for (int m = 0; m < FC2_IMGS; m++) {
            u32x4 hv = {0u, 0u, 0u, 0u};
            if (row0 + m < n) hv = *reinterpret_cast<const u32x4*>(hid + (size_t)(row0 + m) * H + j);
            const u32 hw[4] = {hv.x, hv.y, hv.z, hv.w};
#pragma unroll
            for (int e = 0; e < 8; e++) x[m][e] = fmaxf(h2f((half_t)(hw[e >> 1] >> ((e & 1) * 16))) + bb[e], 0.f);
        }
#pragma unroll
        for (int c = 0; c < FC2_MAXC; c++) {
            if (c < C) {
                const u32x4 wv = *reinterpret_cast<const u32x4*>(w + (size_t)c * H + j);
                const u32 ww[4] = {wv.x, wv.y, wv.z, wv.w};
                float wf[8];
#pragma unroll
                for (int e = 0; e < 8; e++) wf[e] = h2f((half_t)(ww[e >> 1] >> ((e & 1) * 16)));
#pragma unroll
                for (int m = 0; m < FC2_IMGS; m++) {
                    float sum = acc[m][c];
#pragma unroll
                    for (int e = 0; e < 8; e++) sum = fmaf(x[m][e], wf[e], sum);
                    acc[m][c] = sum;
                }
            }
        }
    }
#pragma unroll
    for (int m = 0; m < FC2_IMGS; m++) {
#pragma unroll
        for (int c = 0; c < FC2_MAXC; c++) {
            if (c < C) {
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) acc[m][c] += __shfl_xor_sync(FULL_MASK, acc[m][c], o);
            }
        }
        const int row = row0 + m;
        if (row >= n) break;  // uniform
        float mx = -3.402823466e38f;
        int arg = 0;
#pragma unroll
        for (int c = 0; c < FC2_MAXC; c++) {
            if (c < C) {
                acc[m][c] += __ldg(b + c);
                if (acc[m][c] > mx) { mx = acc[m][c]; arg = c; }
            }
        }
        float sum = 0.f;
#pragma unroll
        for (int c = 0; c < FC2_MAXC; c++) {
            if (c < C) { acc[m][c] = __expf(acc[m][c] - mx); sum += acc[m][c]; }
        }
        const float inv = 1.f / sum;
#pragma unroll
        for (int c = 0; c < FC2_MAXC; c++)
            if (c < C && lane == c) probs[(size_t)row * C + c] = acc[m][c] * inv;
        if (lane == 0) labels[row] = arg;
    }
}
#endif

// ------------------------------------------------------------------ fc1 for a handful of images

// hid[m][o] = sum_k feat[m][k] w[o][k] (fp16 out, fp32 accumulate, before bias), n <= 8 images per
// pass: warp = one output o, each weight row read once for all images. For the latency path,
// where a GEMM library's tiles would be mostly empty.
#if CNNRT_IN_PART(2)
extern "C" __global__ void __launch_bounds__(256)
fc1_small(const half_t* __restrict__ feat, const half_t* __restrict__ w, int n, int K, int H, half_t* __restrict__ hid) {
    const int o = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (o >= H) return;
    const half_t* wr = w + (size_t)o * K;
    for (int m0 = 0; m0 < n; m0 += 8) {
        float acc[8];
#pragma unroll
        for (int m = 0; m < 8; m++) acc[m] = 0.f;
#pragma unroll 13
        for (int k = lane * 8; k < K; k += 256) {  // unrolled: all loads in flight at once
            const u32x4 wv = *reinterpret_cast<const u32x4*>(wr + k);
            const u32 ww[4] = {wv.x, wv.y, wv.z, wv.w};
            float wf[8];
#pragma unroll
            for (int e = 0; e < 8; e++) wf[e] = h2f((half_t)(ww[e >> 1] >> ((e & 1) * 16)));
#pragma unroll
            for (int m = 0; m < 8; m++) {
                if (m0 + m < n) {
                    const u32x4 fv = *reinterpret_cast<const u32x4*>(feat + (size_t)(m0 + m) * K + k);
                    const u32 ff[4] = {fv.x, fv.y, fv.z, fv.w};
                    float sum = acc[m];
#pragma unroll
                    for (int e = 0; e < 8; e++) sum = fmaf(h2f((half_t)(ff[e >> 1] >> ((e & 1) * 16))), wf[e], sum);
                    acc[m] = sum;
                }
            }
        }
#pragma unroll
        for (int m = 0; m < 8; m++) {
            if (m0 + m < n) {
#pragma unroll
                for (int off = 16; off > 0; off >>= 1) acc[m] += __shfl_xor_sync(FULL_MASK, acc[m], off);
                if (lane == 0) hid[(size_t)(m0 + m) * H + o] = f2h(acc[m]);
            }
        }
    }
}
#endif

// ------------------------------------------------------------------ fc1 + fc2 for a handful of images, one launch

// The latency path's classifier: warp = one fc1 output o for all n images (hid = relu(fc1 + b1),
// fp16, into a scratch buffer); the last block to finish (a counter, reset for the next launch)
// stages fc2's weights in shared memory and does fc2 + softmax + argmax, writing probs and labels
// (pinned host memory on the latency path: no copy back). Small code on purpose: a cold instruction
// cache, not arithmetic, is what a one-image launch mostly waits on. Dynamic smem: C*H*2 bytes.
#if CNNRT_IN_PART(3)
extern "C" __global__ void __launch_bounds__(256)
fc12_small(const half_t* __restrict__ feat, const half_t* __restrict__ w1, const float* __restrict__ b1,
           const half_t* __restrict__ w2, const float* __restrict__ b2, int n, int H, int C,
           half_t* hid, unsigned int* counter, float* probs, int* labels) {
    extern __shared__ __attribute__((aligned(16))) unsigned char w2s_raw[];
    __shared__ int last;
    __shared__ float lg[8][FC2_MAXC];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int o = blockIdx.x * 8 + warp;
    half_t* w2s = reinterpret_cast<half_t*>(w2s_raw);
    // every block stages fc2's weights while it works (20 KB from L2); only the last one uses them
    for (int c = threadIdx.x; c < C * H / 8; c += blockDim.x)
        reinterpret_cast<u32x4*>(w2s)[c] = reinterpret_cast<const u32x4*>(w2)[c];
    if (o < H) {
        const half_t* wr = w1 + (size_t)o * 3136;
        for (int m = 0; m < n; m++) {
            float acc = 0.f;
#pragma unroll
            for (int i = 0; i < 13; i++) {
                const int k = lane * 8 + 256 * i;
                if (k < 3136) {
                    const u32x4 wv = *reinterpret_cast<const u32x4*>(wr + k);
                    const u32x4 fv = *reinterpret_cast<const u32x4*>(feat + (size_t)m * 3136 + k);
                    const u32 ww[4] = {wv.x, wv.y, wv.z, wv.w}, ff[4] = {fv.x, fv.y, fv.z, fv.w};
#pragma unroll
                    for (int e = 0; e < 8; e++)
                        acc = fmaf(h2f((half_t)(ff[e >> 1] >> ((e & 1) * 16))), h2f((half_t)(ww[e >> 1] >> ((e & 1) * 16))), acc);
                }
            }
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(FULL_MASK, acc, off);
            if (lane == 0) hid[(size_t)m * H + o] = f2h(fmaxf(acc + __ldg(b1 + o), 0.f));
        }
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int m = warp; m < n; m += 8) {
        float x[32];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int j = lane * 8 + 256 * i;
            u32x4 hv = {0u, 0u, 0u, 0u};
            if (j < H) {  // other blocks wrote hid: read it from L2, past this SM's L1
                const u32* hp = reinterpret_cast<const u32*>(hid + (size_t)m * H + j);
                hv.x = __ldcg(hp); hv.y = __ldcg(hp + 1); hv.z = __ldcg(hp + 2); hv.w = __ldcg(hp + 3);
            }
            const u32 hw[4] = {hv.x, hv.y, hv.z, hv.w};
#pragma unroll
            for (int e = 0; e < 8; e++) x[8 * i + e] = h2f((half_t)(hw[e >> 1] >> ((e & 1) * 16)));
        }
#pragma unroll 1
        for (int c = 0; c < C; c++) {
            float sum = 0.f;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int j = lane * 8 + 256 * i;
                if (j < H) {
                    const u32x4 wv = *reinterpret_cast<const u32x4*>(w2s + c * H + j);
                    const u32 ww[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
                    for (int e = 0; e < 8; e++) sum = fmaf(x[8 * i + e], h2f((half_t)(ww[e >> 1] >> ((e & 1) * 16))), sum);
                }
            }
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(FULL_MASK, sum, off);
            if (lane == 0) lg[warp][c] = sum + __ldg(b2 + c);
        }
        __syncwarp();
        if (lane == 0) {
            float mx = lg[warp][0];
            int arg = 0;
            for (int c = 1; c < C; c++)
                if (lg[warp][c] > mx) { mx = lg[warp][c]; arg = c; }
            float sum = 0.f;
            for (int c = 0; c < C; c++) sum += __expf(lg[warp][c] - mx);
            const float inv = 1.f / sum;
            for (int c = 0; c < C; c++) probs[(size_t)m * C + c] = __expf(lg[warp][c] - mx) * inv;
            labels[m] = arg;
        }
        __syncwarp();
    }
    if (threadIdx.x == 0) *counter = 0u;
}
#endif

// ------------------------------------------------------------------ timing helper

// Spins for `cycles` clock cycles: queued ahead of timed work so that the events measure the
// device's time, not the host's launch latency.
#if CNNRT_IN_PART(3)
extern "C" __global__ void spin(long long cycles) {
    const long long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
}
#endif
