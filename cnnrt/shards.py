"""Inputs of `cnnrt batch`, cut into deterministic shards that can be read anywhere.

A source (an IDX file, a folder of NumPy `.npy` arrays, Parquet files, or a folder of image files)
is listed once, in sorted order; every image gets a global id (its position in that order) and
the ids are cut into shards of at most `shard_size` rows that never straddle two files. The plan
depends only on the files and the shard size, so a rerun finds the same shards under the same
names: that is what makes a batch run resumable.

`read_spec(spec, source)` turns one shard's description back into pixels. It needs only the
files, NumPy and (for Parquet / image files) pyarrow or Pillow, so it runs in Ray tasks on any
node that sees SRC at the same path.

Pixels, as `cnnrt.images` has them: arrays and Parquet tensors are taken as they are when they
have the model's shape (uint8 0..255; floats 0..1 are scaled to 0..255); image files go through
`cnnrt.images` (read, then the MNIST recipe or a plain resize) exactly as `cnnrt predict` does.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import FormatError

FORMATS = ("idx", "npy", "parquet", "images")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".pbm", ".ppm", ".pnm", ".bmp")
PARQUET_SUFFIXES = (".parquet", ".pq")
IDX_SUFFIXES = ("-ubyte", "-ubyte.gz", ".idx", ".idx.gz")
_IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass
class Source:
    """What every reader needs to know about the input, small enough to ship to each Ray task."""

    format: str
    root: str  # SRC as given (a file or a folder)
    shape: tuple  # the model's input (H, W, C)
    column: str = "image"  # Parquet: the image column
    recipe: str = "mnist"  # image files: 'mnist' or 'resize' (see cnnrt.images)
    files: list = field(default_factory=list)  # paths relative to root ('' when root is the file)
    rows: list = field(default_factory=list)  # rows per file
    dtype: str = "uint8"  # of every shard's pixels: uint8 where all the input is, else float32 0..255

    @property
    def total(self) -> int:
        return int(sum(self.rows))

    def path(self, i: int) -> Path:
        rel = self.files[i]
        return Path(self.root) / rel if rel else Path(self.root)

    def name(self, i: int) -> str:
        """How output rows name their file: relative to SRC, or SRC's own name for a single file."""
        return self.files[i] or Path(self.root).name

    def digest(self) -> str:
        """Names, sizes and modification times of every input file: a resumed run checks that SRC
        is the one the output was started from."""
        h = hashlib.sha256()
        h.update(json.dumps([self.format, self.column, self.recipe, list(self.shape)]).encode())
        for i, rel in enumerate(self.files):
            st = self.path(i).stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{self.rows[i]}\n".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of one file; global ids first_id .. first_id + (stop - start) - 1."""

    index: int
    file: int
    start: int
    stop: int
    first_id: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def name(self) -> str:
        return f"part-{self.index:06d}.parquet"


def shard_spec(shard: Shard, source: Source) -> str:
    """What a read task needs of one shard, as text. Image-file shards carry their own file names,
    so that the Source shipped to every task need not list a million files."""
    files = source.files[shard.file:shard.file + shard.rows] if source.format == "images" else None
    return json.dumps({"shard": [shard.index, shard.file, shard.start, shard.stop, shard.first_id], "files": files})


def read_spec(spec: str, source: Source) -> tuple[Shard, np.ndarray]:
    """The shard a spec names and its pixels (see read_shard)."""
    d = json.loads(spec)
    shard = Shard(*d["shard"])
    if d["files"] is not None:  # image files: a source of just this shard's files
        local = replace(source, files=list(d["files"]), rows=[1] * len(d["files"]))
        return shard, read_shard(Shard(shard.index, 0, 0, len(d["files"]), shard.first_id), local)
    return shard, read_shard(shard, source)


# ---------------------------------------------------------------- finding the input

