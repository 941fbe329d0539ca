"""The reference ops against direct loop implementations written here from the definitions."""
import numpy as np
import pytest

from cnnrt.backends import reference


def conv_loops(x, w, b, stride, padding):
    n, h, wd, c = x.shape
    o, kh, kw, _ = w.shape
    if padding == "same":
        ho, wo = -(-h // stride), -(-wd // stride)
        ph = max((ho - 1) * stride + kh - h, 0) // 2
        pw = max((wo - 1) * stride + kw - wd, 0) // 2
    else:
        ho, wo, ph, pw = (h - kh) // stride + 1, (wd - kw) // stride + 1, 0, 0
    out = np.zeros((n, ho, wo, o))
    for y in range(ho):
        for xx in range(wo):
            for i in range(kh):
                for j in range(kw):
                    r, s = y * stride + i - ph, xx * stride + j - pw
                    if 0 <= r < h and 0 <= s < wd:
                        out[:, y, xx, :] += x[:, r, s, :] @ w[:, i, j, :].T
    return out + b


def pool_loops(x, k, stride, padding):
    n, h, wd, c = x.shape
    if padding == "same":
        ho, wo = -(-h // stride), -(-wd // stride)
        ph = max((ho - 1) * stride + k - h, 0) // 2
        pw = max((wo - 1) * stride + k - wd, 0) // 2
    else:
        ho, wo, ph, pw = (h - k) // stride + 1, (wd - k) // stride + 1, 0, 0
    out = np.empty((n, ho, wo, c))
    for y in range(ho):
        for xx in range(wo):
            r0, s0 = max(y * stride - ph, 0), max(xx * stride - pw, 0)
            r1, s1 = min(y * stride - ph + k, h), min(xx * stride - pw + k, wd)
            out[:, y, xx, :] = x[:, r0:r1, s0:s1, :].max(axis=(1, 2))
    return out


@pytest.mark.parametrize("shape,k,stride,padding", [
    ((2, 9, 7, 3), 5, 1, "same"), ((1, 8, 8, 1), 3, 2, "same"), ((3, 7, 6, 2), 3, 2, "valid"),
    ((1, 5, 5, 4), 5, 1, "valid"), ((2, 6, 5, 2), 4, 3, "same"),
])
def test_conv2d(rng, shape, k, stride, padding):
    x = rng.standard_normal(shape)
    w = rng.standard_normal((4, k, k, shape[3]))
    b = rng.standard_normal(4)
    np.testing.assert_allclose(reference.conv2d(x, w, b, stride, padding), conv_loops(x, w, b, stride, padding),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,k,stride,padding", [
    ((2, 28, 28, 3), 2, 2, "same"), ((1, 7, 7, 2), 2, 2, "same"), ((2, 7, 5, 1), 3, 2, "same"),
    ((1, 7, 7, 2), 2, 2, "valid"),
])
def test_maxpool_over_valid_pixels_only(rng, shape, k, stride, padding):
    x = rng.standard_normal(shape) - 5.0  # all negative: zero padding would win, clamp/valid must not
    np.testing.assert_array_equal(reference.maxpool2d(x, k, stride, padding), pool_loops(x, k, stride, padding))


def test_softmax_is_stable_and_normalised(rng):
    z = rng.standard_normal((5, 10)) * 1000
    p = reference.softmax(z)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(p.argmax(1), z.argmax(1))
