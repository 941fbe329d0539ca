"""Image files -> model input, for `cnnrt predict`.

Reading: PNG, JPEG, PGM/PBM/PPM, BMP (anything Pillow identifies, `cnnrt[images]`) and NumPy
`.npy` arrays (no Pillow needed to read them). A folder means the supported files directly inside
it, sorted by name; subfolders are not entered (pass them too, or let the shell expand a glob).
Every picture becomes float32 intensities 0..255 of shape (H, W, C), C = 1 or 3; transparent
pixels are taken as white (paper).

Preprocessing:
- single-channel 28x28 models get MNIST's own recipe (LeCun et al.), so that a digit drawn black
  on white anywhere on a page looks like an MNIST digit: grayscale, dark-on-light inverted, cropped
  to the digit, scaled to fit 20x20 keeping its aspect ratio (anti-aliased), placed in 28x28 with
  its centre of mass at the centre;
- models trained on Fashion-MNIST (their provenance says so) get that data set's own conversion
  (Xiao et al. 2017): grayscale, negated if the item is dark on a light background, trimmed to
  the item, its longest edge scaled to 28 keeping the aspect ratio, centred on a black 28x28;
- other models get a plain anti-aliased resize to H x W and the channel count converted;
- then the model's normalisation (`normalisation()` is the one place that reads it).

Bad input raises FormatError naming the file (or `file.npy[i]` for one image of an array).
"""
from __future__ import annotations

import math
import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FormatError

# What a folder contributes; a file named on the command line is read whatever its name.
FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".pbm", ".ppm", ".pnm", ".bmp", ".npy")
NPY_MAGIC = b"\x93NUMPY"
PILLOW_HINT = "pip install 'cnnrt[images]'"

MNIST_SIZE = 28  # the field
MNIST_BOX = 20  # the digit is scaled to fit this box
MNIST_CENTRE = 14.0  # MNIST's centres of mass average (13.99, 14.01) in pixel-index coordinates
INK_FLOOR = 0.1  # ink below this fraction of the darkest stroke's contrast is background noise
MAX_PIXELS_ANY_FILE = 1 << 22
PIXELS_PER_BYTE = 4096
MIN_CONTRAST = 25.0  # out of 255: an image with less is blank, and gets an error, not a guess


@dataclass
class Picture:
    """One image as read: where it came from, and float32 intensities 0..255, (H, W, C), C 1 or 3."""

    source: str
    pixels: np.ndarray


# ---------------------------------------------------------------- finding and reading files

def list_files(arg: str | os.PathLike) -> list[Path]:
    """A file as is; a folder as its supported files (sorted, not recursive)."""
    path = Path(arg)
    if path.is_dir():
        try:
            entries = sorted(p for p in path.iterdir()
                             if p.suffix.lower() in FOLDER_SUFFIXES and not p.name.startswith(".") and p.is_file())
        except OSError as e:
            raise FormatError(f"{path}: cannot list the folder ({e.strerror or e})") from None
        if not entries:
            raise FormatError(f"{path}: a folder with no image files (looked for {' '.join(FOLDER_SUFFIXES)}; "
                              f"subfolders are not searched)")
        return entries
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder")
    if not path.is_file():
        raise FormatError(f"{path}: not a regular file (expected an image, a .npy array or a folder)")
    return [path]


