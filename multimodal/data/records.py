"""A product record: one manifest row, cleaned. A leaf module (no torch), so reading a catalogue into records
needs no training stack: the torch-free runtime (:mod:`multimodal.lite`) reads manifests with the same code."""

from __future__ import annotations

from dataclasses import dataclass, field

from multimodal.data.photos import Photo


@dataclass
class ProductRecord:
    """One manifest row, cleaned: texts and labels are None when unknown."""

    row: int
    id: str
    photos: list[Photo]  # paths or URLs (relative to the image root, or absolute), or images in memory; [] = none
    texts: dict[str, str | None]
    labels: dict[str, str | None] = field(default_factory=dict)
    tags: dict[str, list[str] | None] = field(default_factory=dict)
    error: str | None = None  # known unusable before decoding (an empty or repeated id, no image where needed)
    ignored_photos: list[Photo] = field(default_factory=list)  # past ``max_images``: never read, named in the row

    @property
    def image(self) -> Photo | None:
        """The first photo (None: no photo)."""
        return self.photos[0] if self.photos else None
