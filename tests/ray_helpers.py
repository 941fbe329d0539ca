"""What the Ray tests share: inputs, the offline reference, predictors that misbehave on purpose.

The predictor subclasses here are shipped to Ray workers by value (cloudpickle), since a worker
cannot import this test folder by name.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from cnnrt.ray import CnnrtPredictor

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "deep_mnist" / "deep_mnist.safetensors"


def ship_by_value() -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def fresh_images(rng: np.random.Generator, mnist_x: np.ndarray, n: int) -> np.ndarray:
    """n images: MNIST test digits drawn at random, a quarter of them replaced by uniform noise."""
    x = mnist_x[rng.choice(len(mnist_x), size=n, replace=False)].copy()
    noise = rng.random(n) < 0.25
    x[noise] = rng.integers(0, 256, size=(int(noise.sum()), 28, 28), dtype=np.uint8)
    return x


def offline(x: np.ndarray) -> np.ndarray:
    """The reference: the same model in this process, through the session API, in one call."""
    import cnnrt

    return cnnrt.load(MODEL, backend="numpy").probabilities(x)


def read_output(dest: Path) -> dict:
    """Every row of DEST's shards (pyarrow skips _cnnrt_batch.json), sorted by nothing: as stored."""
    import pyarrow.parquet as pq

    t = pq.read_table(dest)
    return {"id": t["id"].to_numpy(), "file": np.array(t["file"].to_pylist()), "row": t["row"].to_numpy(),
            "label": t["label"].to_numpy(),
            "probabilities": np.asarray(t["probabilities"].combine_chunks().flatten()).reshape(t.num_rows, -1)}


def check_exact(out: dict, reference: np.ndarray) -> None:
    """Each input id exactly once; probabilities as the offline run's; labels their argmax."""
    ids = out["id"]
    assert len(ids) == len(reference), f"{len(ids)} output rows for {len(reference)} inputs"
    assert np.array_equal(np.sort(ids), np.arange(len(reference))), "ids lost or duplicated"
    order = np.argsort(ids)
    p = out["probabilities"][order]
    np.testing.assert_allclose(p, reference, rtol=1e-5, atol=1e-6)
    assert np.array_equal(out["label"][order], p.argmax(axis=1))
    # where the offline run is not a near tie, the labels agree with it too
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    assert np.array_equal(out["label"][order][clear], reference.argmax(axis=1)[clear])


class DiesOnce(CnnrtPredictor):
    """Kills its own process (as a crash or an OOM kill would) on its `after`-th batch, once per
    marker file: the restarted actor finds the marker and carries on."""

    def __init__(self, *args, marker: str, after: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.marker, self.after, self.calls = marker, after, 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == self.after:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, f"{os.getpid()} died on batch {self.calls}\n".encode())
                os.close(fd)
                os._exit(1)
        return super().__call__(batch)


class RecordsNode(CnnrtPredictor):
    """Notes which Ray node ran each batch, one file per batch in `folder`."""

    def __init__(self, *args, folder: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.folder = folder

    def __call__(self, batch):
        import ray

        out = super().__call__(batch)
        node = ray.get_runtime_context().get_node_id()
        with open(os.path.join(self.folder, f"{os.getpid()}-{int(out['id'][0]) if len(out['id']) else -1}"), "w") as f:
            f.write(node)
        return out


class DiesOnceRecordsNode(DiesOnce, RecordsNode):
    """Both: one run shows the work spread over the nodes and surviving a killed actor."""
