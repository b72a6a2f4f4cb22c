"""Product records, the map-style dataset over them, and the collate function."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from encoders.types import ImageTransform
from multimodal.data.fetch import FetchOptions
from multimodal.data.photo_reader import ImageRoot, PhotoReader
from multimodal.data.photos import Photo, photo_name
from multimodal.data.records import ProductRecord  # noqa: F401 - re-exported: defined in a torch-free module
from multimodal.errors import BadSampleError

IGNORE_INDEX = -100
BadSamplePolicy = Literal["error", "skip"]
TextFn = Callable[[dict[str, list[str | None]]], dict[str, Tensor]]


class ProductDataset(Dataset):
    """Decodes one product per item: ``pixel_values (3, H, W)`` of its photo (``(P, 3, H, W)`` of several), texts,
    encoded labels and multi-hot tags.

    A product without a photo gets one slot of zero pixels and ``has_image=False``. A photo that cannot be read is
    left out and named in the item's ``skipped_photos`` (with the photos past ``max_images``); a product none of
    whose photos can be read raises :class:`BadSampleError` (policy ``error``) or yields an item with an ``error``
    field (policy ``skip``) that the collate function drops and reports. Photos are read by
    :class:`multimodal.data.photo_reader.PhotoReader`: files under a local ``image_root`` (None: the working
    directory, as in the Python API) or absolute, URLs (``image_root`` may be a URL prefix) fetched with ``fetch``;
    with ``confine_images`` a photo outside ``image_root`` is an unreadable photo.
    Every item carries its ``position`` in ``records``, so batch jobs can keep the input order.
    """

    def __init__(
        self,
        records: Sequence[ProductRecord],
        image_root: ImageRoot,
        transform: ImageTransform,
        vocabularies: dict[str, list[str]],
        tag_vocabularies: dict[str, list[str]],
        on_bad_sample: BadSamplePolicy = "error",
        confine_images: bool = False,
        fetch: FetchOptions | None = None,
    ) -> None:
        self.records = records if isinstance(records, Sequence) else list(records)  # LazyRows stay lazy
        self.image_root = image_root
        self.confine_images = confine_images
        self.photos = PhotoReader(image_root, confine_images, fetch)
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
            pixels, has_image, skipped = self._photos(rec)
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
        skipped += [
            {"photo": photo_name(p), "reason": f"over max_images ({len(rec.photos)})"} for p in rec.ignored_photos
        ]
        item = {"id": rec.id, "position": i, "pixel_values": pixels, "has_image": has_image, "texts": rec.texts}
        return {**item, "labels": labels, "tags": tags, **({"skipped_photos": skipped} if skipped else {})}

    def _photos(self, rec: ProductRecord) -> tuple[Tensor, bool, list[dict[str, str]]]:
        """Pixels of the photos that could be read (``(3, H, W)`` for one, else ``(P, 3, H, W)``), whether there is
        one, and the skipped ones (``{"photo", "reason"}``). No photo: zeros; no readable photo: BadSampleError."""
        if not rec.photos:
            return torch.zeros(3, *self.image_size), False, []
        pixels, skipped = [], []
        for photo in rec.photos:
            try:
                pixels.append(self.transform(self._image(photo)))
            except BadSampleError as err:
                skipped.append({"photo": photo_name(photo), "reason": str(err)})
        if not pixels:
            first = skipped[0]["reason"]
            raise BadSampleError(first if len(skipped) == 1 else f"none of its {len(skipped)} photos: {first}")
        return (pixels[0] if len(pixels) == 1 else torch.stack(pixels)), True, skipped

    def _image(self, photo: Photo) -> Image.Image:
        return self.photos.read(photo)

    def __getitems__(self, keys: list[Any]) -> list[dict[str, Any]]:
        """The items of one batch (the DataLoader asks for them together): the batch's photo URLs are fetched at
        once first, so the worker waits for the slowest photo, not for the sum of them."""
        indices = [k[0] if isinstance(k, tuple) else k for k in keys]
        self.photos.prefetch([p for i in indices for p in self.records[i].photos])
        try:
            return [self[k] for k in keys]
        finally:
            self.photos.forget()


class Collate:
    """Batches dataset items; texts go through the task's text function (tokenizer) inside the worker.

    Output keys: ``ids`` and ``positions`` lists, ``pixel_values (B, 3, H, W)`` when every product has at most one
    photo, else ``(B, P, 3, H, W)`` with ``photo_mask (B, P)`` (True for a real photo, False for padding),
    ``has_image (B,)``, ``has_text (B,)``, the text function's tensors (``input_ids``/``attention_mask (B, T)``...),
    ``labels (B, A)``, ``tags`` dict of ``(B, K)``, ``skipped``: ``[{"id", "row", "position", "reason"}]`` of items
    dropped under the ``skip`` policy, and ``skipped_photos``: ``{position: [{"photo", "reason"}]}``.
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
        batch.update(stack_photos([it["pixel_values"] for it in items]))
        photo_skips = {it["position"]: it["skipped_photos"] for it in items if "skipped_photos" in it}
        if photo_skips:
            batch["skipped_photos"] = photo_skips
        batch["has_image"] = torch.tensor([it["has_image"] for it in items])
        columns = list(items[0]["texts"])
        texts = {c: [it["texts"][c] for it in items] for c in columns}
        batch["has_text"] = torch.tensor([any(it["texts"][c] is not None for c in columns) for it in items])
        batch.update(self.text_fn(texts))
        batch["labels"] = torch.stack([it["labels"] for it in items])
        batch["tags"] = {c: torch.stack([it["tags"][c] for it in items]) for c in items[0]["tags"]}
        return batch


def stack_photos(photos: list[Tensor]) -> dict[str, Tensor]:
    """``pixel_values`` of a batch from each product's ``(3, H, W)`` or ``(P_i, 3, H, W)``: ``(B, 3, H, W)`` when
    every product has one, else padded to ``(B, P, 3, H, W)`` with its ``photo_mask (B, P)``."""
    photos = [p if p.dim() == 4 else p.unsqueeze(0) for p in photos]
    most = max(p.shape[0] for p in photos)
    if most == 1:
        return {"pixel_values": torch.stack([p[0] for p in photos])}
    padded = [torch.cat([p, p.new_zeros(most - p.shape[0], *p.shape[1:])]) for p in photos]
    mask = torch.tensor([[j < p.shape[0] for j in range(most)] for p in photos])
    return {"pixel_values": torch.stack(padded), "photo_mask": mask}
