"""Embedding export: one L2-normalised vector per product, in shards, through the one batch-job path.

Folder layout::

    export.json                 model, dim (and cut_from, after --dim), dtype, normalisation, checkpoint
                                (relative) and hash, count, shards
    model.ckpt                  the checkpoint that computed the vectors (a hard link or a copy): the folder moves
    shard-000000.safetensors    (or .npy) float16/float32 vectors of products [0, S) in input order; or
    shard-000000.vectors.parquet  --format parquet: id, vector (float32) and metadata, what a vector database ingests
    shard-000000.parquet        their ids, metadata columns (default: every manifest column) and image paths
    products.parquet            all ids + metadata, in shard order (written when the export is complete)
    job.json                    the job's identity (see :mod:`multimodal.writers`)

A shard is one block of :func:`multimodal.writers.run_job`: it is finished when its vector file exists (written
last, atomically), so a killed export resumes without duplicates and ends equal to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal.errors import UserError
from multimodal.search.export_metadata import (  # noqa: F401 - re-exported: the export's metadata
    RESERVED,
    ManifestMetadata,
    metadata_columns,
    product_metadata,
    stored_columns,
)
from multimodal.search.vector_files import (  # noqa: F401 - re-exported: the shards' vector files
    FORMATS,
    check_columns,
    load_vectors,
    save_vectors,
    vector_file,
)
from multimodal.writers import Blocks, Row, close_job, write_json_atomic

MANIFEST = "export.json"
PRODUCTS = "products.parquet"
CHECKPOINT = "model.ckpt"
DTYPES = ("float16", "float32")  # named alike in torch and NumPy (torch is imported by the sink that casts)


def summarise(summary: dict[str, Any] | None, source: Path | str, out: str) -> dict[str, Any] | None:
    """The printed summary of a finished export (skipped products listed on stderr); an export whose every product
    was skipped is an error (exit 2), not an empty "complete" export."""
    if summary is None or not summary.get("complete"):
        return summary
    skipped = summary.get("skipped") or []
    if skipped and not summary.get("count"):
        raise UserError(
            f"every product of {source} was skipped ({len(skipped)}; first: {skipped[0]['reason']}): "
            f"is --image_root right? The reasons are in {Path(out) / MANIFEST}"
        )
    for s in skipped[:20]:
        print(f"skipped: {s['id']}: {s['reason']}", file=sys.stderr)
    kept = {k: summary[k] for k in ("count", "dim", "shards", "complete") if k in summary}
    return {**kept, "skipped": len(skipped), "out": out}


def ids_sha256(ids: list[str]) -> str:
    """Hash of the product order: shards are only reusable for the same products in the same order."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def shard_name(block: int, ext: str) -> str:
    return f"shard-{block:06d}.{ext}"


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The export manifest of ``folder`` (one-line error if absent or unreadable)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not an embedding export (no {MANIFEST}); run `multimodal export` first")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is corrupt: {err}") from err


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes a hard link to ``source`` (a copy across file systems), replacing it atomically."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


