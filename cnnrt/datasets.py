"""The labelled image sets cnnrt knows by name (`--dataset` of train and eval): where their IDX
files are and what their classes are called.

MNIST's test set is package data (any install); its training set and all of Fashion-MNIST are in
the source repository only (data/mnist/, data/fashion-mnist/), so those are found only when cnnrt
runs from a checkout, and a clear error says so otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import CnnrtError

FASHION_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class Dataset:
    name: str          # as typed after --dataset
    title: str         # as written in prose
    folder: str        # under data/ of the source repository
    short: str         # prefix of model names trained on it (fashion_resnet)
    labels: tuple[str, ...] | None  # class names; None: the digits '0'..'9'


DATASETS = {
    "mnist": Dataset("mnist", "MNIST", "mnist", "mnist", None),
    "fashion-mnist": Dataset("fashion-mnist", "Fashion-MNIST", "fashion-mnist", "fashion", FASHION_LABELS),
}
NAMES = tuple(DATASETS)

_TRAIN = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
_TEST = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def get(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise CnnrtError(f"unknown dataset {name!r} (known: {', '.join(NAMES)})") from None


def _from_source(ds: Dataset, files: tuple[str, str], what: str, flags: str) -> tuple[str, str]:
    from .resources import source_root

    root = source_root()
    paths = None if root is None else tuple(root / "data" / ds.folder / f for f in files)
    if paths is None or not all(p.is_file() for p in paths):
        raise CnnrtError(f"the {ds.title} {what} set ships only with the source repository (data/{ds.folder}/); "
                         f"pass {flags} (IDX files, raw or .gz)")
    return str(paths[0]), str(paths[1])


def train_files(name: str, flags: str = "--images and --labels") -> tuple[str, str]:
    """(images, labels) of the training set: source checkout only."""
    return _from_source(get(name), _TRAIN, "training", flags)


def test_files(name: str, flags: str = "--images and --labels") -> tuple[str, str]:
    """(images, labels) of the test set: MNIST's from the package data, others from the checkout."""
    ds = get(name)
    if ds.name == "mnist":
        from .resources import mnist_test_images, mnist_test_labels

        return str(mnist_test_images()), str(mnist_test_labels())
    return _from_source(ds, _TEST, "test", flags)


def labels(name: str) -> list[str] | None:
    """Class names to store in a model trained on it (None for MNIST's digits)."""
    ds = get(name)
    return list(ds.labels) if ds.labels else None
