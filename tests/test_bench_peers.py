"""The bench peers compute cnnrt's function: each installed framework, built from our Model, against
the float64 reference. Peers that are not installed are skipped (CI installs only TensorFlow).

The small model covers what the layouts can get wrong: SAME padding with the odd pixel after (conv
and max-pool), stride 2, VALID, channel counts that differ, the NHWC -> NCHW flatten permutation."""
from __future__ import annotations

import numpy as np
import pytest

from cnnrt.backends import reference
from cnnrt.model import Conv2D, Dense, MaxPool2D, Model, Softmax
from cnnrt.peers import CnnrtPeer, get, peers


def tricky_model(rng) -> Model:
    w = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    return Model(input_shape=(8, 8, 2), name="tricky", layers=[
        Conv2D("c1", w(3, 3, 3, 2), w(3), stride=2, padding="same"),  # 8 -> 4, pads (0, 1)
        Conv2D("c2", w(5, 2, 2, 3), w(5), stride=1, padding="same", activation="none"),  # pads (0, 1)
        MaxPool2D("p1", size=3, stride=2, padding="same"),  # 4 -> 2, pads (0, 1)
        Conv2D("c3", w(4, 1, 1, 5), w(4), padding="valid"),
        Dense("d1", w(6, 2 * 2 * 4), w(6), activation="relu"),
        Dense("d2", w(7, 6), w(7), activation="none"),
        Softmax("sm"),
    ])


@pytest.fixture
def case(rng):
    model = tricky_model(rng)
    x = rng.random((5, 8, 8, 2), dtype=np.float32)
    return model, x, reference.forward(model, x.astype(np.float64))


def _check(peer_name, case, batch_size=2):
    peer = get(peer_name)
    why = peer.missing()
    if why:
        pytest.skip(why)
    model, x, want = case
    got = np.asarray(peer.prepare(model)(x, batch_size))
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_cnnrt_baseline(case):
    model, x, want = case
    np.testing.assert_allclose(CnnrtPeer().prepare(model)(x, 2), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["keras", "tf-function", "onnxruntime", "torch", "jax"])
def test_peer_matches_the_reference(name, case):
    _check(name, case)


def test_onnx_export_is_a_valid_model_that_a_fresh_session_loads(case, tmp_path):
    peer = get("onnxruntime")
    if peer.missing():
        pytest.skip(peer.missing())
    import onnx

    model, x, want = case
    path = peer.export(model, "unused", str(tmp_path))
    onnx.checker.check_model(onnx.load(path), full_check=True)
    np.testing.assert_allclose(peer.load(path)(x, 5), want, rtol=1e-4, atol=1e-5)


def test_every_peer_names_itself_and_says_how_to_install():
    names = [p.name for p in peers()]
    assert names == ["keras", "tf-function", "onnxruntime", "torch", "torch-compile", "jax"]
    for p in peers():
        assert p.label and p.import_statement.startswith("import ") and p.distributions
        why = p.missing()
        assert why is None or "not installed" in why or "compiler" in why
