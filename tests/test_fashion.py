"""The second trained model on the second data set: `cnnrt train --dataset fashion-mnist --arch
resnet` end to end (Keras trains, cnnrt runs the bundle and gets Keras's accuracy), the residual
architecture's conversion against Keras itself, the shipped models/fashion_resnet against the Keras
accuracy its training recorded, eval's --dataset, class names in predict and the report, and
Fashion-MNIST's image preprocessing.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from cli_helpers import ROOT, assert_clean_error, cnnrt

FASHION = ROOT / "data" / "fashion-mnist"
TEST_IMAGES, TEST_LABELS = FASHION / "t10k-images-idx3-ubyte.gz", FASHION / "t10k-labels-idx1-ubyte.gz"
SHIPPED = ROOT / "models" / "fashion_resnet"
BUNDLE = SHIPPED / "fashion_resnet.safetensors"
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(scope="module")
def fashion_test():
    from cnnrt.idx import load_mnist

    return load_mnist(TEST_IMAGES, TEST_LABELS)


# ---------------------------------------------------------------- cnnrt train, end to end

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("tensorflow")
    out = tmp_path_factory.mktemp("fashion") / "model"
    p = cnnrt("train", "--dataset", "fashion-mnist", "--arch", "resnet", "--epochs", "1", "--limit", "2000",
              "--test-limit", "500", "--out", out, timeout=600)
    return out, p


def test_train_resnet_on_fashion_mnist(trained):
    out, p = trained
    assert sorted(os.listdir(out)) == ["fashion_resnet.safetensors", "training.json"]
    assert "can hold only the Deep MNIST net" in p.stdout  # says why there is no article-format copy
    assert not [f for f in os.listdir(out.parent) if f != "model"], "temporary files left beside the output"
    meta = json.loads((out / "training.json").read_text())
    assert (meta["arch"], meta["dataset"], meta["epochs"]) == ("resnet", "fashion-mnist", 1)
    assert (meta["train_images"], meta["validation_images"], meta["test_images"]) == (1800, 200, 500)
    m = re.search(r"Test accuracy \(Keras, 500 images\): (0\.\d{4})", p.stdout)
    assert m, p.stdout
    keras_acc = meta["test_accuracy_keras"]
    assert float(m.group(1)) == round(keras_acc, 4) and meta["test_correct_keras_per_1000"] == [round(keras_acc * 500)]
    assert keras_acc > 0.4, keras_acc  # well above chance (0.1) after one epoch on 1,800 images

    import cnnrt as pkg

    s = pkg.load(out / "fashion_resnet.safetensors", backend="numpy")
    assert s.backend == "numpy" and s.name == "fashion_resnet" and s.labels == NAMES
    assert s.model.meta["passes"]["fold_batchnorm"] == 9  # every BatchNormalization folded into its conv
    assert sum(n.op == "Add" for n in s.model.nodes) == 3  # the residual additions
    # cnnrt's accuracy on the same 500 test images; the test set follows the model's dataset
    r = json.loads(cnnrt("eval", "--model", out / "fashion_resnet.safetensors", "--limit", "500",
                         "--backend", "numpy", "--json").stdout)
    assert r["images"] == 500 and r["backend"] == "numpy" and "Fashion-MNIST" in r["data"]
    assert abs(r["accuracy"] - keras_acc) <= 0.005, (r["accuracy"], keras_acc)
    again = json.loads(cnnrt("eval", "--model", out / "fashion_resnet.safetensors", "--dataset", "fashion-mnist",
                             "--limit", "500", "--backend", "numpy", "--json").stdout)
    assert again["correct"] == r["correct"]


def test_train_refuses_a_model_already_there(trained):
    out, _ = trained
    p = cnnrt("train", "--dataset", "fashion-mnist", "--arch", "resnet", "--epochs", "1", "--limit", "100",
              "--out", out, check=False)
    assert_clean_error(p, f"{out}: already holds fashion_resnet.safetensors, training.json", "use --force")


def test_model_names_and_outputs():
    from cnnrt.train import model_name, outputs

    assert outputs("deep_mnist", "mnist") == ("deep_mnist.safetensors", "article", "training.json")
    assert outputs("resnet", "fashion-mnist") == ("fashion_resnet.safetensors", "training.json")
    assert model_name("resnet", "mnist") == "mnist_resnet"
    assert model_name("deep_mnist", "fashion-mnist") == "fashion_deep_mnist"


def test_resnet_converts_as_keras_computes(rng):
    """The architecture with BatchNorm statistics that do something (fresh ones are 0 and 1), through
    from_keras and a bundle, on the NumPy backend, against Keras's own output."""
    keras = pytest.importorskip("keras")
    from cnnrt.formats import load_model, save_bundle
    from cnnrt.importers.keras import from_keras
    from cnnrt.session import Session
    from cnnrt.train import build_keras_resnet

    km = build_keras_resnet(seed=int(rng.integers(1000)))
    for layer in km.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c),
                               rng.uniform(0.5, 1.5, c)])
    pixels = rng.integers(0, 256, (8, 28, 28), dtype=np.uint8)
    want = np.asarray(km(pixels[..., None].astype(np.float32) / 255, training=False), dtype=np.float64)
    g = from_keras(km, name="fashion_resnet")
    assert not any(n.op == "BatchNormalization" for n in g.nodes)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        save_bundle(g, os.path.join(d, "m.safetensors"))
        got = Session(load_model(os.path.join(d, "m.safetensors")), backend="numpy").probabilities(pixels)
    assert np.abs(got.astype(np.float64) - want).max() < 1e-5
    assert (got.argmax(1) == want.argmax(1)).all()


