"""IDX files (the MNIST format), raw or gzip-compressed.

The reader trusts nothing in the header: it checks the magic number and the element type, and
reads in chunks so that a header promising 2**31 images in a 1 KB file fails fast without
allocating what the header claims.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import FormatError

# type code -> big-endian dtype, as in the IDX specification
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}
_CHUNK = 1 << 20
_MAX_BYTES = 1 << 62
# what a damaged gzip stream raises: BadGzipFile (an OSError), EOFError, or zlib's own error
_GZIP_ERRORS = (EOFError, OSError, zlib.error)


def _open(path: Path):
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _read_exact(f, n: int, path: Path, what: str) -> bytes:
    """Read exactly n bytes in bounded chunks; fail with a clear message if the file is short."""
    chunks, got = [], 0
    while got < n:
        try:
            block = f.read(min(_CHUNK, n - got))
        except _GZIP_ERRORS as e:  # truncated or corrupt gzip stream
            raise FormatError(f"{path}: corrupt or truncated compressed data while reading {what}: {e}") from None
        if not block:
            raise FormatError(
                f"{path}: truncated: {what} needs {n} bytes but the file holds only {got}"
            )
        chunks.append(block)
        got += len(block)
    return b"".join(chunks)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file into a native-endian array of the shape its header gives."""
    path = Path(path)
    try:
        if path.is_dir():
            raise FormatError(f"{path}: is a directory (expected an IDX file)")
        f = _open(path)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        head = _read_exact(f, 4, path, "the 4-byte IDX magic number")
        zero, code, ndim = struct.unpack(">HBB", head)
        if zero != 0 or code not in _DTYPES or ndim == 0:
            raise FormatError(
                f"{path}: not an IDX file: magic number 0x{head.hex()} (expected 0x0000TTNN with a known "
                f"type TT in {sorted(hex(c) for c in _DTYPES)} and NN >= 1 dimensions)"
            )
        dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path, f"{ndim} dimension sizes"))
        dtype = _DTYPES[code]
        nbytes = math.prod(dims) * dtype.itemsize  # Python ints: 4 dimensions of 2**32-1 cannot wrap around
        if math.prod(d for d in dims if d) * dtype.itemsize >= _MAX_BYTES:  # NumPy refuses such a shape even empty
            raise FormatError(f"{path}: not a plausible IDX header: dimensions {'x'.join(map(str, dims))} describe an "
                              f"array of more than 2**62 bytes")
        data = _read_exact(f, nbytes, path, f"a {'x'.join(map(str, dims))} {dtype.name} array")
        try:
            extra = f.read(1)
        except _GZIP_ERRORS as e:
            raise FormatError(f"{path}: corrupt compressed data after the array: {e}") from None
        if extra:
            raise FormatError(f"{path}: trailing data: the header promises {nbytes} data bytes but the file holds more")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as IDX; gzip-compressed if the name ends in .gz."""
    path = Path(path)
    a = np.asarray(array)
    native = a.dtype.newbyteorder("=")
    if native not in _CODES:
        raise FormatError(f"{path}: IDX cannot hold dtype {a.dtype} (supported: u1 i1 i2 i4 f4 f8)")
    if a.ndim == 0 or a.ndim > 255:
        raise FormatError(f"{path}: IDX needs 1 to 255 dimensions, got {a.ndim}")
    head = struct.pack(">HBB", 0, _CODES[native], a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    body = np.ascontiguousarray(a, dtype=native.newbyteorder(">")).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(head + body)


def load_mnist(images: str | os.PathLike, labels: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, rows, cols) or (N, rows, cols, channels) uint8 and labels (N,) of an integer
    type, checked against each other. Whether the labels fit a model is `check_labels`' job."""
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim not in (3, 4) or x.dtype != np.uint8:
        raise FormatError(f"{images}: expected uint8 images of shape (N, rows, cols) or (N, rows, cols, channels), "
                          f"got {x.dtype} {x.shape}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise FormatError(f"{labels}: expected integer labels of shape (N,), got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise FormatError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels")
    return x, y


def check_labels(y: np.ndarray, num_classes: int, path) -> None:
    """Every label is a class of the model (0 .. num_classes - 1): a label outside would only
    ever count as wrong, an accuracy that says nothing."""
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = int(y.max()) if int(y.max()) >= num_classes else int(y.min())
        raise FormatError(f"{path}: label {bad} is outside the model's {num_classes} classes "
                          f"(0..{num_classes - 1}; the labels run from {int(y.min())} to {int(y.max())})")