def read_pictures(path: str | os.PathLike) -> list[Picture]:
    """One file's pictures: one for an image, one per image for a .npy array of several."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror or e})") from None
    if magic == NPY_MAGIC:
        return _read_npy(path)
    return [Picture(str(path), _read_with_pillow(path))]


def _read_with_pillow(path: Path) -> np.ndarray:
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:
        raise FormatError(f"{path}: reading image files needs Pillow, which is not installed: {PILLOW_HINT}") from None
    try:
        # decoded from the file's bytes in memory: a plugin that trusts a length in a damaged header
        # (GBR's header size, up to 4 GB) then reads what the file holds, where a read of the real
        # file first allocates all of the claimed length
        data = path.read_bytes()
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        with warnings.catch_warnings():
            # an image whose header promises far more pixels than is sane is refused, not allocated
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                _check_claimed_size(im.size, path)
                if im.format == "PNG":
                    _check_png_chunks(path)
                im.load()
                im = ImageOps.exif_transpose(im)  # phone photos: stored sideways with an orientation tag
                if im.mode == "F":  # float pixels (PFM, TIFF): NaN and Inf are no intensity
                    a = np.asarray(im, dtype=np.float32)
                    if not np.isfinite(a).all():
                        raise FormatError(f"{path}: holds NaN or Inf values")
                return _from_pillow(im)
    except FormatError:
        raise
    except UnidentifiedImageError:
        raise FormatError(f"{path}: not an image file (expected PNG, JPEG, PGM/PBM/PPM, BMP or a NumPy .npy array)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise FormatError(f"{path}: image too large ({e})") from None
    except Exception as e:  # noqa: BLE001 - a damaged file can make a decoder raise almost anything
        raise FormatError(f"{path}: damaged or truncated image ({type(e).__name__}: {e})") from None


def _check_claimed_size(size: tuple[int, int], path: Path) -> None:
    """Refuse a header that claims far more pixels than its file could encode, before decoding
    allocates them. No image format we read packs more than ~4,000 pixels per byte (a blank PNG
    gets ~1,000); anything up to 4 megapixels is let through whatever the file's size."""
    pixels = size[0] * size[1]
    if pixels > max(MAX_PIXELS_ANY_FILE, PIXELS_PER_BYTE * path.stat().st_size):
        raise FormatError(f"{path}: damaged image: its header claims {size[0]}x{size[1]} pixels, more than "
                          f"a file of {path.stat().st_size} bytes can hold")


