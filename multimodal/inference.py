"""What every task's Python API shares: load a checkpoint, turn inputs into a dataset, predict in batches.

A :class:`Predictor` wraps a trained task and the columns it reads. The same dataset, collate function,
``predict_step`` and row conversion serve the Python API (a plain loop under ``torch.inference_mode``) and the
batch commands (``trainer.predict`` through :mod:`multimodal.writers`), so both give the same outputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader

from multimodal.data.dataset import Collate, ProductDataset, ProductRecord
from multimodal.data.fetch import FetchOptions
from multimodal.data.inputs import api_records
from multimodal.data.photo_reader import ImageRoot
from multimodal.errors import UserError
from multimodal.loading import Columns, Loaded, load
from multimodal.writers import positioned_rows

Row = dict[str, Any]


class Predictor:
    """Base of the per-task inference APIs.

    Args:
        loaded: the task rebuilt by :func:`multimodal.loading.load`.
        device: torch device the model runs on (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        batch_size: items per forward pass.
    """

    task_name: ClassVar[str] = ""  # the LightningModule class this API serves
    require_image: ClassVar[bool] = False
    fetch: FetchOptions | None = None  # how photo URLs are fetched (None: FetchOptions' defaults)

    def __init__(self, loaded: Loaded, device: str | torch.device = "cpu", batch_size: int = 32) -> None:
        if batch_size <= 0:
            raise UserError(f"batch_size must be positive, not {batch_size}")
        self.loaded = loaded
        self.model = loaded.model.eval().to(device)
        self.columns: Columns = loaded.columns
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 32, runtime: str = "torch"
    ) -> Predictor:
        """Load a checkpoint (or ONNX export) of this API's task (another task's is a one-line error)."""
        return cls(load(path, task=cls.task_name or None, runtime=runtime), device, batch_size)

    # ---------------------------------------------------------------------------------------------- inputs
    def required_columns(self) -> list[str]:
        """The columns an input must have: the image column and the text columns the model reads."""
        return [self.columns.image, *self.columns.texts]

    def records(self, inputs: Any) -> list[ProductRecord]:
        """Records of ``inputs``; an empty or repeated id is a one-line error (a caller's DataFrame, not a file
        whose rows must each get an output line as in the batch jobs)."""
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
    ) -> ProductDataset:
        """Eval-transform dataset over ``records``; unreadable photos become per-row errors.

        Photos follow :class:`multimodal.data.photo_reader.PhotoReader`: relative to ``image_root`` (a folder or
        a URL prefix; None: the working directory, the Python API's case), absolute paths or URLs;
        ``confine_images`` refuses photos outside the root; URLs are fetched with ``fetch`` (None: the
        predictor's ``fetch``, by default :class:`~multimodal.data.fetch.FetchOptions`).
        """
        vocab = getattr(self.model, "vocabularies", {}) or {}
        tags = getattr(self.model, "tag_vocabularies", {}) or {}
        transform = self.model.image_transform(False)
        options = fetch or self.fetch
        return ProductDataset(records, image_root, transform, vocab, tags, "skip", confine_images, options)

    def collate(self) -> Collate:
        return Collate(self.model.text_fn())

    # ----------------------------------------------------------------------------------------------- running
    def rows(self, prediction: dict[str, Any]) -> list[Row]:
        """One output row per predicted id of a ``predict_step`` result (the batch commands write the same)."""
        raise NotImplementedError

    def predictions(self, inputs: Any, step: bool = True) -> Iterator[tuple[Row, list[Row], Row]]:
        """``predict_step`` results batch by batch, with each batch's skipped (unreadable) items and the batch."""
        dataset = self.dataset(self.records(inputs))
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, collate_fn=self.collate())
        with torch.inference_mode():
            for i, batch in enumerate(loader):
                skipped = batch.pop("skipped", [])
                run = step and batch["ids"]
                yield (self.model.predict_step(self.on_device(batch), i) if run else {"ids": []}), skipped, batch

    def on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` with its tensors on the predictor's device."""
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def run(self, inputs: Any) -> list[Row]:
        """Rows for every input, in input order; an unreadable input gets ``{"id", "error"}``."""
        out: list[tuple[int, Row]] = []
        for prediction, skipped, batch in self.predictions(inputs):
            out += positioned_rows(prediction, batch["positions"], skipped, self.rows, batch.get("skipped_photos"))
        return [row for _, row in sorted(out, key=lambda pr: pr[0])]


def frame(rows: list[Row]) -> Any:
    """Rows as a DataFrame (``id`` first; an ``error`` column only when some input failed)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if "error" in df.columns and df["error"].isna().all():
        df = df.drop(columns="error")
    return df
