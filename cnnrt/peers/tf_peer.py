"""TensorFlow/Keras peers: a Keras Sequential rebuilt from our Model, weights set from our tensors.

Keras computes in NHWC and flattens in HWC order like cnnrt, so only the kernels move back:
Conv2D (out, kh, kw, in) -> (kh, kw, in, out), Dense (out, in) -> (in, out): the inverse of
cnnrt.importers.keras.
"""
from __future__ import annotations

import os

from . import Peer, batched, check_supported


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        from ..errors import BackendUnavailable

        raise BackendUnavailable(f"Keras runs on {keras.backend.backend()!r} (KERAS_BACKEND); "
                                 "the TensorFlow peers need 'tensorflow'")
    return tf, keras


def to_keras(model):
    """A built Keras model computing `model` (a cnnrt Model)."""
    from ..model import Conv2D, Dense, MaxPool2D, Softmax

    model = check_supported(model)
    _, keras = _tf()
    L = keras.layers
    layers, weights = [keras.Input(model.input_shape)], []
    for layer, shape in zip(model.layers, model.shapes):
        act = "relu" if getattr(layer, "activation", "none") == "relu" else None
        if isinstance(layer, Conv2D):
            o, kh, kw, _ = layer.weight.shape
            layers.append(L.Conv2D(o, (kh, kw), strides=layer.stride, padding=layer.padding, activation=act, name=layer.name))
            weights.append((layer.name, [layer.weight.transpose(1, 2, 3, 0), layer.bias]))
        elif isinstance(layer, MaxPool2D):
            layers.append(L.MaxPooling2D(layer.size, layer.stride, padding=layer.padding, name=layer.name))
        elif isinstance(layer, Dense):
            if len(shape) != 1:
                layers.append(L.Flatten(name=f"{layer.name}_flatten"))
            layers.append(L.Dense(layer.weight.shape[0], activation=act, name=layer.name))
            weights.append((layer.name, [layer.weight.T, layer.bias]))
        elif isinstance(layer, Softmax):
            layers.append(L.Softmax(name=layer.name))
    km = keras.Sequential(layers, name=model.name)
    for name, w in weights:
        km.get_layer(name).set_weights(w)
    return km


class KerasPredict(Peer):
    name = "keras"
    label = "Keras model.predict"
    modules = ("tensorflow", "keras")
    distributions = ("tensorflow-cpu", "tensorflow")
    import_statement = "import tensorflow, keras"

    def prepare(self, model):
        km = to_keras(model)
        return lambda x, bs: km.predict(x, batch_size=bs, verbose=0)


class TfFunction(Peer):
    name = "tf-function"
    label = "TensorFlow tf.function"
    modules = ("tensorflow", "keras")
    distributions = ("tensorflow-cpu", "tensorflow")
    import_statement = "import tensorflow, keras"

    def prepare(self, model):
        tf, _ = _tf()
        km = to_keras(model)
        fn = tf.function(lambda x: km(x, training=False),
                         input_signature=[tf.TensorSpec((None, *model.input_shape), tf.float32)])
        return batched(lambda xb: fn(xb).numpy())
