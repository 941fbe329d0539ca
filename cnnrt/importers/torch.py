"""PyTorch modules -> cnnrt Graph, through the exporter PyTorch itself provides. Needs `cnnrt[torch]`
and `cnnrt[onnx]`.

`from_torch` exports the module in eval mode to ONNX in memory with PyTorch's TorchScript-based
exporter (`dynamo=False`: it needs nothing beyond torch and onnx, and writes the plain op set
that torchvision's CNNs become), with the batch axis dynamic, then reads it with the ONNX importer
(which turns NCHW into the engine's NHWC: the graph's input is (N, H, W, C)).
"""
from __future__ import annotations

import io
import warnings

from ..errors import FormatError


def from_torch(module, example_input, name: str | None = None, *, input_scale: float | None = None, mean=None,
               std=None, opset: int | None = None):
    """A Graph computing `module(x)` for NCHW x, as the engine runs it: NHWC input.

    example_input: one tensor (any batch size) fixing the input's other sizes. input_scale, mean
    and std say how uint8 pixels become the input, (pixels * input_scale - mean) / std (default
    1/255, as torchvision's ToTensor; pass torchvision's Normalize values as mean and std).
    """
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        raise FormatError("cnnrt.from_torch needs PyTorch: pip install 'cnnrt[torch]'") from None
    try:
        import onnx  # noqa: PLC0415
    except ImportError:
        raise FormatError("cnnrt.from_torch needs the onnx package for PyTorch's exporter: "
                          "pip install 'cnnrt[onnx]'") from None
    try:
        from .onnx import from_onnx  # noqa: PLC0415
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.onnx":
            raise
        raise FormatError("cnnrt.from_torch needs cnnrt's ONNX importer, which this build lacks") from None
    from ..ir.passes import optimize  # noqa: PLC0415
    from .preprocess import compose  # noqa: PLC0415

    if not isinstance(module, torch.nn.Module):
        raise FormatError(f"from_torch: expected a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise FormatError(f"from_torch: example_input must be one torch.Tensor, got {type(example_input).__name__}")
    label = name or type(module).__name__
    was_training = module.training
    module.eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter is the one we choose; its deprecation notice is not the user's to act on
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            kwargs = {} if opset is None else {"opset_version": int(opset)}
            with torch.no_grad():
                torch.onnx.export(module, (example_input,), buf, dynamo=False, input_names=["input"],
                                  output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                                  do_constant_folding=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds (unsupported op, tracing failure)
        msg = " ".join(str(e).split())
        raise FormatError(f"from_torch: PyTorch could not export {label} to ONNX ({type(e).__name__}: "
                          f"{msg[:400]})") from None
    finally:
        module.train(was_training)
    proto = onnx.load_model_from_string(buf.getvalue())
    try:
        g = from_onnx(proto, name=label)
    except FormatError as e:
        raise FormatError(f"from_torch ({label}): {e}") from None
    channels = g.input_shape[-1] if g.input_shape else None
    g.preprocess = compose(input_scale, mean, std, channels=channels, where=f"from_torch ({label})")
    g.meta = {**g.meta, "importer": f"torch {torch.__version__} (torch.onnx.export, TorchScript exporter)"}
    return optimize(g)