class ShardSink:
    """The export folder as a sink of :func:`multimodal.writers.run_job`: each block is one shard.

    Args:
        folder: the export folder.
        fmt: ``safetensors``, ``npy`` or ``parquet`` (:mod:`multimodal.search.vector_files`).
        dtype: ``float16`` or ``float32``.
        metadata: id -> {column: value} stored next to the vectors, or a :class:`ManifestMetadata` giving that
            for each block's rows (read from the manifest rows of that block).
        checkpoint: the checkpoint computing the vectors (linked into the folder when the export completes; None:
            not here, as for an ONNX export run without torch).
        dim: the vectors' width (a Parquet shard whose every product was skipped keeps the others' schema); wider
            rows are cut to their first ``dim`` dimensions, L2-renormalised (``--dim``,
            :mod:`multimodal.search.matryoshka`).
    """

    def __init__(
        self,
        folder: Path,
        fmt: str,
        dtype: str,
        metadata: dict[str, dict[str, Any]] | ManifestMetadata,
        checkpoint: Path | None,
        dim: int = 0,
    ) -> None:
        self.folder, self.fmt, self.dtype = Path(folder), fmt, dtype
        self.output = self.folder
        self.metadata, self.checkpoint = metadata, Path(checkpoint) if checkpoint is not None else None
        streamed = isinstance(metadata, ManifestMetadata)
        self.columns = list(metadata.columns if streamed else next(iter(metadata.values()), {}))
        check_columns(fmt, self.columns)
        self.dim = dim

    def describe(self) -> str:
        return f"export folder {self.folder}"

    def occupied(self) -> bool:
        return self.folder.is_dir() and any(self.folder.iterdir())

    def exists(self) -> bool:
        """A complete export with every shard in place (a shard deleted by hand is computed again)."""
        if not (self.folder / MANIFEST).is_file():
            return False
        manifest = read_manifest(self.folder)
        return bool(manifest.get("complete")) and all(self.block_done(b) for b in range(manifest.get("shards", 0)))

    def block_done(self, block: int) -> bool:
        return (self.folder / vector_file(block, self.fmt)).is_file() and (
            self.folder / shard_name(block, "parquet")
        ).is_file()

    def write_block(self, block: int, rows: list[Row]) -> None:
        done = [r for r in rows if "error" not in r]
        skipped = [{"id": r["id"], "reason": r["error"]} for r in rows if "error" in r]
        empty = np.zeros((0, self.dim) if self.fmt == "parquet" else 0, np.float32)
        vectors = np.stack([np.asarray(r["embedding"], np.float32) for r in done]) if done else empty
        if done:  # --dim: the first dimensions, renormalised
            from multimodal.search.matryoshka import narrowed

            vectors = narrowed(vectors, self.dim)
        vectors = vectors.astype(self.dtype)  # float16 rounds to nearest even, as torch's cast does
        metadata = self.metadata(rows) if isinstance(self.metadata, ManifestMetadata) else self.metadata
        table = pd.DataFrame(
            [{"id": r["id"], **metadata.get(r["id"], {})} for r in done], columns=["id", *self.columns]
        )
        meta = self.folder / shard_name(block, "parquet")
        tmp = meta.with_name("." + meta.name + ".tmp")
        table.to_parquet(tmp, index=False)
        os.replace(tmp, meta)
        skipped_path = self.folder / shard_name(block, "skipped.json")
        if skipped:
            write_json_atomic(skipped_path, {"skipped": skipped})
        else:
            skipped_path.unlink(missing_ok=True)
        vector_path = self.folder / vector_file(block, self.fmt)
        save_vectors(vector_path, vectors, table)  # last: marks the shard done

    def finalize(self, blocks: Blocks, spec: dict[str, Any]) -> dict[str, Any]:
        """Every shard exists: write ``products.parquet``, link the checkpoint, write the complete manifest."""
        tables = []
        for b in range(blocks.count):
            path = self.folder / shard_name(b, "parquet")
            try:
                tables.append(pd.read_parquet(path))
            except Exception as err:  # noqa: BLE001 - any read failure means a damaged shard
                raise UserError(
                    f"corrupt shard {path} ({type(err).__name__}): delete it and its vector file, then re-run"
                ) from None
        products = pd.concat(tables, ignore_index=True)
        if products["id"].duplicated().any():
            dupes = products["id"][products["id"].duplicated()].tolist()[:5]
            raise UserError(f"export {self.folder}: duplicate ids {dupes}")
        products.to_parquet(self.folder / PRODUCTS, index=False)
        if self.checkpoint is not None:
            link_or_copy(self.checkpoint, self.folder / CHECKPOINT)
        skipped = [
            item
            for b in range(blocks.count)
            if (self.folder / shard_name(b, "skipped.json")).is_file()
            for item in json.loads((self.folder / shard_name(b, "skipped.json")).read_text())["skipped"]
        ]
        manifest = {**spec, "checkpoint": CHECKPOINT, "shards": blocks.count, "complete": True}
        manifest.update(count=len(products), skipped=skipped)  # skipped: products that could not be read
        write_json_atomic(self.folder / MANIFEST, manifest)
        close_job(self, spec, blocks)
        return manifest

    def incomplete(self, blocks: Blocks, spec: dict[str, Any], missing: list[int]) -> None:
        """The manifest of an export stopped early: which shards are still missing."""
        manifest = {**spec, "shards": blocks.count, "complete": False, "missing_shards": missing}
        write_json_atomic(self.folder / MANIFEST, manifest)


def load_export(folder: str | Path) -> tuple[dict[str, Any], np.ndarray, pd.DataFrame]:
    """The manifest, all vectors ``(N, E)`` float32 and the products table (id + metadata) of a complete export."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not manifest.get("complete"):
        raise UserError(f"export {folder} is incomplete: re-run `multimodal export` with the same --out to finish it")
    parts, tables = [], []
    for block in range(manifest["shards"]):
        vec = load_vectors(folder / vector_file(block, manifest["format"]))
        meta_path = folder / shard_name(block, "parquet")
        try:
            meta = pd.read_parquet(meta_path)
        except Exception as err:  # noqa: BLE001
            raise UserError(f"missing or corrupt shard {meta_path}: re-run `multimodal export`") from err
        if vec.ndim != 2 or len(vec) != len(meta) or (len(vec) and vec.shape[1] != manifest["dim"]):
            raise UserError(
                f"corrupt shard {folder / vector_file(block, manifest['format'])}: "
                f"shape {vec.shape}, {len(meta)} ids, dim {manifest['dim']}"
            )
        parts.append(vec)
        tables.append(meta)
    vectors = np.concatenate(parts) if parts else np.zeros((0, manifest["dim"]), np.float32)
    products = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame({"id": []})
    if len(vectors) != manifest["count"]:
        raise UserError(f"export {folder}: {len(vectors)} vectors in the shards, the manifest says {manifest['count']}")
    return manifest, vectors, products
