import gzip
import hashlib
import struct
import tracemalloc

import numpy as np
import pytest

from cnnrt.errors import FormatError
from cnnrt.idx import load_mnist, read_idx, write_idx

from conftest import MNIST


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", "<i4", "f4", "f8"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_roundtrip(tmp_path, rng, dtype, suffix):
    a = (rng.standard_normal((3, 5, 7)) * 100).astype(dtype)
    p = tmp_path / f"a.idx{suffix}"
    write_idx(p, a)
    b = read_idx(p)
    assert b.shape == a.shape and b.dtype == a.dtype.newbyteorder("=")
    np.testing.assert_array_equal(a, b)


def test_header_is_big_endian_as_specified(tmp_path):
    write_idx(tmp_path / "x", np.arange(6, dtype=np.uint8).reshape(2, 3))
    raw = (tmp_path / "x").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x02" and struct.unpack(">II", raw[4:12]) == (2, 3)
    assert raw[12:] == bytes(range(6))


def test_real_mnist_matches_its_readme(mnist_test):
    x, y = mnist_test
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    raw = gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
    np.testing.assert_array_equal(np.frombuffer(raw[16:], np.uint8).reshape(x.shape), x)


def test_wrong_magic(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 12)
    with pytest.raises(FormatError, match="magic number 0x12340801"):
        read_idx(p)


def test_unknown_type_code(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(FormatError, match="not an IDX file"):
        read_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated(tmp_path, gz):
    p = tmp_path / ("t.gz" if gz else "t")
    body = struct.pack(">HBBIII", 0, 8, 3, 10, 28, 28) + bytes(28 * 28 * 9)
    p.write_bytes(gzip.compress(body) if gz else body)
    with pytest.raises(FormatError, match=r"truncated: a 10x28x28 uint8 array needs 7840 bytes but the file holds only 7056"):
        read_idx(p)


def test_truncated_header(tmp_path):
    p = tmp_path / "t"
    p.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(FormatError, match="3 dimension sizes"):
        read_idx(p)


def test_trailing_bytes(tmp_path):
    p = tmp_path / "t"
    p.write_bytes(struct.pack(">HBBI", 0, 8, 1, 2) + b"\x01\x02\x03")
    with pytest.raises(FormatError, match="trailing data"):
        read_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_huge_header_in_small_file_does_not_allocate(tmp_path, gz):
    p = tmp_path / ("h.gz" if gz else "h")
    body = struct.pack(">HBBIII", 0, 8, 3, 2**31, 28, 28) + bytes(1000)
    p.write_bytes(gzip.compress(body) if gz else body)
    tracemalloc.start()
    with pytest.raises(FormatError, match="truncated"):
        read_idx(p)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 * 2**20, f"reading a 1 KB file allocated {peak / 2**20:.0f} MiB"


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        read_idx(tmp_path / "nope")


def test_count_mismatch(tmp_path):
    write_idx(tmp_path / "x", np.zeros((5, 28, 28), np.uint8))
    write_idx(tmp_path / "y", np.zeros((4,), np.uint8))
    with pytest.raises(FormatError, match="holds 5 images but .* holds 4 labels"):
        load_mnist(tmp_path / "x", tmp_path / "y")


def test_images_not_3d(tmp_path):
    write_idx(tmp_path / "x", np.zeros((5, 784), np.uint8))
    write_idx(tmp_path / "y", np.zeros((5,), np.uint8))
    with pytest.raises(FormatError, match=r"expected uint8 images of shape \(N, rows, cols\)"):
        load_mnist(tmp_path / "x", tmp_path / "y")