def _check_png_chunks(path: Path) -> None:
    """Refuse a PNG whose chunks claim more bytes than the file holds, before decoding: Pillow skips
    the rest of an image-data chunk with one read of the claimed length (up to 2 GB), whatever the
    file's size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = 8  # the signature
        while pos + 8 <= size:
            f.seek(pos)
            length, kind = struct.unpack(">I4s", f.read(8))
            end = pos + 12 + length  # length, type, data, CRC
            if end > size:
                raise FormatError(f"{path}: damaged or truncated image: its PNG {kind.decode('latin1')!r} chunk at "
                                  f"byte {pos} claims {length} bytes, more than the {max(size - pos - 12, 0)} left "
                                  f"in the file")
            if kind == b"IEND":
                return
            pos = end


def _from_pillow(im) -> np.ndarray:
    """A decoded Pillow image -> (H, W, 1 or 3) float32 0..255."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":  # 16-bit PNG / PGM with maxval > 255
        a = np.asarray(im, dtype=np.float64) / 257.0
        return np.clip(a, 0, 255).astype(np.float32)[..., None]
    if mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0, 255)[..., None]
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        return _over_white(np.asarray(im.convert("RGBA"), dtype=np.float32))
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"), dtype=np.float32)[..., None]
    return np.asarray(im.convert("RGB"), dtype=np.float32)


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite (H, W, 4) RGBA 0..255 over a white page -> (H, W, 3)."""
    alpha = rgba[..., 3:] / 255.0
    return (rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.float32)


def _read_npy(path: Path) -> list[Picture]:
    """(H, W), (H, W, C), (N, H, W) or (N, H, W, C), C in 1, 3, 4; uint8 0..255 or float 0..1."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise FormatError(f"{path}: not a readable .npy array (unknown format version {version[0]}.{version[1]}; "
                                  f"expected 1.0, 2.0 or 3.0)")
            # the header's length, checked against the file before NumPy reads that many bytes at once
            fields = "<H" if version == (1, 0) else "<I"
            raw = f.read(struct.calcsize(fields))
            if len(raw) < struct.calcsize(fields):
                raise FormatError(f"{path}: not a readable .npy array (truncated: it ends inside its header)")
            (hlen,) = struct.unpack(fields, raw)
            left = os.fstat(f.fileno()).st_size - f.tell()
            if hlen > left:
                raise FormatError(f"{path}: not a readable .npy array (damaged or truncated: its header claims "
                                  f"{hlen} bytes, the file holds {left} more)")
            f.seek(len(NPY_MAGIC) + 2)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            else:
                shape, _, dtype = fmt.read_array_header_2_0(f)
            room = os.fstat(f.fileno()).st_size - f.tell()
        need = math.prod(shape) * dtype.itemsize  # Python ints: a huge claimed shape cannot overflow
        if need > room:  # checked before np.load allocates what the header claims
            raise FormatError(f"{path}: truncated: its header promises a {'x'.join(map(str, shape))} {dtype} array "
                              f"({need} bytes) but the file holds {room}")
        if min(shape, default=0) < 0 or math.prod(d for d in shape if d) * dtype.itemsize >= 1 << 62:
            # (NumPy would multiply these in int64, wrapping around, even for an empty array)
            raise FormatError(f"{path}: not a readable .npy array (damaged header: shape {shape} describes no array "
                              f"that could exist)")
        a = np.load(path, allow_pickle=False)
    except FormatError:
        raise
    except Exception as e:  # noqa: BLE001 - NumPy's header parser raises many kinds (ValueError, TokenError, ...)
        raise FormatError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from None
    if a.dtype.kind not in "uifb":
        raise FormatError(f"{path}: holds {a.dtype} values; expected uint8 pixels 0..255 or floats 0..1")
    expected = "(H, W), (H, W, C), (N, H, W) or (N, H, W, C) with C = 1, 3 or 4"
    if a.ndim == 2:
        a = a[None, :, :, None]
    elif a.ndim == 3:
        a = a[None] if a.shape[-1] in (1, 3, 4) else a[..., None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3, 4):
        pass
    else:
        raise FormatError(f"{path}: an array of shape {a.shape}; expected {expected}")
    if a.size == 0:
        raise FormatError(f"{path}: an empty array of shape {a.shape}; expected {expected}")
    a = _npy_intensities(a, path)
    if a.shape[-1] == 4:
        a = _over_white(a)
    if len(a) == 1:
        return [Picture(str(path), a[0])]
    return [Picture(f"{path}[{i}]", img) for i, img in enumerate(a)]


def _npy_intensities(a: np.ndarray, path: Path) -> np.ndarray:
    """uint8 and other integers 0..255 as they are, bool as 0/255, floats 0..1 times 255."""
    if a.dtype.kind == "b":
        return a.astype(np.float32) * 255.0
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise FormatError(f"{path}: holds NaN or Inf values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise FormatError(f"{path}: float pixels must lie in [0, 1], these go from {lo:.4g} to {hi:.4g} "
                              f"(store 0..255 pixels as uint8)")
        return a.astype(np.float32) * 255.0
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi > 255:
        raise FormatError(f"{path}: integer pixels must lie in 0..255, these go from {lo} to {hi}")
    return a.astype(np.float32)


# ---------------------------------------------------------------- channels and resizing

