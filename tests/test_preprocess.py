"""Preprocessing composition (cnnrt.importers.preprocess): the stored form reproduces, on random
pixels, the user's normalisation followed by the model's own first Rescaling, computed directly."""
import numpy as np
import pytest

from cnnrt.errors import FormatError
from cnnrt.importers.preprocess import compose, parse_numbers


def apply(pre, p):
    x = p * pre["scale"]
    if "mean" in pre:
        x = x - np.asarray(pre["mean"])
    if "std" in pre:
        x = x / np.asarray(pre["std"])
    return x


@pytest.mark.parametrize("scale,mean,std,affine", [
    (None, None, None, None),
    (1 / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], None),
    (1 / 255, 0.5, 0.5, None),
    (1.0, None, None, (1 / 127.5, -1.0)),
    (1.0, None, None, ([1 / 255, 2 / 255, 3 / 255], [0.0, 0.1, -0.2])),
    (1 / 255, [0.1, 0.2, 0.3], 2.0, (0.5, [1.0, 2.0, 3.0])),
])
def test_composition_matches_the_direct_formula(scale, mean, std, affine, rng):
    pre = compose(scale, mean, std, affine, channels=3)
    p = rng.integers(0, 256, (5, 3)).astype(np.float64)
    want = p * (1 / 255 if scale is None else scale)
    if mean is not None:
        want = want - np.asarray(mean)
    if std is not None:
        want = want / np.asarray(std)
    if affine is not None:
        want = want * np.asarray(affine[0]) + np.asarray(affine[1])
    np.testing.assert_allclose(apply(pre, p), want, rtol=1e-12, atol=1e-12)


def test_canonical_forms():
    assert compose() == {"scale": 1 / 255}
    assert compose(1 / 255, 0.5, 0.5) == {"scale": pytest.approx(2 / 255), "mean": [1.0]}  # uniform std folded
    assert compose(1.0, affine=(1 / 255, 0.0)) == {"scale": 1 / 255}  # a plain Rescaling is a plain scale
    assert "std" in compose(1 / 255, std=[0.2, 0.3, 0.4])


def test_refusals():
    with pytest.raises(FormatError, match="input scale must be a positive number"):
        compose(0.0)
    with pytest.raises(FormatError, match="std must be positive"):
        compose(std=[1.0, -1.0, 1.0])
    with pytest.raises(FormatError, match=r"different lengths \[2, 3\]"):
        compose(mean=[0.1, 0.2], std=[1, 1, 2])
    with pytest.raises(FormatError, match="flips the sign"):
        compose(affine=(-1.0, 0.0))
    assert parse_numbers("1/255, 0.5", "x") == [pytest.approx(1 / 255), 0.5]
    with pytest.raises(FormatError, match="'1/0' is not a number"):
        parse_numbers("1/0", "x")
