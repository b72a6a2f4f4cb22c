"""``ProductDataModule``: a product manifest + image root -> split, vocabularies, batches for any task."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from torch.utils.data import DataLoader

from encoders.types import ImageTransform
from multimodal.data.dataset import BadSamplePolicy, Collate, ProductDataset, ProductRecord, TextFn
from multimodal.data.fetch import FetchOptions
from multimodal.data.litdata_stream import StreamDataset, read_stream_splits, training_source
from multimodal.data.manifest import SPLITS
from multimodal.data.options import check_data_options
from multimodal.data.order import epoch_order
from multimodal.data.photo_reader import PhotoReader
from multimodal.data.photo_reader import image_root as photo_root
from multimodal.data.photos import DEFAULT_MAX_IMAGES, check_max_images
from multimodal.data.split_rows import joined, manifest_folder, read_splits
from multimodal.data.splits import DataColumns, SplitRule, training_vocabularies, unseen_labels
from multimodal.errors import UserError

log = logging.getLogger(__name__)


@runtime_checkable
class Preprocessing(Protocol):
    """What a task supplies to the data side: its image transform and its text function (tokenizer)."""

    def image_transform(self, train: bool) -> ImageTransform: ...

    def text_fn(self) -> TextFn: ...


class ProductDataModule(L.LightningDataModule):
    """Products from a manifest, split deterministically, with label vocabularies from the training split.

    Which columns are id, image, text, attributes and tags is configuration. Unknown values ("", "NA", null)
    are masked out of losses and metrics, never a class. Validation/test labels never seen in training are
    masked too and counted in the data report.

    Args:
        manifest: CSV, JSONL or Parquet file, or a folder of Parquet files, one product per row; a local path or any
            fsspec URL (``s3://shop/catalog/``). Read in one streaming pass; records are decoded when used.
        image_root: folder or URL prefix (``https://cdn.shop.com/img/``, ``s3://shop/photos/``) that relative photo
            paths are relative to (default: the manifest's folder, or the Parquet folder itself); absolute paths and
            URLs are read as they are.
        confine_images: refuse (as an unreadable product) any image path that resolves outside ``image_root``
            (``../``, absolute paths elsewhere, symlinks out); off by default, as in ``multimodal predict``.
        id_column: unique product id.
        image_column: the product's photos: a path relative to ``image_root`` or absolute, a URL, a list of them
            (Parquet / JSON list) or ``|``-joined paths (CSV); empty for a product without a photo.
        max_images: photos read per product, in the order given; the rest are counted in the data report.
        fetch: how photo URLs are fetched (timeouts, retries, size limit, the photo cache):
            :class:`multimodal.data.fetch.FetchOptions`.
        stream: a folder or bucket prefix written by ``multimodal prepare``, read instead of ``manifest``.
        text_columns: text fields (title, description...), in the order the task joins them.
        attributes: single-label attribute columns (one softmax head each).
        tag_columns: multi-label columns holding ``tag_separator``-joined tags (one sigmoid head each).
        tag_separator: separator inside tag cells.
        split_column: column with train/val/test; when absent, rows are split by a stable hash of the id.
        val_fraction: share of ids hashed into validation.
        test_fraction: share of ids hashed into test.
        split_salt: changes the hash split without changing the data.
        predict_split: rows used by ``predict``: ``all``, ``train``, ``val`` or ``test``.
        on_bad_sample: ``error`` stops at the first unreadable product; ``skip`` drops and reports it.
        batch_size: products per batch.
        num_workers: decoding worker processes.
        report_path: where the data report (counts, skipped products, unseen labels) is written as JSON;
            default: ``data_report.json`` in the trainer's log dir.
    """

    def __init__(
        self,
        manifest: str | None = None,
        image_root: str | None = None,
        id_column: str = "id",
        image_column: str = "image",
        text_columns: list[str] | None = None,
        attributes: list[str] | None = None,
        tag_columns: list[str] | None = None,
        tag_separator: str = "|",
        split_column: str | None = "split",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_salt: str = "",
        predict_split: str = "all",
        on_bad_sample: BadSamplePolicy = "error",
        batch_size: int = 32,
        num_workers: int = 2,
        report_path: str | None = None,
        confine_images: bool = False,
        max_images: int = DEFAULT_MAX_IMAGES,
        fetch: FetchOptions | None = None,
        stream: str | None = None,
    ) -> None:
        super().__init__()
        self.max_images = check_max_images(max_images)
        check_data_options(on_bad_sample, batch_size, num_workers, val_fraction, test_fraction, predict_split)
        self.stream, self.manifest = training_source(manifest, stream)
        self.image_root = photo_root(image_root) or manifest_folder(self.manifest)
        self.fetch, self.confine_images = fetch, bool(confine_images)
        self.id_column, self.image_column = id_column, image_column
        self.text_columns = list(text_columns or [])
        self.attributes = list(attributes or [])
        self.tag_columns, self.tag_separator = list(tag_columns or []), tag_separator
        self.predict_split = predict_split
        self.on_bad_sample: BadSamplePolicy = on_bad_sample
        self.batch_size, self.num_workers = batch_size, num_workers
        self.report_path = Path(report_path) if report_path else None
        self.skipped: dict[str, dict[str, Any]] = {}
        self.skipped_photos: list[dict[str, Any]] = []
        self.splits = self._read(split_column, val_fraction, test_fraction, split_salt)
        self.vocabularies: dict[str, list[str]] = {}
        self.tag_vocabularies: dict[str, list[str]] = {}
        self._vocabulary_error = self._training_vocabulary_error()
        self.preprocessing: Preprocessing | None = None

    def _training_vocabulary_error(self) -> UserError | None:
        """Take the training split's vocabularies; None, or the error that ``fit`` (and any dataset built without
        vocabularies from a checkpoint) raises: predicting with a checkpoint's vocabularies needs no labelled rows."""
        try:
            self.set_vocabularies(*self._training_vocabularies())
        except UserError as err:
            return err
        return None

    # ----------------------------------------------------------------------------------------------- reading
    def _read(
        self, split_column: str | None, val_fraction: float, test_fraction: float, salt: str
    ) -> dict[str, Sequence[ProductRecord]]:
        columns = DataColumns(
            self.id_column,
            self.image_column,
            self.text_columns,
            self.attributes,
            self.tag_columns,
            self.tag_separator,
            self.max_images,
        )
        rule = SplitRule(split_column, val_fraction, test_fraction, salt)
        read = read_stream_splits if self.stream else read_splits
        self.scan, splits = read(self.manifest, self.photo_reader(), columns, rule, self._bad, self._bad_photo)
        return splits

    def photo_reader(self) -> PhotoReader:
        """How this data's photos are read: its image root, confinement and URL fetching."""
        return PhotoReader(self.image_root, self.confine_images, self.fetch)

    def _bad_photo(self, row: int, item_id: str, message: str) -> None:
        self.skipped_photos.append({"id": item_id, "row": row, "reason": message})

    def _bad(self, row: int, item_id: str, message: str) -> None:
        if self.on_bad_sample == "error":
            raise UserError(message)
        self.skipped[item_id] = {"id": item_id, "row": row, "reason": message}

    def _training_vocabularies(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        return training_vocabularies(self.scan, self.attributes, self.tag_columns, self.manifest)

    def set_vocabularies(self, vocabularies: dict[str, list[str]], tag_vocabularies: dict[str, list[str]]) -> None:
        """Use these vocabularies (from training, or from a checkpoint) to encode labels."""
        if set(vocabularies) != set(self.attributes) or set(tag_vocabularies) != set(self.tag_columns):
            raise UserError(
                f"the checkpoint was trained on attributes {sorted(vocabularies)} and tags {sorted(tag_vocabularies)}, "
                f"the data config names {sorted(self.attributes)} and {sorted(self.tag_columns)}"
            )
        self.vocabularies, self.tag_vocabularies = vocabularies, tag_vocabularies
        self._vocabulary_error = None

    # ------------------------------------------------------------------------------------------------ report
    def report(self) -> dict[str, Any]:
        """Counts per split, skipped products and labels never seen in training."""
        return {
            "manifest": str(self.manifest),
            "rows": {s: len(r) for s, r in self.splits.items()},
            "skipped": list(self.skipped.values()),
            "skipped_photos": self.skipped_photos,
            "photos_over_max_images": self.scan.over_max_images,
            "unseen_labels": unseen_labels(self.scan, self.vocabularies),
        }

    def write_report(self) -> Path | None:
        """Write the data report; warn once about anything skipped or masked."""
        path = self.report_path
        if path is None and self.trainer is not None and self.trainer.log_dir is not None:
            path = Path(self.trainer.log_dir) / "data_report.json"
        if path is None or (self.trainer is not None and not self.trainer.is_global_zero):
            return None
        report = self.report()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        n_unseen = sum(sum(c.values()) for per in report["unseen_labels"].values() for c in per.values())
        if report["skipped"] or report["skipped_photos"] or n_unseen:
            skipped, photos = len(report["skipped"]), len(report["skipped_photos"])
            log.warning(f"data: {skipped} product(s) and {photos} photo(s) skipped, {n_unseen} val/test label(s) "
                        f"never seen in training (masked); see {path}")  # fmt: skip
        return path

    # ------------------------------------------------------------------------------------------- lightning
    def attach(self, preprocessing: Preprocessing) -> None:
        """Take image transforms and the text function from the task (done by ``setup`` under a Trainer).

        A task that already knows its label vocabularies (one loaded from a checkpoint) also gives them: labels
        are then encoded as the model was trained, whatever the training split of this manifest holds.
        """
        self.preprocessing = preprocessing
        vocabularies = getattr(preprocessing, "vocabularies", None)
        if vocabularies:
            self.set_vocabularies(vocabularies, getattr(preprocessing, "tag_vocabularies", {}))

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._vocabulary_error is not None:
            raise self._vocabulary_error
        if self.preprocessing is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            if not isinstance(module, Preprocessing):
                raise UserError(f"{type(module).__name__} does not supply image_transform/text_fn for the data")
            self.attach(module)
        self.write_report()

    def dataset(self, split: str, train: bool = False) -> ProductDataset:
        """The dataset of one split (``all`` for every row), with train or eval transforms."""
        assert self.preprocessing is not None, "call attach() or run under a Trainer first"
        if self._vocabulary_error is not None:
            raise self._vocabulary_error
        records = joined([self.splits[s] for s in SPLITS]) if split == "all" else self.splits[split]
        transform = self.preprocessing.image_transform(train)
        vocab, tags, kind = self.vocabularies, self.tag_vocabularies, StreamDataset if self.stream else ProductDataset
        policy, confine = self.on_bad_sample, self.confine_images
        return kind(records, self.image_root, transform, vocab, tags, policy, confine, self.fetch)

    def loader(self, split: str, train: bool = False) -> DataLoader:
        """A DataLoader over one split; shuffled and with train transforms when ``train``."""
        assert self.preprocessing is not None
        dataset = self.dataset(split, train)
        if len(dataset) == 0:
            raise UserError(f"manifest {self.manifest}: the '{split}' split is empty")
        order: dict[str, Any] = {"shuffle": train}
        if train and (self.trainer is None or self.trainer.world_size == 1):
            # An order fixed by (seed, epoch), resumed mid-epoch where the checkpoint stopped: exact resume of fit.
            seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
            sampler = epoch_order(self.preprocessing, dataset, seed, self.batch_size, self.trainer)
            order = {"sampler": sampler, "generator": torch.Generator().manual_seed(seed)}
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=Collate(self.preprocessing.text_fn()),
            **order,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.predict_split)

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        for item in batch.pop("skipped", []):
            if item["id"] not in self.skipped:
                self.skipped[item["id"]] = {k: item[k] for k in ("id", "row", "reason")}
                log.warning("skipped product %s (row %s): %s", item["id"], item["row"], item["reason"])
        return batch

    def teardown(self, stage: str) -> None:
        self._gather_skipped()
        self.write_report()

    def _gather_skipped(self) -> None:
        """Under DDP each rank sees only its own skipped products: collect them all before rank 0 reports."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        parts: list[dict[str, dict[str, Any]]] = [{} for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather_object(parts, self.skipped)
        for part in parts:
            for item_id, entry in part.items():
                self.skipped.setdefault(item_id, entry)

    def state_dict(self) -> dict[str, Any]:
        return {"vocabularies": self.vocabularies, "tag_vocabularies": self.tag_vocabularies}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.set_vocabularies(state_dict["vocabularies"], state_dict["tag_vocabularies"])
