"""The Keras importer against Keras itself: every supported layer in a small functional model,
keras.applications' MobileNetV2 and ResNet50 (random weights and BatchNorm statistics), and the
Deep MNIST Sequential model, which must still run on the fused layer-chain kernels.

The reference is always Keras's own output on the same fresh random input; cnnrt runs the
imported graph on its NumPy backend in float32. Tolerance: 1e-4 of the largest output magnitude.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras", reason="Keras is a test extra: pip install -e '.[test]'")

from cnnrt import backends  # noqa: E402
from cnnrt.errors import FormatError  # noqa: E402
from cnnrt.formats import load_model, save_bundle  # noqa: E402
from cnnrt.importers.keras import from_keras, same_pads  # noqa: E402
from cnnrt.ir.chain import match  # noqa: E402
from cnnrt.train import build_keras_deep_mnist  # noqa: E402

L = keras.layers
TOL = 1e-4


def keras_out(km, x):
    return np.asarray(keras.ops.convert_to_numpy(km(x, training=False)), dtype=np.float64)


def cnnrt_out(g, x):
    return backends.prepare(g, "numpy", "fp32").probabilities(x).astype(np.float64)


def assert_close(got, want, tol=TOL):
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = np.abs(want).max()
    assert scale > 0
    err = np.abs(got - want).max() / scale
    assert err < tol, f"max error {err:.3g} of the largest output {scale:.3g}"


def randomize(km, rng):
    """Random weights everywhere, BatchNorm statistics included (else they fold to nothing)."""
    for layer in km.layers:
        if isinstance(layer, keras.Model):
            randomize(layer, rng)
            continue
        new = []
        for v in layer.weights:
            shape = tuple(v.shape)
            if "variance" in v.path:
                new.append(rng.uniform(0.5, 2.0, shape))
            elif "gamma" in v.path:
                new.append(rng.uniform(0.5, 1.5, shape))
            else:
                fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 10
                new.append(rng.standard_normal(shape) / np.sqrt(max(fan_in, 1)))
        if new:
            layer.set_weights([w.astype(np.float32) for w in new])
    return km


def functional(shape, body, flatten=True):
    i = keras.Input(shape)
    y = body(i)
    if flatten and len(y.shape) > 2:
        y = L.Flatten()(y)
    return keras.Model(i, y)


ACTS = ["relu", "relu6", "sigmoid", "hard_sigmoid", "hard_swish", "hard_silu", "swish", "silu", "tanh", "gelu",
        "softmax", "linear", "elu", "softplus", "leaky_relu"]

# name -> (input shape (H, W, C), the model body)
CASES = {
    "conv_same_stride2_asymmetric": ((10, 11, 3), lambda x: L.Conv2D(5, 3, strides=2, padding="same")(x)),
    "conv_same_even_kernel": ((8, 7, 3), lambda x: L.Conv2D(4, (4, 2), strides=(1, 2), padding="same")(x)),
    "conv_valid_rect": ((10, 9, 2), lambda x: L.Conv2D(4, (3, 5), strides=(2, 1), use_bias=False)(x)),
    "conv_dilated_same": ((12, 11, 3), lambda x: L.Conv2D(4, 3, dilation_rate=2, padding="same")(x)),
    "conv_groups": ((8, 8, 6), lambda x: L.Conv2D(4, 3, groups=2, padding="same", activation="relu")(x)),
    "depthwise_mult2_stride2": ((10, 9, 3), lambda x: L.DepthwiseConv2D(3, strides=2, depth_multiplier=2,
                                                                       padding="same")(x)),
    "depthwise_dilated_valid": ((11, 10, 4), lambda x: L.DepthwiseConv2D(3, dilation_rate=2, use_bias=False,
                                                                         activation="relu6")(x)),
    "separable": ((9, 8, 3), lambda x: L.SeparableConv2D(5, 3, depth_multiplier=2, padding="same",
                                                         activation="relu")(x)),
    "dense": ((4, 4, 2), lambda x: L.Dense(3, activation="tanh")(L.Dense(7)(L.Flatten()(x)))),
    "dense_last_axis": ((3, 4, 5), lambda x: L.Dense(6)(x)),
    "batchnorm_after_conv": ((8, 8, 3), lambda x: L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(x))),
    "batchnorm_alone": ((6, 6, 3), lambda x: L.BatchNormalization(epsilon=0.01)(L.ReLU()(x))),
    "batchnorm_no_scale_center": ((6, 6, 3), lambda x: L.BatchNormalization(center=False, scale=False)(x)),
    "maxpool_same_asymmetric": ((10, 11, 2), lambda x: L.MaxPooling2D(3, strides=2, padding="same")(x)),
    "maxpool_valid": ((9, 8, 2), lambda x: L.MaxPooling2D(2)(x)),
    "avgpool_same_excludes_pads": ((9, 10, 2), lambda x: L.AveragePooling2D(3, strides=2, padding="same")(x)),
    "avgpool_valid": ((8, 8, 2), lambda x: L.AveragePooling2D((2, 3), strides=(2, 1))(x)),
    "global_avg": ((5, 6, 4), lambda x: L.GlobalAveragePooling2D()(x)),
    "global_max_keepdims": ((5, 6, 4), lambda x: L.GlobalMaxPooling2D(keepdims=True)(x)),
    "reshape": ((4, 6, 2), lambda x: L.Reshape((8, 3, 2))(x)),
    "reshape_inferred": ((4, 6, 2), lambda x: L.Reshape((-1, 4))(x)),
    "zero_padding": ((5, 5, 2), lambda x: L.Conv2D(3, 3)(L.ZeroPadding2D(((1, 2), (0, 3)))(x))),
    "cropping": ((7, 8, 2), lambda x: L.Cropping2D(((1, 2), (2, 1)))(x)),
    "permute": ((3, 4, 2), lambda x: L.Permute((3, 1, 2))(x)),
    "add_sub_mul": ((5, 5, 3), lambda x: L.Multiply()([L.Subtract()([L.Conv2D(3, 1)(x), x]),
                                                       L.Add()([x, L.ReLU()(x), L.Conv2D(3, 3, padding="same")(x)])])),
    "max_min_average": ((5, 5, 3), lambda x: L.Average()([L.Maximum()([x, L.Conv2D(3, 1)(x)]),
                                                          L.Minimum()([x, L.Conv2D(3, 1)(x)]), x])),
    "concatenate": ((5, 5, 2), lambda x: L.Concatenate()([x, L.Conv2D(3, 1)(x), L.MaxPooling2D(1)(x)])),
    "concatenate_axis1": ((4, 5, 2), lambda x: L.Concatenate(axis=1)([x, L.Conv2D(2, 1)(x)])),
    "relu_max_value": ((6, 6, 2), lambda x: L.ReLU(max_value=0.5)(x)),
    "relu_negative_slope": ((6, 6, 2), lambda x: L.ReLU(negative_slope=0.1)(x)),
    "relu_slope_and_max": ((6, 6, 2), lambda x: L.ReLU(max_value=0.7, negative_slope=0.2)(x)),
    "leaky_relu": ((6, 6, 2), lambda x: L.LeakyReLU(negative_slope=0.05)(x)),
    "softmax_layer_axis1": ((4, 3, 2), lambda x: L.Softmax(axis=1)(x)),
    "dropout": ((6, 6, 2), lambda x: L.Dense(3)(L.Dropout(0.5)(L.Flatten()(x)))),
    "rescaling_inside": ((5, 5, 3), lambda x: L.Rescaling(0.5, offset=[0.1, -0.2, 0.3])(L.Conv2D(3, 1)(x))),
    **{f"activation_{a}": ((5, 5, 3), lambda x, a=a: L.Activation(a)(L.Conv2D(4, 3)(x))) for a in ACTS},
    **{f"conv_activation_{a}": ((5, 5, 3), lambda x, a=a: L.Conv2D(4, 3, activation=a)(x))
       for a in ("hard_sigmoid", "swish", "gelu", "relu6")},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_matches_keras(case, rng):
    shape, body = CASES[case]
    km = randomize(functional(shape, body), rng)
    g = from_keras(km)
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    assert_close(cnnrt_out(g, x), keras_out(km, x))


def test_nested_sequential_and_shared_layer(rng):
    inner = keras.Sequential([L.Conv2D(4, 3, padding="same"), L.BatchNormalization(), L.ReLU()], name="block")
    shared = L.Conv2D(4, 1, name="shared")
    i = keras.Input((7, 7, 3))
    a = inner(i)
    y = L.Add()([shared(a), shared(L.ReLU()(a))])
    km = randomize(keras.Model(i, L.Dense(5)(L.GlobalAveragePooling2D()(y))), rng)
    g = from_keras(km)
    assert sum(n.op == "Conv" and n.name.startswith("block/") for n in g.nodes) == 1  # inlined, prefixed
    assert sum(n.op == "Conv" and n.inputs[1].startswith("shared") for n in g.nodes) == 2
    x = rng.standard_normal((3, 7, 7, 3)).astype(np.float32)
    assert_close(cnnrt_out(g, x), keras_out(km, x))


def test_rescaling_first_is_folded_into_preprocessing(rng):
    """A model that takes raw pixels: cnnrt gets uint8 images and reproduces Keras on the same values."""
    i = keras.Input((6, 6, 3))
    y = L.Rescaling(1 / 127.5, offset=-1.0)(i)
    km = randomize(keras.Model(i, L.Dense(4)(L.Flatten()(L.Conv2D(3, 3)(y)))), rng)
    g = from_keras(km)
    assert not any(n.op in ("Mul", "Add") for n in g.nodes)
    assert g.preprocess["scale"] == pytest.approx(1 / 127.5) and g.preprocess["mean"] == [pytest.approx(1.0)]
    pixels = rng.integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)
    assert_close(cnnrt_out(g, pixels), keras_out(km, pixels.astype(np.float32)))


def test_rescaling_per_channel_first_is_folded(rng):
    i = keras.Input((5, 5, 3))
    y = L.Rescaling([1 / 255, 2 / 255, 0.5 / 255], offset=[0.0, -0.5, 0.25])(i)
    km = randomize(keras.Model(i, L.Dense(4)(L.Flatten()(L.Conv2D(3, 3)(y)))), rng)
    g = from_keras(km)
    assert "std" in g.preprocess and not any(n.op in ("Mul", "Add") for n in g.nodes)
    pixels = rng.integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    assert_close(cnnrt_out(g, pixels), keras_out(km, pixels.astype(np.float32)))


def test_same_pads_follow_tensorflow():
    # TF SAME: out = ceil(n / s), the odd pixel after
    assert same_pads(9, 3, 2) == (1, 1)
    assert same_pads(10, 3, 2) == (0, 1)
    assert same_pads(8, 4, 1) == (1, 2)
    assert same_pads(12, 3, 1, 2) == (2, 2)


def test_deep_mnist_sequential_stays_a_fused_chain(tmp_path, rng):
    """`cnnrt train`'s path: from_keras -> bundle -> load -> the layer-chain kernels, matching Keras."""
    km = build_keras_deep_mnist(int(rng.integers(1000)))
    km.set_weights([w + rng.standard_normal(w.shape).astype(np.float32) * 0.05 for w in km.get_weights()])
    g = from_keras(km, name="deep_mnist", meta={"seed": 1})
    assert [n.op for n in g.nodes] == ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Flatten", "Dense",
                                       "Relu", "Dense", "Softmax"]
    save_bundle(g, tmp_path / "m.safetensors")
    back = load_model(tmp_path / "m.safetensors")
    assert back.meta["seed"] == 1 and back.name == "deep_mnist"
    chain = match(back)
    assert chain is not None and [layer.kind for layer in chain.layers] == ["conv2d", "maxpool2d", "conv2d", "maxpool2d",
                                                                            "dense", "dense", "softmax"]
    runner = backends.prepare(back, "numpy", "fp32")
    # the graph runner's compiled kernels where a C compiler is found (as fast on batches, faster on
    # one image), else the staged engine's fused NumPy kernels; never the generic NumPy path
    from cnnrt.backends import numpy_backend
    if numpy_backend._compiled():
        assert type(runner).__name__ == "GraphRunner"
        assert {k for _, op, k in runner.describe() if op == "Conv"} == {"native.conv.direct+bias+relu"}
    else:
        assert type(runner).__name__ == "NumpyRunner"
    pixels = rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)
    want = keras_out(km, pixels[..., None].astype(np.float32) / 255)
    got = runner.probabilities(pixels).astype(np.float64)
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize("app,size", [("MobileNetV2", 96), ("ResNet50", 64)])
def test_keras_applications(app, size, rng):
    km = getattr(keras.applications, app)(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    for layer in km.layers:  # BatchNorm statistics that do something (weights=None leaves them 0 and 1)
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 1.5, c)])
    g = from_keras(km)
    assert not any(n.op == "BatchNormalization" for n in g.nodes)  # all folded
    x = rng.random((2, size, size, 3)).astype(np.float32) * 2 - 1
    want, got = keras_out(km, x), cnnrt_out(g, x)
    assert_close(got, want)
    assert (got.argmax(1) == want.argmax(1)).all()


