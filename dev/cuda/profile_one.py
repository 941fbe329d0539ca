"""One launch of each Deep MNIST kernel on 10,000 images, for Nsight Compute:

    ncu -k regex:features_persistent -c 1 --section SpeedOfLight ... python3 dev/cuda/profile_one.py
"""
from __future__ import annotations

import numpy as np

from common import load_model, mnist_images


def main():
    import sys

    import cupy as cp

    from cnnrt.backends.cuda import FusedRunner

    r = FusedRunner(load_model())
    x, _ = mnist_images()
    if len(sys.argv) > 1 and sys.argv[1] == "latency":  # the one-image path, graphs and all
        for i in range(6):
            r.predict(x[i:i + 1])
        cp.cuda.Device().synchronize()
        return
    r.features(x[:8], small=False)  # warm (module load)
    r.features(x, small=False)
    r.features(x[:1], small=True)
    cp.cuda.Device().synchronize()


if __name__ == "__main__":
    main()
