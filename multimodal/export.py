"""Embedding export: one L2-normalised vector per product, streamed to shards by ``trainer.predict``.

Folder layout::

    export.json                 model, dims, dtype, normalisation, checkpoint hash, count, shard list
    shard-000000.safetensors    (or .npy) float16/float32 vectors of products [0, S) in data order
    shard-000000.parquet        their ids and the chosen metadata columns
    products.parquet            all ids + metadata, in shard order (written when the export is complete)

Products are cut into fixed blocks of ``shard_size`` in data order; a shard is finished when its vector file
exists (written last, atomically). A re-run skips finished shards, so a killed export resumes without
duplicates and ends equal to an uninterrupted one. Under DDP every rank computes its own blocks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Subset

from multimodal.errors import UserError

MANIFEST = "export.json"
PRODUCTS = "products.parquet"
FORMATS = ("safetensors", "npy")
DTYPES = {"float16": torch.float16, "float32": torch.float32}
# Keys that must agree before shards of an earlier run are reused.
IDENTITY_KEYS = (
    "checkpoint_sha256",
    "model",
    "product",
    "dim",
    "dtype",
    "format",
    "normalisation",
    "shard_size",
    "ids_sha256",
)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def ids_sha256(ids: list[str]) -> str:
    """Hash of the product order: shards are only reusable for the same products in the same order."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def shard_name(block: int, ext: str) -> str:
    return f"shard-{block:06d}.{ext}"


@dataclass
class Blocks:
    """Fixed blocks of ``size`` products over ``n`` products in data order."""

    n: int
    size: int

    @property
    def count(self) -> int:
        return math.ceil(self.n / self.size)

    def positions(self, block: int) -> range:
        return range(block * self.size, min(self.n, (block + 1) * self.size))


# ----------------------------------------------------------------------------------------------------- manifest
def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The export manifest of ``folder`` (one-line error if absent or unreadable)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not an embedding export (no {MANIFEST}); run `multimodal export` first")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is corrupt: {err}") from err


def check_same_model(folder: Path, spec: dict[str, Any]) -> None:
    """Refuse to write into a folder holding shards of another model, dtype, format or product list."""
    if not (folder / MANIFEST).is_file():
        if any(folder.glob("shard-*")):
            raise UserError(f"{folder} holds shards but no {MANIFEST}: use an empty --out folder")
        return
    old = read_manifest(folder)
    diff = [f"{k}: folder has {old.get(k)!r}, this run {spec[k]!r}" for k in IDENTITY_KEYS if old.get(k) != spec[k]]
    if diff:
        raise UserError(
            f"{folder} holds an export of another model or catalogue ({'; '.join(diff)}); use another --out folder"
        )


def finished_blocks(folder: Path, blocks: Blocks, fmt: str) -> set[int]:
    """Blocks whose vector file (written last) and metadata file are both present."""
    return {
        b
        for b in range(blocks.count)
        if (folder / shard_name(b, fmt)).is_file() and (folder / shard_name(b, "parquet")).is_file()
    }


# ------------------------------------------------------------------------------------------------- data + writer
class ExportData(L.LightningDataModule):
    """Serves, on each rank, the unfinished blocks assigned to it (round robin), in data order.

    Use with ``Trainer(use_distributed_sampler=False)``: the split across ranks is done here, by whole blocks,
    so every product is computed by exactly one rank.
    """

    def __init__(
        self, dataset: Any, collate: Any, batch_size: int, num_workers: int, todo: list[int], blocks: Blocks
    ) -> None:
        super().__init__()
        self.dataset, self.collate, self.batch_size, self.num_workers = dataset, collate, batch_size, num_workers
        self.todo, self.blocks = todo, blocks
        self.my_blocks: list[int] = []

    def predict_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        self.my_blocks = self.todo[rank::world]
        positions = [p for b in self.my_blocks for p in self.blocks.positions(b)]
        return DataLoader(
            Subset(self.dataset, positions),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=False,
            collate_fn=self.collate,
        )


