"""Where the shipped files are: package data, so a plain `pip install cnnrt` finds them anywhere.

The wheel carries the trained Deep MNIST bundle (cnnrt/data/deep_mnist/, fp32, 13.1 MB) and the
MNIST test set (cnnrt/data/mnist/, the two t10k files, 1.6 MB gzip). The MNIST training set and
the model's copy in the article's raw format stay in the source repository only (data/mnist/,
models/deep_mnist/article/): they are needed only to retrain or to read the article's format.
"""
from __future__ import annotations

from pathlib import Path


def data_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("cnnrt") / "data"))


def shipped_model() -> Path:
    """The trained Deep MNIST bundle."""
    return data_dir() / "deep_mnist" / "deep_mnist.safetensors"


def mnist_test_images() -> Path:
    return data_dir() / "mnist" / "t10k-images-idx3-ubyte.gz"


def mnist_test_labels() -> Path:
    return data_dir() / "mnist" / "t10k-labels-idx1-ubyte.gz"


def source_root() -> Path | None:
    """The repository checkout this package runs from (an editable install), else None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "data" / "mnist").is_dir() else None


def mnist_train_files() -> tuple[Path, Path] | None:
    """The MNIST training images and labels, in a source checkout only (not in the wheel)."""
    root = source_root()
    if root is None:
        return None
    d = root / "data" / "mnist"
    return d / "train-images-idx3-ubyte.gz", d / "train-labels-idx1-ubyte.gz"
