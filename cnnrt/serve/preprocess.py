"""An uploaded or drawn image -> one model input, by the same function `cnnrt predict` uses
(cnnrt.images: Fashion-MNIST's recipe for models trained on it, MNIST's for other 28x28
one-channel models, a resize for the others), so the page and the command line see the same pixels."""
from __future__ import annotations

import io

import numpy as np

from .protocol import ApiError


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
    from ..errors import CnnrtError
    from ..images import Picture, _from_pillow, auto_recipe, preprocess

    shape = tuple(session.input_shape)
    try:
        x = preprocess(Picture("the uploaded image", _from_pillow(img)), shape, auto_recipe(session))
    except (CnnrtError, ValueError) as e:
        raise ApiError(400, str(e)) from None
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)[None]
