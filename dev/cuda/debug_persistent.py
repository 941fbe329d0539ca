"""Debug harness for features_persistent: dump its shared memory after the prologue and conv1 of
one group, check the weights and the swizzled activations against NumPy, and run the emulated
conv2 (emulate.py) on the dumped image to compare with the kernel's own output."""
from __future__ import annotations

import numpy as np

from common import cpu_features, load_model, q16, rel_err
import emulate

DEBUG_SRC = r'''
#include "deep_mnist.cu"
extern "C" __global__ void __launch_bounds__(256, 1)
dump_smem(const unsigned char* images, int nimg, float scale, const u32* w1f, const float* b1,
          const half_t* w2, unsigned char* out) {
    extern __shared__ unsigned char smem_raw[];
    const u32 raw_s = smem_u32(smem_raw);
    unsigned char* smem = smem_raw + (((raw_s + 127u) & ~127u) - raw_s);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (int c = tid; c < 64 * 100; c += blockDim.x) {
        const int row = c / 100, col = c - row * 100;
        *reinterpret_cast<u32x4*>(smem + OFF_W2 + row * W2_ROW_BYTES + col * 16) = reinterpret_cast<const u32x4*>(w2)[c];
    }
    for (int c = tid; c < (P_WARPS * SCR_BYTES + 64) / 16; c += blockDim.x)
        *reinterpret_cast<u32x4*>(smem + OFF_SCR + c * 16) = u32x4{0u, 0u, 0u, 0u};
    __syncthreads();
    half_t* scr = reinterpret_cast<half_t*>(smem + OFF_SCR + warp * SCR_BYTES);
    if (warp < nimg) {
        load_image(images + warp * 784, scr, scale, lane, 32);
        __syncwarp();
        conv1_tiles(scr, smem + OFF_ACT + warp * ACT_IMG_BYTES, w1f, b1, lane, 0, 1);
    }
    __syncthreads();
    for (int c = tid; c < (OFF_ZERO + 64) / 16; c += blockDim.x)
        reinterpret_cast<u32x4*>(out)[c] = *reinterpret_cast<const u32x4*>(smem + c * 16);
}
'''


def main():
    import cupy as cp

    from cnnrt.backends import reference as ref
    from cnnrt.backends.cuda import KERNEL_DIR, P_SMEM_BYTES, FusedRunner

    model = load_model()
    r = FusedRunner(model)
    k = cp.RawModule(code=DEBUG_SRC, options=("--std=c++17", f"-I{KERNEL_DIR}")).get_function("dump_smem")
    k.max_dynamic_shared_size_bytes = P_SMEM_BYTES
    rng = np.random.default_rng()
    nimg = 3
    x = rng.integers(0, 256, (nimg, 28, 28), dtype=np.uint8)
    out = cp.zeros(emulate.OFF_ZERO + 64, cp.uint8)
    k((1,), (256,), (cp.asarray(x), np.int32(nimg), r.scale, r.w1f, r.b1, r.w2, out), shared_mem=P_SMEM_BYTES)
    smem = cp.asnumpy(out)
    c1, _, c2, _ = model.layers[:4]
    w2 = c2.weight.reshape(64, 800).astype(np.float16)
    want = emulate.build_smem(w2, np.zeros((nimg, 14, 14, 32)))
    print("weights region identical:", np.array_equal(smem[:emulate.OFF_ACT], want[:emulate.OFF_ACT]))
    h = q16(x[..., None].astype(np.float64) * model.input_scale)
    pool1 = q16(ref.maxpool2d(ref.relu(ref.conv2d(h, q16(c1.weight), q16(c1.bias)))))
    want = emulate.build_smem(w2, pool1)
    a_dev = smem[emulate.OFF_ACT:emulate.OFF_ACT + nimg * emulate.ACT].view(np.float16).astype(np.float64)
    a_want = want[emulate.OFF_ACT:emulate.OFF_ACT + nimg * emulate.ACT].view(np.float16).astype(np.float64)
    print("act region rel err:", rel_err(a_dev, a_want), "zero row:", smem[emulate.OFF_ZERO:].any())
    emu = emulate.conv2_group(smem, nimg, c2.bias)
    dev = cp.asnumpy(r.features(x, small=False)).astype(np.float64)
    ref_f = cpu_features(model, x)
    print("emulated conv2 on dumped smem vs reference:", [rel_err(emu[i], ref_f[i]) for i in range(nimg)])
    print("device persistent vs reference:", [rel_err(dev[i], ref_f[i]) for i in range(nimg)])
    print("device persistent vs emulated:", [rel_err(dev[i], emu[i]) for i in range(nimg)])
    d = np.abs(dev - ref_f).reshape(nimg, 49, 64)
    print("mean abs error by window (image 0):", np.round(d[0].mean(1), 3))
    print("mean abs error by channel (image 0):", np.round(d[0].mean(0), 3))


if __name__ == "__main__":
    main()
