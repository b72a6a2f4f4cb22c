"""Product records, the map-style dataset over them, and the collate function."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from encoders.types import ImageTransform
from multimodal.data.images import load_image, resolve_image_path, to_rgb
from multimodal.errors import BadSampleError

IGNORE_INDEX = -100
BadSamplePolicy = Literal["error", "skip"]
TextFn = Callable[[dict[str, list[str | None]]], dict[str, Tensor]]


@dataclass
class ProductRecord:
    """One manifest row, cleaned: texts and labels are None when unknown."""

    row: int
    id: str
    image: str | Image.Image | None  # a path (relative to the image root, or absolute), or an image in memory
    texts: dict[str, str | None]
    labels: dict[str, str | None] = field(default_factory=dict)
    tags: dict[str, list[str] | None] = field(default_factory=dict)
    error: str | None = None  # known unusable before decoding (an empty or repeated id, no image where needed)


class ProductDataset(Dataset):
    """Decodes one product per item: ``pixel_values (3, H, W)``, texts, encoded labels and multi-hot tags.

    A product without an image gets zero pixels and ``has_image=False``. An unreadable image raises
    :class:`BadSampleError` (policy ``error``) or yields an item with an ``error`` field (policy ``skip``) that the
    collate function drops and reports. Image paths follow :func:`multimodal.data.images.resolve_image_path`:
    relative to ``image_root`` (None: the working directory, as in the Python API) or absolute; with
    ``confine_images`` a path outside ``image_root`` is an unreadable item. Every item carries its ``position`` in
    ``records``, so batch jobs can keep the input order.
    """

    def __init__(
        self,
        records: Sequence[ProductRecord],
        image_root: Path | None,
        transform: ImageTransform,
        vocabularies: dict[str, list[str]],
        tag_vocabularies: dict[str, list[str]],
        on_bad_sample: BadSamplePolicy = "error",
        confine_images: bool = False,
    ) -> None:
        self.records = list(records)
        self.image_root = image_root
        self.confine_images = confine_images
        self.transform = transform
        self.image_size = tuple(transform(Image.new("RGB", (64, 64))).shape[-2:])  # of the zeros of a missing image
        self.index = {a: {v: i for i, v in enumerate(vocab)} for a, vocab in vocabularies.items()}
        self.tag_index = {c: {v: i for i, v in enumerate(vocab)} for c, vocab in tag_vocabularies.items()}
        self.on_bad_sample = on_bad_sample

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Item ``key``; ``(index, seed)`` (from :class:`multimodal.resume.EpochShuffle`) augments it with its own
        seed, leaving the process's random states as they were."""
        if not isinstance(key, tuple):
            return self._item(key)
        i, seed = key
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                return self._item(i)
            finally:
                random.setstate(state)

    def _item(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        try:
            if rec.error is not None:
                raise BadSampleError(rec.error)
            pixels, has_image = self._pixels(rec)
        except BadSampleError as err:
            if self.on_bad_sample == "error":
                raise BadSampleError(f"row {rec.row} (id {rec.id}): {err}") from None
            return {"id": rec.id, "row": rec.row, "position": i, "error": str(err)}
        labels = torch.tensor(
            [self.index[a].get(v, IGNORE_INDEX) if v is not None else IGNORE_INDEX for a, v in rec.labels.items()],
            dtype=torch.long,
        )
        tags = {}
        for col, values in rec.tags.items():
            hot = torch.zeros(len(self.tag_index[col]))
            if values is None:
                hot.fill_(float(IGNORE_INDEX))  # unknown row: masked out of loss and metrics
            else:
                for t in values:
                    if t in self.tag_index[col]:
                        hot[self.tag_index[col][t]] = 1.0
            tags[col] = hot
        return {
            "id": rec.id,
            "position": i,
            "pixel_values": pixels,
            "has_image": has_image,
            "texts": rec.texts,
            "labels": labels,
            "tags": tags,
        }

    def _pixels(self, rec: ProductRecord) -> tuple[Tensor, bool]:
        if rec.image is None:
            return torch.zeros(3, *self.image_size), False
        if isinstance(rec.image, Image.Image):
            return self.transform(to_rgb(rec.image)), True
        path = resolve_image_path(self.image_root, rec.image, self.confine_images)
        return self.transform(load_image(path)), True


class Collate:
    """Batches dataset items; texts go through the task's text function (tokenizer) inside the worker.

    Output keys: ``ids`` and ``positions`` lists, ``pixel_values (B, 3, H, W)``, ``has_image (B,)``, ``has_text
    (B,)``, the text function's tensors (``input_ids``/``attention_mask (B, T)``...), ``labels (B, A)``, ``tags``
    dict of ``(B, K)``, and ``skipped``: ``[{"id", "row", "position", "reason"}]`` of items dropped under the
    ``skip`` policy.
    """

    def __init__(self, text_fn: TextFn) -> None:
        self.text_fn = text_fn

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        skipped = [
            {"id": it["id"], "row": it["row"], "position": it["position"], "reason": it["error"]}
            for it in items
            if "error" in it
        ]
        items = [it for it in items if "error" not in it]
        batch: dict[str, Any] = {
            "ids": [it["id"] for it in items],
            "positions": [it["position"] for it in items],
            "skipped": skipped,
        }
        if not items:
            return batch
        batch["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
        batch["has_image"] = torch.tensor([it["has_image"] for it in items])
        columns = list(items[0]["texts"])
        texts = {c: [it["texts"][c] for it in items] for c in columns}
        batch["has_text"] = torch.tensor([any(it["texts"][c] is not None for c in columns) for it in items])
        batch.update(self.text_fn(texts))
        batch["labels"] = torch.stack([it["labels"] for it in items])
        batch["tags"] = {c: torch.stack([it["tags"][c] for it in items]) for c in items[0]["tags"]}
        return batch
