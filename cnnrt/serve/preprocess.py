"""An uploaded or drawn image -> one model input, the way MNIST's digits were made.

TODO(lead, at merge): replace `_mnist_preprocess` with cnnrt.images' preprocessing (the one that
`cnnrt predict` uses), so the page and `cnnrt predict` share one function. Only `image_to_input`
calls it; its contract: a PIL image in, (H, W, C) uint8 out for the session's input_shape.
"""
from __future__ import annotations

import io

import numpy as np

from .protocol import ApiError

# MNIST: the digit fits a 20x20 box inside the 28x28 image, centred by its centre of mass
BOX_FRACTION = 20 / 28


def _background(a: np.ndarray) -> float:
    """The median of a frame 1/20 of the image wide: the paper's level."""
    m = max(1, min(a.shape) // 20)
    return float(np.median(np.concatenate([a[:m].ravel(), a[-m:].ravel(), a[:, :m].ravel(), a[:, -m:].ravel()])))


def _mnist_preprocess(img, input_shape: tuple[int, int, int]) -> np.ndarray:
    """Grayscale, light ink on dark, cropped to the strokes, fit into 20/28 of the frame keeping the
    aspect ratio, centred by the centre of mass. Returns (H, W, 1) uint8; ValueError if blank."""
    from PIL import Image

    h, w, c = input_shape
    if c != 1:
        raise ValueError(f"image input needs a one-channel model; this one takes {c} channels")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)  # transparent means paper, not ink
    a = np.asarray(img.convert("L"), dtype=np.float32)
    # the background is what the border holds; dark ink on light paper is inverted
    if _background(a) > 127:
        a = 255 - a
    a = np.clip(a - _background(a), 0, None)  # a grey page becomes black
    peak = float(a.max())
    if peak < 16:
        raise ValueError("the image is blank: no strokes found")
    a *= 255.0 / peak
    rows = np.flatnonzero((a > 0.1 * 255).any(axis=1))
    cols = np.flatnonzero((a > 0.1 * 255).any(axis=0))
    a = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    box = max(1, round(min(h, w) * BOX_FRACTION))
    scale = box / max(a.shape)
    size = (max(1, round(a.shape[1] * scale)), max(1, round(a.shape[0] * scale)))  # PIL: (width, height)
    small = np.asarray(Image.fromarray(a, mode="F").resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    small = np.clip(small, 0, 255)
    total = small.sum()
    ys, xs = np.indices(small.shape)
    cy, cx = (ys * small).sum() / total, (xs * small).sum() / total
    top = int(np.clip(round((h - 1) / 2 - cy), 0, h - small.shape[0]))
    left = int(np.clip(round((w - 1) / 2 - cx), 0, w - small.shape[1]))
    out = np.zeros((h, w), dtype=np.float32)
    out[top:top + small.shape[0], left:left + small.shape[1]] = small
    return np.rint(out).astype(np.uint8)[..., None]


def image_to_input(data: bytes, session, max_pixels: int) -> np.ndarray:
    """An image file's bytes (PNG, JPEG, ... anything Pillow reads) -> (1, H, W, C) uint8."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ApiError(400, "the request body is empty; send an image file (PNG, JPEG, ...)")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > max_pixels:
            raise ApiError(413, f"the image is {img.width}x{img.height} pixels; the limit is {max_pixels:,} pixels")
        img.load()
    except ApiError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ApiError(400, f"the request body is not an image Pillow can read: {e}") from None
    try:
        x = _mnist_preprocess(img, session.input_shape)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    return x[None]
