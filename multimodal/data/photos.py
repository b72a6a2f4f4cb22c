"""A product's photos: the one rule that turns a manifest cell into a list of photos.

A cell may hold one photo (a path, a URL, an image in memory), a list of them (a Parquet or JSON list), or several
paths joined by ``|`` (a CSV cell: ``"front.jpg|back.jpg"``). Empty cells and empty lists are a product without a
photo (the text-only path). A product keeps at most ``max_images`` photos, in the order given; the rest are
counted, never read. A dict in the cell is a mistake: a one-line error naming the row and the column.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from multimodal.errors import UserError

PHOTO_SEPARATOR = "|"
DEFAULT_MAX_IMAGES = 4
Photo = str | Image.Image  # a path or URL (relative to the image root, or absolute), or an image in memory


def photo_list(value: Any, where: str) -> list[Photo]:
    """The photos of one cell, in order (see the module's rule); ``where`` names the cell in errors."""
    import numpy as np

    from multimodal.data.manifest import cell_text, clean_value

    if isinstance(value, Image.Image):
        return [value]
    if isinstance(value, dict):
        raise UserError(f"{where}: a dict cell ({str(value)[:40]}); photos are a path, a URL or a list of them")
    if isinstance(value, list | tuple | np.ndarray):
        return [p for i, v in enumerate(value) for p in photo_list(v, f"{where}, item {i}")]
    text = clean_value(cell_text(value, where))
    if text is None:
        return []
    return [part.strip() for part in text.split(PHOTO_SEPARATOR) if clean_value(part) is not None]


def kept_photos(photos: list[Photo], max_images: int) -> tuple[list[Photo], list[Photo]]:
    """The first ``max_images`` photos, and the ones left out."""
    return photos[:max_images], photos[max_images:]


def photo_name(photo: Photo) -> str:
    """How a photo is named in a row's ``skipped_photos`` (an image in memory by its size)."""
    return photo if isinstance(photo, str) else f"<image {photo.width}x{photo.height}>"


def check_max_images(max_images: int, key: str = "data.max_images") -> int:
    """``max_images`` when it is a positive integer, else a one-line error naming ``key``."""
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise UserError(f"{key} must be a positive integer, not {max_images!r}")
    return max_images
