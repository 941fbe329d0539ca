"""Parquet image cells: raw pixel bytes that begin like an image file's signature ("BM" is two
pixels of 66 and 77, "P5" 80 and 53) are raw pixels, not a damaged image (CI's Ray test drew such
a row among random images and refused it); a real encoded image is still decoded, and bytes that
are neither are still refused, naming the row."""
import io

import numpy as np
import pytest

from cnnrt.errors import FormatError
from cnnrt.shards import Source, _decode_bytes


@pytest.mark.parametrize("head", [b"BM", b"P5", b"P2", b"\xff\xd8\xff", b"\x89PNG"])
def test_raw_pixels_that_start_like_a_signature(rng, head, tmp_path):
    src = Source("parquet", str(tmp_path), (28, 28, 1))
    v = bytearray(rng.integers(0, 256, 784, dtype=np.uint8).tobytes())
    v[:len(head)] = head
    got = _decode_bytes([bytes(v)], tmp_path / "x.parquet", 0, src)
    np.testing.assert_array_equal(got.reshape(-1), np.frombuffer(bytes(v), np.uint8))


def test_encoded_images_still_decode_and_junk_is_refused(rng, tmp_path):
    from PIL import Image

    src = Source("parquet", str(tmp_path), (28, 28, 1))
    px = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    b = io.BytesIO()
    Image.fromarray(px).save(b, format="PNG")
    got = _decode_bytes([b.getvalue()], tmp_path / "x.parquet", 0, src)
    assert got.shape == (1, 28, 28, 1)
    with pytest.raises(FormatError, match=r"x.parquet\[row 5\]"):
        _decode_bytes([b"BM" + bytes(100)], tmp_path / "x.parquet", 5, src)