def detect_format(src: Path) -> str:
    """idx, npy, parquet or images, from SRC's name or its folder's contents."""
    if not src.exists():
        raise FormatError(f"{src}: no such file or folder")
    if src.is_file():
        name = src.name.lower()
        if name.endswith(".npy"):
            return "npy"
        if name.endswith(PARQUET_SUFFIXES):
            return "parquet"
        if name.endswith(IDX_SUFFIXES) or name.endswith(".gz"):
            return "idx"
        if name.endswith(IMAGE_SUFFIXES):
            return "images"
        raise FormatError(f"{src}: cannot tell the format from the name (expected an IDX file, a .npy array, "
                          f"a .parquet file or a folder); pass --format")
    kinds = set()
    for p in _walk(src):
        n = p.name.lower()
        if n.endswith(".npy"):
            kinds.add("npy")
        elif n.endswith(PARQUET_SUFFIXES):
            kinds.add("parquet")
        elif n.endswith(IMAGE_SUFFIXES):
            kinds.add("images")
    if not kinds:
        raise FormatError(f"{src}: a folder with no input files (looked for .npy, .parquet and image files "
                          f"{' '.join(IMAGE_SUFFIXES)}, in subfolders too)")
    if len(kinds) > 1:
        raise FormatError(f"{src}: the folder mixes {', '.join(sorted(kinds))} files; pass --format to pick one")
    return kinds.pop()


