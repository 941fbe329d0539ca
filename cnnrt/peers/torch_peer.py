"""PyTorch peers: an nn.Sequential built from our Model, eager and under torch.compile.

Input stays NHWC float32 (the same array as everyone's); the module permutes it to NCHW, which
PyTorch's CPU convolutions take as a channels-last tensor. Conv kernels go to OIHW, the first Dense
after a conv gets its inputs permuted to NCHW flatten order. SAME padding that is not symmetric
gets an explicit pad (zeros for conv, -inf for max-pool).
"""
from __future__ import annotations

from . import Peer, batched, check_supported, dense_weight_nchw, have_cxx, pads

INSTALL = "pip install 'cnnrt[bench]' (pins torch==2.13.0, the CPU build)"


def to_torch(model):
    """An eval-mode torch.nn.Module computing `model`; takes (N, H, W, C) float32."""
    import torch
    from torch import nn

    from ..model import Conv2D, Dense, MaxPool2D, Softmax

    model = check_supported(model)
    mods, flat = [], False
    for layer, shape in zip(model.layers, model.shapes):
        if isinstance(layer, Conv2D):
            o, kh, kw, i = layer.weight.shape
            (pt, pb), (pl, pr) = pads(shape[0], kh, layer.stride, layer.padding), pads(shape[1], kw, layer.stride, layer.padding)
            sym = pt == pb and pl == pr
            if not sym:
                mods.append(nn.ZeroPad2d((pl, pr, pt, pb)))
            conv = nn.Conv2d(i, o, (kh, kw), stride=layer.stride, padding=(pt, pl) if sym else 0)
            conv.weight.data = torch.from_numpy(layer.weight.transpose(0, 3, 1, 2).copy())
            conv.bias.data = torch.from_numpy(layer.bias.copy())
            mods.append(conv)
        elif isinstance(layer, MaxPool2D):
            k, s = layer.size, layer.stride
            (pt, pb), (pl, pr) = pads(shape[0], k, s, layer.padding), pads(shape[1], k, s, layer.padding)
            if pt or pb or pl or pr:
                mods.append(nn.ConstantPad2d((pl, pr, pt, pb), float("-inf")))
            mods.append(nn.MaxPool2d(k, s))
        elif isinstance(layer, Dense):
            if not flat and len(shape) != 1:
                mods.append(nn.Flatten())
            flat = True
            lin = nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
            lin.weight.data = torch.from_numpy(dense_weight_nchw(layer.weight, shape).copy())
            lin.bias.data = torch.from_numpy(layer.bias.copy())
            mods.append(lin)
        elif isinstance(layer, Softmax):
            mods.append(nn.Softmax(dim=1))
        if getattr(layer, "activation", "none") == "relu":
            mods.append(nn.ReLU())

    class FromNHWC(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body(x.permute(0, 3, 1, 2))

    return FromNHWC(nn.Sequential(*mods)).eval()


def _infer(module):
    import torch

    def one(xb):
        with torch.inference_mode():
            return module(torch.from_numpy(xb)).numpy()

    return batched(one)


class TorchEager(Peer):
    name = "torch"
    label = "PyTorch eager"
    modules = ("torch",)
    distributions = ("torch",)
    import_statement = "import torch"
    install_hint = INSTALL

    def prepare(self, model):
        return _infer(to_torch(model))


class TorchCompile(Peer):
    name = "torch-compile"
    label = "PyTorch torch.compile"
    modules = ("torch",)
    distributions = ("torch",)
    import_statement = "import torch"
    install_hint = INSTALL
    fresh_cache_env = "TORCHINDUCTOR_CACHE_DIR"  # a cold start compiles from scratch

    def missing(self):
        why = super().missing()
        if why is None and not have_cxx():
            why = "torch.compile (inductor) needs a C++ compiler on the CPU; none found"
        return why

    def prepare(self, model):
        import torch

        return _infer(torch.compile(to_torch(model)))
