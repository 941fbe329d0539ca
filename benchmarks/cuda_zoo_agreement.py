"""The CUDA backend on every architecture of the ONNX zoo: fp16 and fp32 against ONNX Runtime.

For each model of cnnrt/testing/zoo (torchvision's ResNet-18, MobileNetV2, MobileNetV3-small,
SqueezeNet 1.1, ShuffleNet V2, EfficientNet-B0, DenseNet-121, GoogLeNet, and LeNet-5, ResNet-20),
weights regenerated from a seed, the same random inputs go through ONNX Runtime (fp32, CPU, the
independent reference) and through cnnrt's CUDA backend in fp16 and fp32. Writes argmax agreement
and the largest logit difference relative to the largest logit, per model, as JSON.

    python3 benchmarks/cuda_zoo_agreement.py --json bench/out/cuda_zoo_agreement.json [--batch 32]
"""
import argparse
import json
import sys
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--models", default=None)
    a = ap.parse_args()
    import onnxruntime as ort

    from cnnrt import backends
    from cnnrt.backends.cuda import device_name
    from cnnrt.importers.onnx import from_onnx
    from cnnrt.testing import zoo

    out = {"device": device_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "batch": a.batch,
           "models": {}}
    names = a.models.split(",") if a.models else zoo.names()
    for name in names:
        t0 = time.perf_counter()
        m = zoo.load(name, seed=0)
        g = from_onnx(m, name=name)
        rng = np.random.default_rng(1)
        shape = tuple(g.input_shape)  # NHWC
        x = rng.standard_normal((a.batch,) + shape).astype(np.float32)
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        ref = s.run(None, {s.get_inputs()[0].name: x.transpose(0, 3, 1, 2)})[0].reshape(a.batch, -1)
        row = {}
        for precision in ("fp16", "fp32"):
            try:
                r = backends.prepare(g, "cuda", precision)
                got = r.probabilities(x).reshape(a.batch, -1)
                row[precision] = {
                    "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
                    "max_rel_logit_diff": float(np.abs(got - ref).max() / np.abs(ref).max()),
                    "runner": type(r).__name__,
                }
            except Exception as e:  # noqa: BLE001 - recorded, the next model still runs
                row[precision] = {"error": f"{type(e).__name__}: {e}"[:300]}
        row["seconds"] = round(time.perf_counter() - t0, 2)
        out["models"][name] = row
        print(name, json.dumps(row), flush=True)
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    bad = [n for n, r in out["models"].items() if r["fp16"].get("argmax_agreement", 0) < 0.99
           or r["fp32"].get("max_rel_logit_diff", 1) > 1e-4]
    print("below the bar (fp16 agreement < 0.99 or fp32 > 1e-4):", bad or "none")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