def _walk(root: Path) -> list[Path]:
    """Every regular, non-hidden file under root, sorted by relative path (deterministic)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _files(src: Path, suffixes: tuple) -> list[str]:
    if src.is_file():
        return [""]
    found = [p.relative_to(src).as_posix() for p in _walk(src) if p.name.lower().endswith(suffixes)]
    if not found:
        raise FormatError(f"{src}: no {' '.join(suffixes)} files in the folder")
    return found


def plan(src: str | os.PathLike, fmt: str, shape: tuple, shard_size: int, column: str = "image",
         recipe: str = "mnist") -> tuple[Source, list[Shard]]:
    """List SRC (checking every file's header against the model's input) and cut it into shards."""
    if shard_size < 1:
        raise FormatError(f"--shard-size must be at least 1, got {shard_size}")
    srcp = Path(src)
    if not srcp.exists():
        raise FormatError(f"{srcp}: no such file or folder")
    if fmt == "auto":
        fmt = detect_format(srcp)
    if fmt not in FORMATS:
        raise FormatError(f"unknown input format {fmt!r} (expected auto or one of {', '.join(FORMATS)})")
    source = Source(fmt, str(srcp), tuple(int(d) for d in shape), column, recipe)
    # Ray Data concatenates blocks, so every shard's pixels must have one dtype: uint8 where the whole
    # input is integers (or image files under the MNIST recipe, which gives uint8), else float32
    if fmt == "idx":
        if not srcp.is_file():
            raise FormatError(f"{srcp}: --format idx needs one IDX file, not a folder")
        source.files = [""]
        source.rows = [_idx_rows(srcp, source.shape)]
        kinds = {"u"}
    elif fmt == "npy":
        source.files = _files(srcp, (".npy",))
        found = [_npy_rows(source.path(i), source.shape) for i in range(len(source.files))]
        source.rows, kinds = [n for n, _ in found], {k for _, k in found}
    elif fmt == "parquet":
        source.files = _files(srcp, PARQUET_SUFFIXES)
        found = [_parquet_rows(source.path(i), column) for i in range(len(source.files))]
        source.rows = [n for n, _ in found]
        kinds = {("u" if recipe == "mnist" else "f") if k == "b" else k for _, k in found}
    else:
        source.files = _files(srcp, IMAGE_SUFFIXES)
        source.rows = [1] * len(source.files)
        kinds = {"u" if recipe == "mnist" else "f"}
    source.dtype = "uint8" if kinds <= {"u", "i"} else "float32"
    shards: list[Shard] = []
    if fmt == "images":  # one row per file: shards are runs of files
        for k, a in enumerate(range(0, len(source.files), shard_size)):
            b = min(a + shard_size, len(source.files))
            shards.append(Shard(k, a, 0, b - a, a))
        return source, shards
    first = 0
    for i, n in enumerate(source.rows):
        for a in range(0, n, shard_size):
            shards.append(Shard(len(shards), i, a, min(a + shard_size, n), first + a))
        first += n
    if not shards:
        raise FormatError(f"{srcp}: holds no images")
    return source, shards


# ---------------------------------------------------------------- headers

def _check_shape(path, per_image: tuple, shape: tuple) -> None:
    h, w, c = shape
    if tuple(per_image) not in ((h, w, c),) + (((h, w),) if c == 1 else ()):
        want = f"(N, {h}, {w})" + (f" or (N, {h}, {w}, 1)" if c == 1 else f" (N, {h}, {w}, {c})")
        raise FormatError(f"{path}: images of shape {tuple(per_image)}, but the model takes {want} "
                          f"(arrays are not resized; image files are)")


def _idx_header(path: Path) -> tuple[int, np.dtype, tuple, bool]:
    """(header bytes, dtype, dims, gzipped) read from the first bytes only."""
    import gzip

    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4:
                raise FormatError(f"{path}: not an IDX file: shorter than its 4-byte magic number")
            zero, code, ndim = struct.unpack(">HBB", head)
            if zero != 0 or code not in _IDX_TYPES or ndim == 0:
                raise FormatError(f"{path}: not an IDX file: magic number 0x{head.hex()}")
            raw = f.read(4 * ndim)
    except (EOFError, OSError) as e:
        raise FormatError(f"{path}: corrupt compressed data ({e})") from None
    if len(raw) < 4 * ndim:
        raise FormatError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw)
    return 4 + 4 * ndim, _IDX_TYPES[code], dims, gz


def _idx_rows(path: Path, shape: tuple) -> int:
    head, dtype, dims, gz = _idx_header(path)
    if dtype != np.dtype(">u1"):
        raise FormatError(f"{path}: IDX of {dtype.name} values; cnnrt batch reads uint8 images")
    _check_shape(path, dims[1:], shape)
    if not gz:
        need = head + math.prod(dims)
        have = path.stat().st_size
        if have != need:
            raise FormatError(f"{path}: the header promises {math.prod(dims)} data bytes "
                              f"({'x'.join(map(str, dims))}) but the file holds {have - head}")
    return int(dims[0])


def _npy_header(path: Path) -> tuple[tuple, np.dtype, bool, int]:
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
            room = os.fstat(f.fileno()).st_size - offset
    except Exception as e:  # noqa: BLE001 - NumPy's header parser raises many kinds
        raise FormatError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise FormatError(f"{path}: holds Python objects; expected uint8 pixels or floats 0..1")
    if math.prod(shape) * dtype.itemsize > room:
        raise FormatError(f"{path}: truncated: the header promises a {'x'.join(map(str, shape))} {dtype} array "
                          f"but the file holds {room} bytes")
    return shape, dtype, fortran, offset


def _npy_rows(path: Path, shape: tuple) -> tuple[int, str]:
    """(images, dtype kind: u, i or f)."""
    dims, dtype, _, _ = _npy_header(path)
    if dtype.kind not in "uif" or len(dims) < 3:
        raise FormatError(f"{path}: a {dtype} array of shape {dims}; expected a stack of images (N, H, W[, C]), "
                          f"uint8 0..255 or floats 0..1")
    _check_shape(path, dims[1:], shape)
    return int(dims[0]), dtype.kind


def _parquet_rows(path: Path, column: str) -> tuple[int, str]:
    """(rows, what the column holds: b bytes, u/i integers, f floats)."""
    import pyarrow as pa

    pq = _pyarrow_parquet(path)
    try:
        meta = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise FormatError(f"{path}: not a readable Parquet file ({e})") from None
    names = meta.schema_arrow.names
    if column not in names:
        raise FormatError(f"{path}: no column {column!r} (it has {', '.join(names)}); pass --column")
    t = meta.schema_arrow.field(column).type
    if isinstance(t, pa.ExtensionType):
        t = t.storage_type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return int(meta.metadata.num_rows), "b"
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return int(meta.metadata.num_rows), "i"
    if pa.types.is_floating(t):
        return int(meta.metadata.num_rows), "f"
    raise FormatError(f"{path}: column {column!r} holds {meta.schema_arrow.field(column).type}; expected image "
                      f"bytes or lists of numbers")


def _pyarrow_parquet(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise FormatError(f"{path}: reading Parquet needs pyarrow: pip install 'cnnrt[ray]'") from None
    return pq


# ---------------------------------------------------------------- reading one shard

def read_shard(shard: Shard, source: Source) -> np.ndarray:
    """The shard's pixels, (n, H, W, C): uint8 where the input is uint8, else float32 0..255."""
    path = source.path(shard.file)
    try:
        if source.format == "idx":
            x = _read_idx_rows(path, shard.start, shard.stop)
        elif source.format == "npy":
            x = _read_npy_rows(path, shard.start, shard.stop)
        elif source.format == "parquet":
            x = _read_parquet_rows(path, shard.start, shard.stop, source)
        else:
            x = _read_image_files(source, shard)
    except OSError as e:  # on a cluster: SRC is not where the command saw it
        import socket

        raise FormatError(f"{e.filename or path}: cannot be read on node {socket.gethostname()} ({e.strerror or e}); "
                          f"every node must see SRC at the same path") from None
    h, w, c = source.shape
    return np.ascontiguousarray(x.reshape(len(x), h, w, c), dtype=source.dtype)