# ---------------------------------------------------------------- the shipped model

def test_shipped_model_scores_what_keras_scored(fashion_test):
    """cnnrt (NumPy backend, fp32) on the first 2,000 Fashion-MNIST test images against what Keras
    scored on them when the model was trained (training.json counts Keras's right answers per
    1,000 test images; all 10,000 take half a minute here, and the README quotes that run)."""
    import cnnrt as pkg

    meta = json.loads((SHIPPED / "training.json").read_text())
    assert (meta["dataset"], meta["arch"], meta["test_images"]) == ("fashion-mnist", "resnet", 10000)
    per_1000 = meta["test_correct_keras_per_1000"]
    assert len(per_1000) == 10 and abs(sum(per_1000) - meta["test_accuracy_keras"] * 10000) < 1
    n = 2000
    x, y = fashion_test
    s = pkg.load(BUNDLE, backend="numpy")
    assert s.labels == NAMES and s.precision == "fp32"
    acc, keras_acc = float((s.predict(x[:n]) == y[:n]).mean()), sum(per_1000[:n // 1000]) / n
    assert abs(acc - keras_acc) <= 0.002, (acc, keras_acc)
    assert acc > 0.88
    assert BUNDLE.stat().st_size < 1 << 20


def test_shipped_model_readme_quotes_real_eval_output():
    text = (SHIPPED / "README.md").read_text()
    meta = json.loads((SHIPPED / "training.json").read_text())
    m = re.search(r"Accuracy: (0\.\d{4}) \((\d+)/10000\)", text)
    assert m, "README lacks the cnnrt eval output"
    assert abs(float(m.group(1)) - meta["test_accuracy_keras"]) <= 0.002


def test_predict_and_report_name_the_classes(tmp_path, fashion_test):
    """Fashion-MNIST test images as PNG files: predict preprocesses them with the data set's recipe
    and prints class names; eval's report names the classes too."""
    pytest.importorskip("PIL")
    from PIL import Image

    x, y = fashion_test
    files = []
    for i in range(6):
        f = tmp_path / f"{i}.png"
        Image.fromarray(x[i]).save(f)
        files.append(f)
    lines = cnnrt("predict", "--model", BUNDLE, "--backend", "numpy", "--json", *files).stdout.splitlines()
    got = [json.loads(line) for line in lines]
    assert [r["preprocess"] for r in got] == ["fashion"] * 6
    assert [r["label"] for r in got] == [NAMES[k] for k in y[:6]]  # the first six are easy ones
    pytest.importorskip("matplotlib")
    page = tmp_path / "report.html"
    cnnrt("eval", "--model", BUNDLE, "--limit", "200", "--backend", "numpy", "--report", page)
    html = page.read_text()
    assert all(name in html for name in ("Ankle boot", "Sneaker", "Pullover"))


# ---------------------------------------------------------------- eval --dataset

def test_eval_dataset_does_not_go_with_images():
    p = cnnrt("eval", "--model", BUNDLE, "--dataset", "fashion-mnist", "--images", TEST_IMAGES, "--labels",
              TEST_LABELS, check=False)
    assert_clean_error(p, "--dataset fashion-mnist names the test images and labels; it does not go with --images")


def test_eval_dataset_mnist_on_the_fashion_model_is_what_was_asked():
    """Asking for MNIST is honoured (the model then scores near chance), and the output says which set ran."""
    out = cnnrt("eval", "--model", BUNDLE, "--dataset", "mnist", "--limit", "100", "--backend", "numpy").stdout
    assert "Images: 100 (MNIST test set)" in out


def test_dataset_files_outside_a_checkout(monkeypatch):
    from cnnrt import datasets, resources
    from cnnrt.errors import CnnrtError

    monkeypatch.setattr(resources, "source_root", lambda: None)
    with pytest.raises(CnnrtError, match=r"the Fashion-MNIST test set ships only with the source repository "
                                         r"\(data/fashion-mnist/\); pass --images and --labels"):
        datasets.test_files("fashion-mnist")
    with pytest.raises(CnnrtError, match="the Fashion-MNIST training set ships only"):
        datasets.train_files("fashion-mnist")
    assert datasets.test_files("mnist")[0].endswith("t10k-images-idx3-ubyte.gz")  # package data: anywhere


# ---------------------------------------------------------------- Fashion-MNIST's preprocessing

def test_fashion_recipe_keeps_the_data_sets_own_images(fashion_test):
    """An image already in the data set's form (trimmed, longest edge 28, centred, light on black)
    comes back as it was (98% of the first 2,000 do, byte for byte; the others move by a pixel)."""
    from cnnrt.images import Picture, fashion_item

    x, _ = fashion_test
    same = [np.array_equal(fashion_item(Picture(str(i), x[i][..., None].astype(np.float32))), x[i])
            for i in range(300)]
    assert np.mean(same) >= 0.95, np.mean(same)


def _photo(img: np.ndarray) -> np.ndarray:
    """A data set image as a product photo shows the item: dark on a white page, three times larger,
    off centre."""
    from cnnrt.images import resize

    page = np.full((150, 200), 255.0, np.float32)
    page[20:104, 90:174] = 255.0 - resize(img.astype(np.float32), 84, 84, "test")
    return page[..., None]


def test_fashion_recipe_on_photo_style_images(fashion_test):
    """Negated, trimmed, scaled and centred, a photo-style image comes back close to the data set's
    own (not equal: enlarging and shrinking blurs), and the shipped model still classifies such
    images about as well as the data set's."""
    import cnnrt as pkg
    from cnnrt.images import Picture, fashion_item

    x, y = fashion_test
    n = 300
    back = np.stack([fashion_item(Picture(str(i), _photo(x[i]))) for i in range(n)])
    corr = [np.corrcoef(back[i].ravel().astype(float), x[i].ravel().astype(float))[0, 1] for i in range(n)]
    assert np.median(corr) > 0.9 and min(corr) > 0.6, (np.median(corr), min(corr))
    s = pkg.load(BUNDLE, backend="numpy")
    direct, via_photo = (s.predict(x[:n]) == y[:n]).mean(), (s.predict(back) == y[:n]).mean()
    assert via_photo >= direct - 0.05, (via_photo, direct)


def test_fashion_recipe_refuses_a_blank_image():
    from cnnrt.errors import FormatError
    from cnnrt.images import Picture, fashion_item

    with pytest.raises(FormatError, match="blank.png: no item found"):
        fashion_item(Picture("blank.png", np.full((40, 40, 1), 200.0, np.float32)))