class EmbeddingWriter(BasePredictionWriter):
    """Buffers one block of product vectors at a time and writes it as a shard when its last batch arrives.

    Args:
        folder: export folder.
        fmt: ``safetensors`` or ``npy``.
        dtype: ``float16`` or ``float32``.
        metadata: id -> {column: value} stored next to the vectors.
        batches_per_block: batches in a full block (``shard_size / batch_size``).
    """

    def __init__(
        self,
        folder: Path,
        fmt: str,
        dtype: str,
        metadata: dict[str, dict[str, Any]],
        data: ExportData,
        batches_per_block: int,
    ) -> None:
        super().__init__(write_interval="batch")
        self.folder, self.fmt, self.dtype = folder, fmt, DTYPES[dtype]
        self.metadata, self.data, self.batches_per_block = metadata, data, batches_per_block
        self._ids: list[str] = []
        self._vectors: list[torch.Tensor] = []
        self._seen = 0
        self._skipped: list[dict[str, Any]] = []  # unreadable products (data.on_bad_sample=skip), reported
        self.written: list[int] = []

    def _expected_batches(self, block: int) -> int:
        return math.ceil(len(self.data.blocks.positions(block)) / self.data.batch_size)

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        block = self.data.my_blocks[batch_idx // self.batches_per_block]
        self._ids.extend(prediction["ids"])
        self._skipped.extend({"id": i, "row": r, "reason": why} for i, r, why in batch.get("skipped", []))
        self._vectors.append(prediction["embeddings"].detach().to("cpu", self.dtype))
        self._seen += 1
        if self._seen == self._expected_batches(block):
            self._flush(block)

    def _flush(self, block: int) -> None:
        vectors = torch.cat(self._vectors) if self._vectors else torch.zeros(0)
        rows = [{"id": i, **self.metadata.get(i, {})} for i in self._ids]
        meta = self.folder / shard_name(block, "parquet")
        tmp = meta.with_name("." + meta.name + ".tmp")
        pd.DataFrame(rows, columns=["id", *_meta_columns(self.metadata)]).to_parquet(tmp, index=False)
        os.replace(tmp, meta)
        if self._skipped:
            write_json_atomic(self.folder / shard_name(block, "skipped.json"), {"skipped": self._skipped})
        save_vectors(self.folder / shard_name(block, self.fmt), vectors.contiguous())  # last: marks the shard done
        self.written.append(block)
        self._ids, self._vectors, self._seen, self._skipped = [], [], 0, []


def _meta_columns(metadata: dict[str, dict[str, Any]]) -> list[str]:
    first = next(iter(metadata.values()), {})
    return list(first)


# ------------------------------------------------------------------------------------------------------ shards io
def save_vectors(path: Path, vectors: torch.Tensor) -> None:
    """Write ``(n, E)`` vectors atomically as safetensors (key ``embeddings``) or ``.npy``."""
    tmp = path.with_name("." + path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({"embeddings": vectors}, str(tmp))
    else:
        with open(tmp, "wb") as f:
            np.save(f, vectors.numpy())
    os.replace(tmp, path)


def load_vectors(path: Path) -> np.ndarray:
    """Read one shard as float32 ``(n, E)``; a missing or corrupt shard is a one-line error."""
    if not path.is_file():
        raise UserError(f"missing shard {path}: re-run `multimodal export` into the same folder to finish it")
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            arr = load_file(str(path))["embeddings"]
        else:
            arr = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any decoding failure means a corrupt shard
        raise UserError(
            f"corrupt shard {path} ({type(err).__name__}): delete it and re-run `multimodal export`"
        ) from err
    return np.ascontiguousarray(arr, dtype=np.float32)


def load_export(folder: str | Path) -> tuple[dict[str, Any], np.ndarray, pd.DataFrame]:
    """The manifest, all vectors ``(N, E)`` float32 and the products table (id + metadata) of a complete export."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not manifest.get("complete"):
        raise UserError(f"export {folder} is incomplete: re-run `multimodal export` with the same --out to finish it")
    parts, tables = [], []
    for block in range(manifest["shards"]):
        vec = load_vectors(folder / shard_name(block, manifest["format"]))
        meta_path = folder / shard_name(block, "parquet")
        try:
            meta = pd.read_parquet(meta_path)
        except Exception as err:  # noqa: BLE001
            raise UserError(f"missing or corrupt shard {meta_path}: re-run `multimodal export`") from err
        if vec.ndim != 2 or len(vec) != len(meta) or (len(vec) and vec.shape[1] != manifest["dim"]):
            raise UserError(
                f"corrupt shard {folder / shard_name(block, manifest['format'])}: "
                f"shape {vec.shape}, {len(meta)} ids, dim {manifest['dim']}"
            )
        parts.append(vec)
        tables.append(meta)
    vectors = np.concatenate(parts) if parts else np.zeros((0, manifest["dim"]), np.float32)
    products = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame({"id": []})
    if len(vectors) != manifest["count"]:
        raise UserError(f"export {folder}: {len(vectors)} vectors in the shards, the manifest says {manifest['count']}")
    return manifest, vectors, products


def finalize(folder: Path, spec: dict[str, Any], blocks: Blocks) -> dict[str, Any]:
    """After every rank finished: check all shards exist, write ``products.parquet`` and the final manifest."""
    fmt = spec["format"]
    missing = [b for b in range(blocks.count) if b not in finished_blocks(folder, blocks, fmt)]
    manifest = {**spec, "shards": blocks.count, "complete": not missing}
    if missing:
        manifest["missing_shards"] = missing
        write_json_atomic(folder / MANIFEST, manifest)
        return manifest
    tables = [pd.read_parquet(folder / shard_name(b, "parquet")) for b in range(blocks.count)]
    products = pd.concat(tables, ignore_index=True)
    if products["id"].duplicated().any():
        raise UserError(f"export {folder}: duplicate ids {products['id'][products['id'].duplicated()].tolist()[:5]}")
    products.to_parquet(folder / PRODUCTS, index=False)
    manifest["count"] = len(products)
    skipped = [
        item
        for b in range(blocks.count)
        if (folder / shard_name(b, "skipped.json")).is_file()
        for item in json.loads((folder / shard_name(b, "skipped.json")).read_text())["skipped"]
    ]
    manifest["skipped"] = skipped  # products the data module could not read (on_bad_sample=skip)
    write_json_atomic(folder / MANIFEST, manifest)
    return manifest
