"""JAX peer: the model as a jitted function over our tensors (lax.conv in NHWC/OHWI: our layout as is)."""
from __future__ import annotations

from . import Peer, batched, check_supported, pads


def to_jax(model, device=None):
    """A jitted function (N, H, W, C) float32 -> probabilities, closing over our weights.

    The weights are placed on `device` (default: JAX's first CPU device, so that this CPU peer
    stays on the CPU on a machine with a GPU too); give inputs placed on the same device."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from ..model import Conv2D, Dense, MaxPool2D, Softmax

    model = check_supported(model)
    device = device or jax.devices("cpu")[0]
    put = lambda a: jax.device_put(a, device)  # noqa: E731
    steps = []
    for layer, shape in zip(model.layers, model.shapes):
        if isinstance(layer, Conv2D):
            _, kh, kw, _ = layer.weight.shape
            p = [pads(shape[0], kh, layer.stride, layer.padding), pads(shape[1], kw, layer.stride, layer.padding)]
            w, b, s = put(layer.weight), put(layer.bias), layer.stride
            steps.append(lambda x, w=w, b=b, s=s, p=p: lax.conv_general_dilated(
                x, w, (s, s), p, dimension_numbers=("NHWC", "OHWI", "NHWC")) + b)
        elif isinstance(layer, MaxPool2D):
            k, s = layer.size, layer.stride
            p = [(0, 0), pads(shape[0], k, s, layer.padding), pads(shape[1], k, s, layer.padding), (0, 0)]
            steps.append(lambda x, k=k, s=s, p=p: lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, s, s, 1), p))
        elif isinstance(layer, Dense):
            w, b = put(layer.weight), put(layer.bias)
            steps.append(lambda x, w=w, b=b: x.reshape(x.shape[0], -1) @ w.T + b)
        elif isinstance(layer, Softmax):
            steps.append(lambda x: jax.nn.softmax(x, axis=-1))
        if getattr(layer, "activation", "none") == "relu":
            steps.append(jax.nn.relu)

    def f(x):
        for step in steps:
            x = step(x)
        return x

    return jax.jit(f)


class JaxJit(Peer):
    name = "jax"
    label = "JAX jit"
    modules = ("jax", "jaxlib")
    distributions = ("jax",)
    import_statement = "import jax"
    install_hint = "pip install jax (optional, about 600 MB)"

    def prepare(self, model):
        import jax
        import numpy as np

        cpu = jax.devices("cpu")[0]
        fn = to_jax(model, cpu)
        return batched(lambda xb: np.asarray(fn(jax.device_put(xb, cpu))))
