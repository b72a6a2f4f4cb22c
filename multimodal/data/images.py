"""Robust image loading: EXIF rotation, every PIL mode to 8-bit RGB, and the one rule for image paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from multimodal.errors import BadSampleError


def resolve_image_path(root: Path | None, path: str, confine: bool = True) -> Path:
    """Where a manifest's image path points: the one rule of every batch job, data module and the Python API.

    A relative path is relative to ``root`` (``None``: the working directory); an absolute path is used as it is.
    With ``confine``, a path that resolves outside ``root`` (``../``, an absolute path elsewhere, a symlink out)
    is refused: batch jobs and data modules turn it on with ``confine_images``; the HTTP service always confines.

    Raises:
        BadSampleError: ``confine`` is on and the path escapes ``root``.
    """
    if root is None:
        return Path(path)
    resolved = (root / path).resolve()  # an absolute ``path`` replaces ``root`` (pathlib's rule)
    if confine and not resolved.is_relative_to(root.resolve()):
        raise BadSampleError(f"image path '{path}' escapes the image root {root} (confine_images is on)")
    return resolved


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
