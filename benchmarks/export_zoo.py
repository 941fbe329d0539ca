"""Export the model zoo from PyTorch/torchvision to ONNX, weights stripped (run where torchvision works).

Real architectures nobody here wrote: torchvision builds them with random weights (nothing is
downloaded) and PyTorch's own exporter writes the graph. Float initializers of more than 16 values
are replaced by their shape plus the mean and std of the random draw (in the tensor's doc_string),
so each file is a few KB; `cnnrt.testing.zoo.load()` regenerates weights from a seed. Integer and
small initializers (shapes, axes) are kept exactly.

    python3 benchmarks/export_zoo.py --out cnnrt/testing/zoo
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import torchvision
from onnx import numpy_helper


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
                               nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                               nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

    def forward(self, x):
        return self.f(x)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.sc = None
        if stride != 1 or cin != cout:
            self.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return torch.relu(y + (x if self.sc is None else self.sc(x)))


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet-20 (3 stages of 3 blocks, 16/32/64 channels)."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def randomize_bn(m: nn.Module, g: torch.Generator):
    """Give BatchNorm layers non-trivial statistics, as a trained net has."""
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            mod.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            mod.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


ZOO = {
    # name: (constructor, input shape NCHW)
    "lenet5": (LeNet5, (1, 1, 28, 28)),
    "resnet20": (ResNet20, (1, 3, 32, 32)),
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), (1, 3, 224, 224)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(weights=None), (1, 3, 224, 224)),
    "mobilenet_v2_96": (lambda: torchvision.models.mobilenet_v2(weights=None), (1, 3, 96, 96)),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(weights=None), (1, 3, 224, 224)),
    "squeezenet1_1": (lambda: torchvision.models.squeezenet1_1(weights=None), (1, 3, 224, 224)),
    "shufflenet_v2_x1_0": (lambda: torchvision.models.shufflenet_v2_x1_0(weights=None), (1, 3, 224, 224)),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(weights=None), (1, 3, 224, 224)),
    "densenet121": (lambda: torchvision.models.densenet121(weights=None), (1, 3, 224, 224)),
    "googlenet": (lambda: torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True), (1, 3, 224, 224)),
}


def strip(model: onnx.ModelProto) -> onnx.ModelProto:
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype.kind == "f" and a.size > 16:
            dims = list(t.dims)
            stats = {"mean": float(a.mean()), "std": float(a.std()), "dtype": str(a.dtype)}
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.ClearField("double_data")
            t.data_location = onnx.TensorProto.DEFAULT
            del t.dims[:]
            t.dims.extend(dims)
            t.doc_string = "cnnrt-stripped " + json.dumps(stats)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="cnnrt/testing/zoo")
    ap.add_argument("--only", default=None)
    ap.add_argument("--opset", type=int, default=17)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    index = {}
    for name, (make, shape) in ZOO.items():
        if a.only and name not in a.only.split(","):
            continue
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        m = make().eval()
        randomize_bn(m, g)
        x = torch.randn(*shape)
        tmp = out / f"{name}.full.onnx"
        how = "torchscript"
        try:
            torch.onnx.export(m, (x,), str(tmp), opset_version=a.opset, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
                              do_constant_folding=True)
        except Exception as e:  # noqa: BLE001
            print(f"{name}: torchscript exporter failed ({e}); trying dynamo", file=sys.stderr)
            how = "dynamo"
            torch.onnx.export(m, (x,), str(tmp), opset_version=18, input_names=["input"], output_names=["logits"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True)
        model = onnx.load(str(tmp), load_external_data=True)
        tmp.unlink()
        for f in out.glob(f"{name}.full.onnx*"):
            f.unlink()
        n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        model.doc_string = f"{name}: exported by torch {torch.__version__} ({how} exporter), torchvision {torchvision.__version__}, weights stripped"
        stripped = strip(model)
        onnx.save(stripped, str(out / f"{name}.onnx"))
        ops = sorted({n.op_type for n in model.graph.node})
        index[name] = {"input": list(shape), "params": n_params, "exporter": how, "opset": model.opset_import[0].version,
                       "ops": ops, "torch": torch.__version__, "torchvision": torchvision.__version__}
        print(name, (out / f"{name}.onnx").stat().st_size, "bytes", how, ops, flush=True)
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
