"""Golden tests: cnnrt against TensorFlow itself, on real MNIST images, from both file formats.

The article-format files are written here from Keras's own tensors with the article's transposes
(not through cnnrt's importer), so the importer, the loader and the engine are all checked
against TensorFlow independently.
"""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is a test extra: pip install -e '.[test]'")

from cnnrt import backends  # noqa: E402
from cnnrt.formats import load_model, save_bundle  # noqa: E402
from cnnrt.ir.chain import as_chain  # noqa: E402
from cnnrt.importers.keras import from_keras  # noqa: E402
from cnnrt.train import build_keras_deep_mnist  # noqa: E402

from test_formats import write_like_the_article  # noqa: E402

N = 2000


@pytest.fixture(scope="module")
def keras_and_files(tmp_path_factory, mnist_test):
    seed = int(np.random.SeedSequence().entropy % 10000)
    print(f"keras seed {seed}")
    km = build_keras_deep_mnist(seed)
    # perturb the constant 0.1 biases so that every tensor is random
    rng = np.random.default_rng(seed)
    km.set_weights([w + rng.standard_normal(w.shape).astype(np.float32) * 0.05 for w in km.get_weights()])
    x = mnist_test[0][:N]
    probs = km.predict(x[..., None].astype(np.float32) / 255.0, batch_size=500, verbose=0)
    for _ in range(6):  # some seeds saturate the softmax (CI drew one): damp the last layer until a
        # comparison of probabilities means something (the test asserts that it does)
        if (probs.max(axis=1) < 0.99).mean() > 0.2:
            break
        km.set_weights(km.get_weights()[:-2] + [w * 0.3 for w in km.get_weights()[-2:]])
        probs = km.predict(x[..., None].astype(np.float32) / 255.0, batch_size=500, verbose=0)
    d = tmp_path_factory.mktemp("golden")
    names = ["W_conv1", "b_conv1", "W_conv2", "b_conv2", "W_fc1", "b_fc1", "W_fc2", "b_fc2"]
    write_like_the_article(dict(zip(names, km.get_weights())), d / "article")
    save_bundle(from_keras(km), d / "m.safetensors")
    logits_model = tf.keras.Model(km.inputs, km.get_layer("fc2").output)
    logits = logits_model.predict(x[..., None].astype(np.float32) / 255.0, batch_size=500, verbose=0)
    return km, d, x, probs, logits


@pytest.mark.parametrize("fmt", ["article", "m.safetensors"])
def test_fp32_matches_tensorflow(keras_and_files, fmt):
    km, d, x, tf_probs, tf_logits = keras_and_files
    model = as_chain(load_model(d / fmt))
    probs = backends.prepare(model, "numpy", "fp32").probabilities(x)
    assert probs.shape == (N, 10)
    diff = np.abs(probs - tf_probs).max()
    assert diff < 1e-5, f"max abs probability difference {diff:.3g}"
    # the probabilities are not all saturated, so the comparison above is meaningful
    assert (tf_probs.max(axis=1) < 0.99).mean() > 0.05
    model.layers = model.layers[:-1]  # logits: the stricter comparison
    model.shapes = model.validate()
    logits = backends.prepare(model, "numpy", "fp32").probabilities(x)
    rel = np.linalg.norm(logits - tf_logits) / np.linalg.norm(tf_logits)
    assert rel < 1e-5, f"relative logit error {rel:.3g}"


def test_fp16_agrees_with_tensorflow_on_the_trained_model(mnist_test):
    """The issue's fp16 bar (argmax agreement >= 99.9%), on all 10,000 images, with TensorFlow
    running the shipped weights. The Keras model gets them through the inverse of the engine's
    layout, written out here (conv (out, kh, kw, in) -> (kh, kw, in, out); dense (out, in) -> (in, out))."""
    from conftest import SHIPPED

    model = as_chain(load_model(SHIPPED / "deep_mnist.safetensors"))
    km = build_keras_deep_mnist(0)
    p = model.params()
    km.set_weights([p["conv1.weight"].transpose(1, 2, 3, 0), p["conv1.bias"],
                    p["conv2.weight"].transpose(1, 2, 3, 0), p["conv2.bias"],
                    p["fc1.weight"].T, p["fc1.bias"], p["fc2.weight"].T, p["fc2.bias"]])
    x = mnist_test[0]
    tf_probs = km.predict(x[..., None].astype(np.float32) / 255.0, batch_size=1000, verbose=0)
    probs = backends.prepare(model, "numpy", "fp16").probabilities(x)
    agree = (probs.argmax(1) == tf_probs.argmax(1)).mean()
    assert agree >= 0.999, f"fp16 argmax agreement {agree:.4f}"
    assert np.abs(probs - tf_probs).max() < 1e-2


def test_fp16_on_random_weights(keras_and_files):
    """Random nets have many near-ties between their top two classes, closer than fp16 storage
    can resolve: with fp16 storage, both cnnrt and the reference agreed with TensorFlow on 99.84% to
    100% of the images, depending on the draw (40 draws tried when this test was written). So the bar here is
    lower than on the trained model above; the fp16 arithmetic itself is checked against the
    reference in test_numpy_backend.py."""
    km, d, x, tf_probs, _ = keras_and_files
    probs = backends.prepare(load_model(d / "article"), "numpy", "fp16").probabilities(x)
    agree = (probs.argmax(1) == tf_probs.argmax(1)).mean()
    assert agree >= 0.995, f"fp16 argmax agreement {agree:.4f}"
    assert np.abs(probs - tf_probs).max() < 5e-2
