"""`cnnrt train`: a CNN trained in TensorFlow/Keras on MNIST or Fashion-MNIST, and exported.

Two architectures (`--arch`):
- `deep_mnist`, the TensorFlow tutorial's (and so the article's): conv 5x5x32 SAME + ReLU,
  max-pool 2x2, conv 5x5x64 SAME + ReLU, max-pool 2x2, dense 1024 + ReLU, dropout 0.5 (training
  only), dense 10, softmax, with its initialisation (truncated normal 0.1, bias 0.1) and Adam.
- `resnet`, a small residual CNN with BatchNormalization (78k parameters), cheap enough to train
  on a 2-core CPU: stem conv 3x3x16 + BN + ReLU, then three stages of one residual block each
  (conv 3x3-BN-ReLU-conv 3x3-BN, plus the identity or, where the shape changes, a 1x1
  convolution with BN; Add; ReLU) at 16, 32 and 64 channels, stride 2 into stages 2 and 3,
  global average pooling, dense 10, softmax. cnnrt folds each BN into its convolution on import.

The bundle (the graph, via `from_keras`) is always written; the article's raw format only for
`deep_mnist`, the one net that format can hold. TensorFlow is imported here only, never by the
engine.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .errors import CnnrtError, FormatError


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        import keras
    except ImportError:
        from .errors import BackendUnavailable
        raise BackendUnavailable("training needs TensorFlow: pip install 'cnnrt[tensorflow]'") from None
    return tf, keras


def build_keras_deep_mnist(seed: int = 0):
    """The Deep MNIST net as a Keras model (random weights, seeded)."""
    _, keras = _tf()
    L, init = keras.layers, keras.initializers
    w = lambda i: init.TruncatedNormal(stddev=0.1, seed=seed + i)  # noqa: E731
    b = init.Constant(0.1)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(32, 5, padding="same", activation="relu", kernel_initializer=w(1), bias_initializer=b, name="conv1"),
        L.MaxPooling2D(2, 2, padding="same", name="pool1"),
        L.Conv2D(64, 5, padding="same", activation="relu", kernel_initializer=w(2), bias_initializer=b, name="conv2"),
        L.MaxPooling2D(2, 2, padding="same", name="pool2"),
        L.Flatten(name="flatten"),
        L.Dense(1024, activation="relu", kernel_initializer=w(3), bias_initializer=b, name="fc1"),
        L.Dropout(0.5, seed=seed + 4, name="dropout"),
        L.Dense(10, kernel_initializer=w(5), bias_initializer=b, name="fc2"),
        L.Softmax(name="softmax"),
    ], name="deep_mnist")


def build_keras_resnet(seed: int = 0, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 1):
    """The small residual CNN for 28x28x1 as a Functional Keras model (random weights, seeded).
    Convolutions feeding a BatchNormalization have no bias (BN's beta is one); BN momentum 0.9,
    so that its moving statistics settle within the few hundred steps of a short run."""
    _, keras = _tf()
    L, init = keras.layers, keras.initializers
    count = iter(range(1, 1000))

    def conv(x, filters, k, stride, name):
        return L.Conv2D(filters, k, strides=stride, padding="same", use_bias=False, name=name,
                        kernel_initializer=init.HeNormal(seed=seed + next(count)))(x)

    def bn(x, name):
        return L.BatchNormalization(momentum=0.9, epsilon=1e-3, name=name)(x)

    inp = keras.Input((28, 28, 1), name="image")
    x = L.ReLU(name="stem_relu")(bn(conv(inp, widths[0], 3, 1, "stem_conv"), "stem_bn"))
    for si, w in enumerate(widths):
        for bi in range(blocks):
            stride = 2 if si > 0 and bi == 0 else 1
            p = f"s{si + 1}b{bi + 1}"
            y = L.ReLU(name=f"{p}_relu1")(bn(conv(x, w, 3, stride, f"{p}_conv1"), f"{p}_bn1"))
            y = bn(conv(y, w, 3, 1, f"{p}_conv2"), f"{p}_bn2")
            short = x if stride == 1 and x.shape[-1] == w else bn(conv(x, w, 1, stride, f"{p}_proj"), f"{p}_proj_bn")
            x = L.ReLU(name=f"{p}_relu2")(L.Add(name=f"{p}_add")([y, short]))
    x = L.GlobalAveragePooling2D(name="pool")(x)
    x = L.Dense(10, kernel_initializer=init.GlorotUniform(seed=seed + next(count)), name="fc")(x)
    return keras.Model(inp, L.Softmax(name="softmax")(x), name="resnet")


RESNET_EPOCHS = 7  # models/fashion_resnet: 17 minutes on the shared 2-core development machine

# --arch -> (builder, default epochs, default batch size)
ARCHS = {
    "deep_mnist": (build_keras_deep_mnist, 8, 50),
    "resnet": (build_keras_resnet, RESNET_EPOCHS, 64),
}


def model_name(arch: str, dataset: str) -> str:
    """The model's name and its bundle's file name: deep_mnist, fashion_resnet, mnist_resnet, ..."""
    from .datasets import get

    if arch == "deep_mnist" and dataset == "mnist":
        return "deep_mnist"
    return f"{get(dataset).short}_{arch}"


def outputs(arch: str, dataset: str) -> tuple[str, ...]:
    """What train writes into --out: the bundle, the article's format (Deep MNIST only), training.json."""
    return (f"{model_name(arch, dataset)}.safetensors",) + (("article",) if arch == "deep_mnist" else ()) \
        + ("training.json",)


def keras_verbose(quiet: bool, stream=None) -> int:
    """Keras's per-epoch bar (verbose=1) where a person watches stdout, which is where Keras draws
    it; nothing (0) in a pipe or a log file, or with --quiet, as cnnrt's own bars (cnnrt/progress.py)."""
    from .progress import enabled

    return 1 if enabled(quiet, sys.stdout if stream is None else stream) else 0


def train(images: str, labels: str, test_images: str, test_labels: str, out: str, *, arch: str = "deep_mnist",
          dataset: str = "mnist", epochs: int | None = None, batch_size: int | None = None, lr: float = 1e-3,
          seed: int = 0, validation: int = 5000, limit: int | None = None, test_limit: int | None = None,
          force: bool = False, quiet: bool = False) -> dict:
    """Train `arch`, report test accuracy, export the bundle (with `dataset`'s class names), the
    article's 8 files (deep_mnist only) and training.json under `out`, all or nothing: they are
    built in a temporary directory beside `out` and moved in only when complete. Files of those
    names already in `out` are refused unless `force` (checked before training, and again before
    the move). epochs and batch_size default to the architecture's."""
    from . import formats
    from .datasets import get as get_dataset
    from .idx import check_labels, load_mnist
    from .fileio import StagedDir
    from .importers.keras import from_keras

    if arch not in ARCHS:
        raise CnnrtError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")
    ds = get_dataset(dataset)
    build, default_epochs, default_batch = ARCHS[arch]
    epochs = default_epochs if epochs is None else epochs
    batch_size = default_batch if batch_size is None else batch_size
    name = model_name(arch, dataset)
    files = outputs(arch, dataset)
    with StagedDir(out, overwrite=force) as staged:  # fails now on a bad or read-only destination
        staged.check(files)
        x, y = load_mnist(images, labels)
        xt, yt = load_mnist(test_images, test_labels)
        for imgs, labs, path, what in ((x, y, images, "training"), (xt, yt, test_images, "test")):
            if imgs.shape[1:] not in ((28, 28), (28, 28, 1)):
                raise FormatError(f"{path}: the {arch} net trains on 28x28 one-channel images, "
                                  f"these {what} images are {imgs.shape[1:]}")
        check_labels(y, 10, labels)
        check_labels(yt, 10, test_labels)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        if test_limit is not None:
            xt, yt = xt[:test_limit], yt[:test_limit]
        validation = min(validation, len(x) // 10)  # --limit: keep nine tenths for training
        if len(x) - validation < 1:
            raise FormatError(f"{images}: {len(x)} training images are too few to train on")

        tf, keras = _tf()
        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
        x = (x.astype(np.float32) / 255.0).reshape(len(x), 28, 28, 1)
        xt = (xt.astype(np.float32) / 255.0).reshape(len(xt), 28, 28, 1)
        if validation:
            xv, yv = x[-validation:], y[-validation:]
            x, y = x[:-validation], y[:-validation]

        model = build(seed)
        steps = epochs * (-(-len(x) // batch_size))
        # The tutorial's Adam at 1e-4 needs 20,000 steps; a cosine decay from 1e-3 reaches the same
        # accuracy in fewer epochs on a 2-core CPU.
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps, alpha=0.01)
        model.compile(optimizer=keras.optimizers.Adam(schedule),
                      loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=keras_verbose(quiet),
                  validation_data=(xv, yv) if validation else None)
        seconds = time.perf_counter() - t0
        _, test_acc = model.evaluate(xt, yt, batch_size=500, verbose=0)
        # Keras's right answers per block of 1,000 test images, so that a run over the first N
        # thousand (a quicker check than all of them) has Keras's own score to compare with
        right = model.predict(xt, batch_size=500, verbose=0).argmax(axis=1) == yt
        per_1000 = [int(right[i:i + 1000].sum()) for i in range(0, len(xt), 1000)]
        command = "cnnrt train " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train"] else "cnnrt.train.train()"
        meta = {
            "trained_with": f"tensorflow {tf.__version__}, keras {keras.__version__}",
            "command": command,
            "arch": arch, "dataset": ds.name,
            "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "train_images": int(len(x)), "validation_images": int(validation),
            "test_images": int(len(xt)),
            "test_accuracy_keras": round(float(test_acc), 6),
            "test_correct_keras_per_1000": per_1000,
            "train_seconds": round(seconds, 1),
        }
        g = from_keras(model, name=name, meta=meta)
        if ds.labels:
            g.labels = list(ds.labels)
        formats.save_bundle(g, staged.path / files[0])
        if arch == "deep_mnist":
            formats.save_article(g, staged.path / "article")
        (staged.path / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
        staged.commit()
    out = Path(out)
    print(f"Test accuracy (Keras, {len(xt)} images): {test_acc:.4f}")
    if arch == "deep_mnist":
        print(f"Exported {out / files[0]}, {out / 'article'}/ (the article's 8 raw files) "
              f"and {out / 'training.json'}")
    else:
        print(f"Exported {out / files[0]} and {out / 'training.json'} (no copy in the article's raw format: "
              f"it can hold only the Deep MNIST net)")
    return meta