def _float_pixels(x: np.ndarray, path) -> np.ndarray:
    """Integers 0..255 as they are, floats 0..1 times 255 (the convention of cnnrt.images)."""
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise FormatError(f"{path}: holds NaN or Inf values")
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise FormatError(f"{path}: float pixels must lie in [0, 1], these go from {x.min():.4g} to {x.max():.4g}")
        return x.astype(np.float32) * np.float32(255.0)
    if x.size and (x.min() < 0 or x.max() > 255):
        raise FormatError(f"{path}: integer pixels must lie in 0..255, these go from {x.min()} to {x.max()}")
    return x.astype(np.uint8)


def _read_idx_rows(path: Path, start: int, stop: int) -> np.ndarray:
    head, _, dims, gz = _idx_header(path)
    per = math.prod(dims[1:])
    if gz:  # a gzip stream cannot be entered in the middle: read it whole (use raw IDX or .npy when big)
        from .idx import read_idx

        return np.asarray(read_idx(path)[start:stop])
    with open(path, "rb") as f:
        f.seek(head + start * per)
        data = f.read((stop - start) * per)
    if len(data) != (stop - start) * per:
        raise FormatError(f"{path}: truncated: rows {start}..{stop} run past the end of the file")
    return np.frombuffer(data, dtype=np.uint8).reshape(stop - start, *dims[1:])


def _read_npy_rows(path: Path, start: int, stop: int) -> np.ndarray:
    shape, dtype, fortran, offset = _npy_header(path)
    if fortran:  # rare; rows are not contiguous, so read the array through NumPy
        x = np.array(np.load(path, mmap_mode="r", allow_pickle=False)[start:stop])
        return x if x.dtype == np.uint8 else _float_pixels(x, path)
    per = math.prod(shape[1:])
    with open(path, "rb") as f:
        f.seek(offset + start * per * dtype.itemsize)
        data = f.read((stop - start) * per * dtype.itemsize)
    if len(data) != (stop - start) * per * dtype.itemsize:
        raise FormatError(f"{path}: truncated: rows {start}..{stop} run past the end of the file")
    x = np.frombuffer(data, dtype=dtype).reshape(stop - start, *shape[1:])
    return x if x.dtype == np.uint8 else _float_pixels(x, path)


