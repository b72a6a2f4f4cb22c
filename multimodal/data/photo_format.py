"""Photo bytes to a decoded RGB image, with the format checked by its magic bytes before PIL sees it.

A URL may answer a web page, a JSON error or an empty body with status 200; such an answer is named in a one-line
error instead of reaching PIL's format guessing. Imports no torch.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from multimodal.data.images import to_rgb
from multimodal.data.photo_guard import one_line
from multimodal.errors import BadSampleError

# The formats a photo may come in, by their first bytes: anything else is refused before PIL sees it.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def sniff_format(data: bytes) -> str | None:
    """The PIL format name of an image by its magic bytes (JPEG, PNG, GIF, WEBP, BMP, TIFF), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), None)


def _what_it_is(data: bytes) -> str:
    head = data[:256].lstrip().lower()
    if not data:
        return "an empty body"
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML page"
    if head.startswith((b"{", b"[")):
        return "JSON"
    if head.startswith(b"<"):
        return "XML or HTML"
    return f"unknown content starting {data[:8]!r}"


def decode_photo(data: bytes, where: str) -> Image.Image:
    """Decode a fetched photo fully: format checked by magic bytes first, EXIF rotation undone, 8-bit RGB.

    Raises:
        BadSampleError: one line naming ``where`` (not an image, an unsupported format, truncated or corrupt).
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise BadSampleError(f"not an image: {where} is {_what_it_is(data)}")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            img.load()  # decode now: a truncated photo fails here, not later in a worker
            return to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError as err:
        raise BadSampleError(f"not a readable {fmt} image: {where}") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadSampleError(f"unreadable image {where}: {one_line(err)}") from err