def to_gray(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (H, W) float32, with the ITU-R 601-2 luma weights that Pillow's convert('L') uses."""
    if pixels.shape[-1] == 1:
        return pixels[..., 0]
    return (pixels[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)


def to_channels(pixels: np.ndarray, channels: int, source: str) -> np.ndarray:
    """(H, W, 1 or 3) -> (H, W, channels): grayscale <-> RGB."""
    have = pixels.shape[-1]
    if channels == have:
        return pixels
    if channels == 1:
        return to_gray(pixels)[..., None]
    if channels == 3:
        return np.repeat(pixels[..., :1], 3, axis=-1)
    raise FormatError(f"{source}: the model takes {channels} channels per pixel; image files give 1 (gray) or 3 (RGB)")


def resize(plane: np.ndarray, height: int, width: int, source: str) -> np.ndarray:
    """One (H, W) float plane -> (height, width), anti-aliased (Pillow's bilinear filter widens
    with the reduction factor, so a large drawing is averaged, not sampled)."""
    if plane.shape == (height, width):
        return plane.astype(np.float32, copy=False)
    try:
        from PIL import Image
    except ImportError:
        raise FormatError(f"{source}: resizing an image needs Pillow, which is not installed: {PILLOW_HINT}") from None
    im = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    return np.asarray(im.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def fit(picture: Picture, shape: tuple[int, int, int]) -> np.ndarray:
    """Any model: the picture resized (stretched) to (H, W) with the model's C channels; 0..255 float32."""
    h, w, c = shape
    p = to_channels(picture.pixels, c, picture.source)
    return np.stack([resize(p[..., k], h, w, picture.source) for k in range(c)], axis=-1)


# ---------------------------------------------------------------- MNIST's preprocessing

def mnist_digit(picture: Picture) -> np.ndarray:
    """A digit drawn anywhere, either polarity -> (28, 28) uint8 as MNIST has it (white on black)."""
    g = to_gray(picture.pixels).astype(np.float32)
    h, w = g.shape
    # background: the border's median; the ink is what differs from it the most, in either direction
    ring = max(1, round(0.02 * min(h, w)))
    border = np.concatenate([g[:ring].ravel(), g[-ring:].ravel(), g[:, :ring].ravel(), g[:, -ring:].ravel()])
    bg = float(np.median(border))
    if bg - float(g.min()) > float(g.max()) - bg:  # dark ink on a light page
        ink = bg - g
    else:
        ink = g - bg
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise FormatError(f"{picture.source}: no digit found: the image is blank "
                          f"(its darkest and lightest pixels differ from the background by less than {MIN_CONTRAST:.0f}/255)")
    ink = np.clip(ink / peak, 0.0, 1.0)
    ink[ink < INK_FLOOR] = 0.0
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    ch, cw = crop.shape
    s = MNIST_BOX / max(ch, cw)
    nh, nw = max(1, min(MNIST_BOX, round(ch * s))), max(1, min(MNIST_BOX, round(cw * s)))
    digit = np.clip(resize(crop, nh, nw, picture.source), 0.0, None)
    digit /= max(float(digit.max()), 1e-6)  # a thin stroke made faint by shrinking is brought back to full ink
    # centre of mass to (14, 14), by a whole-pixel shift as MNIST does; the digit is kept whole
    mass = float(digit.sum())
    cy = float(digit.sum(axis=1) @ np.arange(nh)) / mass
    cx = float(digit.sum(axis=0) @ np.arange(nw)) / mass
    top = min(max(round(MNIST_CENTRE - cy), 0), MNIST_SIZE - nh)
    left = min(max(round(MNIST_CENTRE - cx), 0), MNIST_SIZE - nw)
    field = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    field[top:top + nh, left:left + nw] = digit
    return np.clip(np.rint(field * 255.0), 0, 255).astype(np.uint8)


def is_mnist_shaped(shape: tuple[int, int, int]) -> bool:
    return tuple(shape) == (MNIST_SIZE, MNIST_SIZE, 1)


# ---------------------------------------------------------------- Fashion-MNIST's preprocessing

def fashion_item(picture: Picture) -> np.ndarray:
    """A picture of one clothing item -> (28, 28) uint8 as Fashion-MNIST has it (light item on black).

    The data set's own conversion of Zalando's product photos: trim the border close to the
    background, scale the longest edge to 28, centre on the canvas, negate, grayscale. Here the
    background is the border's median, negation happens only when it is light (so an image already
    in the data set's form comes back as it was), and the background is brought to 0."""
    g = to_gray(picture.pixels).astype(np.float32)
    h, w = g.shape
    ring = max(1, round(0.02 * min(h, w)))
    border = np.concatenate([g[:ring].ravel(), g[-ring:].ravel(), g[:, :ring].ravel(), g[:, -ring:].ravel()])
    bg = float(np.median(border))
    item = np.clip(bg - g if bg > 127.5 else g - bg, 0.0, 255.0)  # negated when the background is light
    if float(item.max()) < MIN_CONTRAST:
        raise FormatError(f"{picture.source}: no item found: the image is blank (its pixels differ from the "
                          f"background by less than {MIN_CONTRAST:.0f}/255)")
    # the item: what stands out of the background's own noise (its median absolute deviation on the border)
    noise = float(np.median(np.abs(border - bg)))
    keep = item > max(0.5, 5.0 * noise)
    rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    crop = item[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    ch, cw = crop.shape
    s = MNIST_SIZE / max(ch, cw)
    nh, nw = max(1, min(MNIST_SIZE, round(ch * s))), max(1, min(MNIST_SIZE, round(cw * s)))
    scaled = np.clip(resize(crop, nh, nw, picture.source), 0.0, 255.0)
    field = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    top, left = (MNIST_SIZE - nh + 1) // 2, (MNIST_SIZE - nw + 1) // 2  # an odd pixel before, as the data set has it
    field[top:top + nh, left:left + nw] = scaled
    return np.clip(np.rint(field), 0, 255).astype(np.uint8)


def auto_recipe(session) -> str:
    """The preprocessing a model's images get by default: 'fashion' for a 28x28 one-channel model
    trained on Fashion-MNIST (its provenance's "dataset", as `cnnrt train` records it), 'mnist' for
    other 28x28 one-channel models, 'resize' for the rest."""
    shape = tuple(session.input_shape)
    if not is_mnist_shaped(shape):
        return "resize"
    meta = getattr(getattr(session, "model", None), "meta", None) or {}
    return "fashion" if meta.get("dataset") == "fashion-mnist" else "mnist"


# ---------------------------------------------------------------- the model's normalisation

def normalisation(session) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """(scale, mean, std) the model expects: x = (pixels * scale - mean) / std, per channel.

    The one place that reads a model's preprocessing. Today that is `session.input_scale`; a
    session (or its bundle) that carries `preprocess = {scale, mean, std}` is used as such.
    """
    pre = getattr(session, "preprocess", None)
    if isinstance(pre, dict) and (pre.get("mean") is not None or pre.get("std") is not None):
        c = session.input_shape[-1]
        mean = np.broadcast_to(np.asarray(pre.get("mean", 0.0), dtype=np.float32), (c,))
        std = np.broadcast_to(np.asarray(pre.get("std", 1.0), dtype=np.float32), (c,))
        return float(pre.get("scale", session.input_scale)), mean, std
    return float(session.input_scale), None, None


def model_input(pixels: np.ndarray, session) -> np.ndarray:
    """(N, H, W, C) pixels 0..255 -> what `session.probabilities` takes.

    uint8 goes in as is: the session scales and normalises it on its own device, exactly as
    `cnnrt eval` does (on the host that was most of a Ray actor's time for 224x224 images, and
    it moves a quarter of the bytes to a GPU); otherwise float32 already normalised.
    """
    scale, mean, std = normalisation(session)
    if pixels.dtype == np.uint8 and scale == float(session.input_scale):
        return pixels
    x = pixels.astype(np.float32) * np.float32(scale)
    if mean is not None:
        x = (x - mean) / std
    return x.astype(np.float32, copy=False)


def preprocess(picture: Picture, shape: tuple[int, int, int], recipe: str) -> np.ndarray:
    """One picture -> (H, W, C) pixels. recipe 'mnist': `mnist_digit`, uint8; 'fashion': `fashion_item`,
    uint8; 'resize': `fit`, float32 0..255."""
    if recipe in ("mnist", "fashion"):
        if not is_mnist_shaped(shape):
            raise FormatError(f"{'MNIST' if recipe == 'mnist' else 'Fashion-MNIST'} preprocessing needs a 28x28 "
                              f"single-channel model, this one takes {tuple(shape)}")
        return (mnist_digit(picture) if recipe == "mnist" else fashion_item(picture))[..., None]
    return fit(picture, shape)