def _read_parquet_rows(path: Path, start: int, stop: int, source: Source) -> np.ndarray:
    """Rows [start, stop) of the image column: encoded image bytes, raw pixel bytes, or (nested,
    fixed-size) lists of numbers, H*W*C values per row."""
    import pyarrow as pa

    pq = _pyarrow_parquet(path)
    f = pq.ParquetFile(path)
    groups, first, at = [], None, 0
    for g in range(f.metadata.num_row_groups):
        n = f.metadata.row_group(g).num_rows
        if at + n > start and at < stop:
            groups.append(g)
            first = at if first is None else first
        at += n
    table = f.read_row_groups(groups, columns=[source.column]) if groups else None
    if table is None or first is None:
        raise FormatError(f"{path}: rows {start}..{stop} are not in the file")
    col = table.column(source.column).slice(start - first, stop - start).combine_chunks()
    h, w, c = source.shape
    if isinstance(col.type, pa.ExtensionType):  # e.g. Ray Data's tensor columns
        col = col.storage
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        return _decode_bytes(col.to_pylist(), path, start, source)
    values = col
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise FormatError(f"{path}: column {source.column!r} holds {col.type}; expected image bytes or lists of "
                          f"{h * w * c} numbers per row")
    if values.null_count:
        raise FormatError(f"{path}: column {source.column!r} has missing values")
    flat = values.to_numpy(zero_copy_only=False)
    if flat.size != (stop - start) * h * w * c:
        raise FormatError(f"{path}: column {source.column!r} does not hold {h * w * c} values ({h}x{w}x{c}) per row "
                          f"in rows {start}..{stop}")
    x = flat.reshape(stop - start, h, w, c)
    return x if x.dtype == np.uint8 else _float_pixels(x, path)


_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"BM", b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")


def _decode_bytes(values: list, path: Path, start: int, source: Source) -> np.ndarray:
    """Each value an encoded image file (PNG, JPEG, BMP, PNM: told by its signature) or raw pixels
    (exactly H*W*C bytes, uint8, row-major)."""
    import io

    h, w, c = source.shape
    out = []
    for k, v in enumerate(values):
        where = f"{path}[row {start + k}]"
        if v is None:
            raise FormatError(f"{where}: missing image")
        if v.startswith(_SIGNATURES):
            try:
                out.append(_preprocess_file(io.BytesIO(v), where, source))
                continue
            except FormatError:
                if len(v) != h * w * c:
                    raise
                # raw pixels whose first two happen to read as a signature ("BM", "P5": 66 77, 80 53)
        if len(v) == h * w * c:
            out.append(np.frombuffer(v, dtype=np.uint8).reshape(h, w, c))
        else:
            raise FormatError(f"{where}: {len(v)} bytes that are neither an image file (PNG, JPEG, BMP, PNM) nor "
                              f"{h * w * c} raw pixels ({h}x{w}x{c} uint8)")
    return _stack(out)


def _read_image_files(source: Source, shard: Shard) -> np.ndarray:
    return _stack([_preprocess_file(source.path(i), str(source.path(i)), source)
                   for i in range(shard.file, shard.file + shard.stop)])


def _preprocess_file(f, where: str, source: Source) -> np.ndarray:
    """One encoded image -> (H, W, C) pixels, by cnnrt.images (the same recipe as `cnnrt predict`)."""
    from . import images

    pictures = images.read_pictures(f) if not hasattr(f, "read") else [_picture_from_bytes(f, where)]
    if len(pictures) != 1:
        raise FormatError(f"{where}: holds {len(pictures)} images; an image file in a batch input holds one")
    return images.preprocess(pictures[0], source.shape, source.recipe)


def _picture_from_bytes(f, where: str):
    """An encoded image held in memory (a Parquet cell), read as cnnrt.images reads a file."""
    import tempfile

    from . import images

    # cnnrt.images reads paths (it checks the claimed size against the file's); keep to its checks
    with tempfile.NamedTemporaryFile(suffix=".img") as t:
        t.write(f.getvalue())
        t.flush()
        try:
            (pic,) = images.read_pictures(t.name)
        except FormatError as e:
            raise FormatError(str(e).replace(t.name, where)) from None
    return images.Picture(where, pic.pixels)


def _stack(arrays: list) -> np.ndarray:
    if all(a.dtype == np.uint8 for a in arrays):
        return np.stack(arrays)
    return np.stack([a.astype(np.float32) for a in arrays])