# ---------------------------------------------------------------- what it refuses, and how

class Doubler(L.Layer):
    def call(self, x):
        return x * 2


def test_every_unsupported_layer_is_named_at_once():
    i = keras.Input((8, 8, 3))
    y = L.UpSampling2D(name="up")(i)
    y = Doubler(name="custom_doubler")(y)
    y = L.ReLU(threshold=0.5, name="thresholded")(y)
    y = L.Conv2D(2, 3, name="fine")(y)
    y = L.Conv2DTranspose(2, 3, name="deconv")(y)
    km = keras.Model(i, L.Flatten()(y))
    with pytest.raises(FormatError) as e:
        from_keras(km)
    msg = str(e.value)
    assert "4 layers cnnrt cannot convert" in msg
    for name in ("up (UpSampling2D)", "custom_doubler (Doubler, a custom class)", "thresholded (ReLU: threshold 0.5",
                 "deconv (Conv2DTranspose)"):
        assert name in msg
    assert "fine" not in msg


def test_unknown_activation_is_named():
    i = keras.Input((4, 4, 2))
    km = keras.Model(i, L.Flatten()(L.Conv2D(2, 1, activation="selu", name="c")(i)))
    with pytest.raises(FormatError, match=r"c \(Conv2D: activation 'selu'\)"):
        from_keras(km)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    m = Net()
    m(np.zeros((1, 3), np.float32))
    with pytest.raises(FormatError, match="subclassed Keras model"):
        from_keras(m)


def test_unknown_spatial_size_is_refused():
    i = keras.Input((None, None, 3))
    km = keras.Model(i, L.GlobalAveragePooling2D()(L.Conv2D(2, 3)(i)))
    with pytest.raises(FormatError, match=r"has shape \(None, None, None, 3\).*every size but the batch"):
        from_keras(km)
