"""Frames and images between the pipelines and the rest: fitting an input image to the
generated size, and float frames to uint8."""

from __future__ import annotations

import numpy as np
from PIL import Image


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover `width`x`height`, center-cropping what sticks out, so nothing is stretched."""
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = width / scale, height / scale
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    return image.resize(
        (width, height), Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h)
    )


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Pipeline frames in [0, 1] floats -> uint8."""
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
