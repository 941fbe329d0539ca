"""One launch of each Deep MNIST kernel on 10,000 images, for Nsight Compute:

    ncu -k regex:features_persistent -c 1 --section SpeedOfLight ... python3 dev/cuda/profile_one.py
"""
from __future__ import annotations

import numpy as np

from common import load_model, mnist_images


def main():
    import cupy as cp

    from cnnrt.backends.cuda import FusedRunner

    r = FusedRunner(load_model())
    x, _ = mnist_images()
    r.features(x[:8], small=False)  # warm (module load)
    r.features(x, small=False)
    r.features(x[:1], small=True)
    cp.cuda.Device().synchronize()


if __name__ == "__main__":
    main()
