"""Robust image loading: EXIF rotation, every PIL mode to 8-bit RGB, paths kept inside the image root."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from multimodal.errors import BadSampleError


def resolve_image_path(root: Path, relative: str) -> Path:
    """``root / relative``, refusing paths that escape ``root`` (``../``, absolute paths, symlinks out)."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise BadSampleError(f"image path '{relative}' escapes the image root {root}")
    return path


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha is composited on white, 16/32-bit greys are rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(path: Path) -> Image.Image:
    """Open, fully decode, undo EXIF rotation and convert to RGB.

    Raises:
        BadSampleError: missing, unreadable, truncated or not an image (the message names the file).
    """
    if not path.is_file():
        raise BadSampleError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in a worker
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except UnidentifiedImageError as err:
        raise BadSampleError(f"not an image or unsupported format: {path}") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadSampleError(f"unreadable image {path}: {err}") from err
