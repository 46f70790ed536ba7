"""Reading image files as 8-bit RGB, shared by every task's data loading and inference.

PIL's ``convert("RGB")`` clips wider integer modes instead of scaling them: a 16-bit grayscale
PNG (mode ``I;16``, values 0..65535) becomes almost all white. :func:`to_rgb` scales 16-bit
data to 8 bits first.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB; 16-bit modes are scaled (65535 -> 255), not clipped.

    Mode ``I`` (32-bit integers, how some PIL versions open 16-bit PNGs) is read as 16-bit data
    when its values exceed 255, and as 8-bit data otherwise.
    """
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if image.mode in _SIXTEEN_BIT_MODES or values.max(initial=0) > 255:
            values = values / 257.0  # 65535 / 257 = 255: maps the 16-bit range onto the 8-bit one
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """The image file at ``path`` as a loaded 8-bit RGB PIL image (see :func:`to_rgb`)."""
    with Image.open(path) as image:
        image.load()  # the pixels must be read before the file closes (an RGB image is returned as is)
        return to_rgb(image)
