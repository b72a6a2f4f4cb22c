"""What the torch-free tasks share: the export they run, a dataset of NumPy items over product records, its batch
function, and the base of the Python APIs (the same inputs, rows and per-row errors as
:class:`multimodal.inference.Predictor`, in a plain loop)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from multimodal.artefact import Columns, Loaded
from multimodal.data.fetch import FetchOptions
from multimodal.data.inputs import api_records
from multimodal.data.photo_reader import ImageRoot, PhotoReader
from multimodal.data.photos import photo_name
from multimodal.data.records import ProductRecord
from multimodal.errors import BadSampleError, UserError
from multimodal.lite.sessions import Export
from multimodal.rows import positioned_rows

Row = dict[str, Any]


class LiteModel:
    """Base of the torch-free tasks: an :class:`~multimodal.lite.sessions.Export` and its preprocessing.

    Args:
        folder: the export folder.
        int8: run its int8 graphs.
    """

    def __init__(self, folder: str | Path, int8: bool = False) -> None:
        self.export = Export(folder, int8, self.widths)
        self.info, self.settings, self.pre = self.export.info, self.export.settings, self.export.pre

    def widths(self, name: str) -> dict[str, tuple[str, int]]:
        """What the width of each output of graph ``name`` must be, by output name: (what it is, its width)."""
        return {}


class ArrayDataset:
    """One product per item, as :class:`multimodal.data.dataset.ProductDataset` reads it, with NumPy pixels:
    ``pixel_values (3, H, W)`` (``(P, 3, H, W)`` of several photos; zeros without one), ``has_image``, ``texts``;
    an unreadable product is an item with an ``error`` (the batch function drops and reports it).

    Args:
        records: the products, in input order (a lazy sequence stays lazy).
        image_root: where relative photo paths start (None: the working directory).
        pre: the export's preprocessing.
        confine_images: refuse photos outside ``image_root``.
        fetch: how photo URLs are fetched.
    """

    def __init__(
        self,
        records: Sequence[ProductRecord],
        image_root: ImageRoot,
        pre: Any,
        confine_images: bool = False,
        fetch: FetchOptions | None = None,
    ) -> None:
        self.records = records if isinstance(records, Sequence) else list(records)
        self.image_root, self.confine_images, self.pre = image_root, confine_images, pre
        self.photos = PhotoReader(image_root, confine_images, fetch)
        self.blank = np.zeros_like(pre.images([Image.new("RGB", (64, 64))])[0])  # the pixels of a missing photo

    def __len__(self) -> int:
        return len(self.records)

    def item(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        try:
            if rec.error is not None:
                raise BadSampleError(rec.error)
            pixels, skipped = self._photos(rec)
        except BadSampleError as err:
            return {"id": rec.id, "row": rec.row, "position": i, "error": str(err)}
        skipped += [
            {"photo": photo_name(p), "reason": f"over max_images ({len(rec.photos)})"} for p in rec.ignored_photos
        ]
        item = {"id": rec.id, "position": i, "pixel_values": pixels, "has_image": bool(rec.photos), "texts": rec.texts}
        return {**item, **({"skipped_photos": skipped} if skipped else {})}

    def _photos(self, rec: ProductRecord) -> tuple[np.ndarray, list[dict[str, str]]]:
        if not rec.photos:
            return self.blank, []
        pixels, skipped = [], []
        for photo in rec.photos:
            try:
                pixels.append(self.pre.images([self.photos.read(photo)])[0])
            except BadSampleError as err:
                skipped.append({"photo": photo_name(photo), "reason": str(err)})
        if not pixels:
            first = skipped[0]["reason"]
            raise BadSampleError(first if len(skipped) == 1 else f"none of its {len(skipped)} photos: {first}")
        return (pixels[0] if len(pixels) == 1 else np.stack(pixels)), skipped

    def items(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        """The items at ``positions``, their photo URLs fetched together first."""
        self.photos.prefetch([p for i in positions for p in self.records[i].photos])
        try:
            return [self.item(i) for i in positions]
        finally:
            self.photos.forget()


def collate(items: list[dict[str, Any]], pre: Any) -> dict[str, Any]:
    """A batch of items as the graphs read it (:class:`multimodal.data.dataset.Collate`'s keys, NumPy arrays):
    ``ids``, ``positions``, ``skipped``, ``skipped_photos``, ``pixel_values (B, 3, H, W)`` (``(B, P, 3, H, W)``
    when a product has several photos), ``has_image`` / ``has_text (B,)`` and the text inputs."""
    skipped = [{k: it[k] for k in ("id", "row", "position")} | {"reason": it["error"]} for it in items if "error" in it]
    items = [it for it in items if "error" not in it]
    batch: dict[str, Any] = {"ids": [it["id"] for it in items], "positions": [it["position"] for it in items]}
    batch["skipped"] = skipped
    if not items:
        return batch
    photos = [it["pixel_values"] if it["pixel_values"].ndim == 4 else it["pixel_values"][None] for it in items]
    most = max(len(p) for p in photos)
    padded = [np.concatenate([p, np.zeros((most - len(p), *p.shape[1:]), np.float32)]) for p in photos]
    batch["pixel_values"] = np.stack(padded)[:, 0] if most == 1 else np.stack(padded)
    photo_skips = {it["position"]: it["skipped_photos"] for it in items if "skipped_photos" in it}
    if photo_skips:
        batch["skipped_photos"] = photo_skips
    batch["has_image"] = np.asarray([it["has_image"] for it in items], dtype=bool)
    columns = list(items[0]["texts"])
    texts = {c: [it["texts"][c] for it in items] for c in columns}
    batch["has_text"] = np.asarray([any(it["texts"][c] is not None for c in columns) for it in items], dtype=bool)
    return batch | pre.texts(texts)


class Predictor:
    """Base of the torch-free Python APIs (the methods of :class:`multimodal.inference.Predictor`).

    Args:
        loaded: the export, loaded (:func:`multimodal.lite.loading.load`).
        device: accepted for the same signature; ONNX Runtime runs on the CPU.
        batch_size: items per forward pass.
    """

    task_name: ClassVar[str] = ""
    require_image: ClassVar[bool] = False
    fetch: FetchOptions | None = None

    def __init__(self, loaded: Loaded, device: str = "cpu", batch_size: int = 32) -> None:
        if batch_size <= 0:
            raise UserError(f"batch_size must be positive, not {batch_size}")
        self.loaded, self.model, self.batch_size = loaded, loaded.model, batch_size
        self.columns: Columns = loaded.columns

    def required_columns(self) -> list[str]:
        return [self.columns.image, *self.columns.texts]

    def records(self, inputs: Any) -> list[ProductRecord]:
        records, problems = api_records(inputs, self.columns, self.required_columns(), self.require_image)
        if problems:
            raise UserError(problems[0]["reason"] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        return records

    def dataset(
        self,
        records: Sequence[ProductRecord],
        image_root: ImageRoot = None,
        confine_images: bool = False,
        fetch: FetchOptions | None = None,
    ) -> ArrayDataset:
        return ArrayDataset(records, image_root, self.model.pre, confine_images, fetch or self.fetch)

    def batches(self, dataset: ArrayDataset, positions: Sequence[int]) -> Iterator[dict[str, Any]]:
        """The batches of ``dataset`` at ``positions``, ``batch_size`` items each."""
        for start in range(0, len(positions), self.batch_size):
            yield collate(dataset.items(positions[start : start + self.batch_size]), self.model.pre)

    def rows(self, prediction: dict[str, Any]) -> list[Row]:
        raise NotImplementedError

    def predictions(self, inputs: Any, step: bool = True) -> Iterator[tuple[Row, list[Row], Row]]:
        """``predict_step`` results batch by batch, with each batch's skipped items and the batch."""
        dataset = self.dataset(self.records(inputs))
        for batch in self.batches(dataset, range(len(dataset))):
            skipped = batch.pop("skipped", [])
            yield (self.model.predict_step(batch) if step and batch["ids"] else {"ids": []}), skipped, batch

    def run(self, inputs: Any) -> list[Row]:
        """Rows for every input, in input order; an unreadable input gets ``{"id", "error"}``."""
        out: list[tuple[int, Row]] = []
        for prediction, skipped, batch in self.predictions(inputs):
            out += positioned_rows(prediction, batch["positions"], skipped, self.rows, batch.get("skipped_photos"))
        return [row for _, row in sorted(out, key=lambda pr: pr[0])]


def frame(rows: list[Row]) -> Any:
    """Rows as a DataFrame (``id`` first; an ``error`` column only when some input failed), as the full install's
    :func:`multimodal.inference.frame` makes it."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if "error" in df.columns and df["error"].isna().all():
        df = df.drop(columns="error")
    return df
