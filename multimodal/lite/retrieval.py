"""The retriever without torch: its export's query and product graphs on NumPy (the vectors of
:class:`multimodal.onnx.runtime.OnnxRetriever`), the Python API (``embed_text``, ``embed_images``,
``extract_embedding``) and ``multimodal export``'s job, writing the shard files of
:class:`multimodal.search.export.ShardSink` with NumPy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from multimodal.errors import UserError
from multimodal.lite.base import LiteModel, Predictor, Row, collate
from multimodal.search.task import TASK


class LiteRetriever(LiteModel):
    """A :class:`~multimodal.search.retriever.ProductRetriever` export: query and product vectors."""

    def __init__(self, folder: str | Path, int8: bool = False) -> None:
        super().__init__(folder, int8)
        self.embed_dim: int = int(self.settings["embed_dim"])
        self.product: str = self.settings["product"]
        self.query_columns = self.settings.get("query_columns")
        self.product_columns = self.settings.get("product_columns")
        self.export.check_recorded_widths()

    def widths(self, name: str) -> dict[str, tuple[str, int]]:
        return {"vector": ("embed_dim", self.embed_dim)} if name.startswith("embed_") else {}

    def embed_text(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """``(B, E)`` query vectors of ``input_ids`` / ``attention_mask``."""
        return self.export.run("embed_text", inputs)["vector"]

    def embed_image(self, pixel_values: np.ndarray) -> np.ndarray:
        """``(B, E)`` vectors of ``(B, 3, H, W)`` photos."""
        return self.export.run("embed_image", {"pixel_values": pixel_values})["vector"]

    def embed_products(self, batch: dict[str, Any]) -> np.ndarray:
        if self.product == "image":
            return self.embed_image(batch["pixel_values"])
        inputs = dict(batch)
        if "product_input_ids" not in batch:
            inputs.update(product_input_ids=batch["input_ids"], product_attention_mask=batch["attention_mask"])
        return self.export.run("embed_product", inputs)["vector"]

    def predict_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        if not batch["ids"]:
            return {"ids": [], "embeddings": np.zeros((0, self.embed_dim), np.float32)}
        return {"ids": batch["ids"], "embeddings": self.embed_products(batch)}


class Retriever(Predictor):
    """:class:`multimodal.search.predictor.Retriever` without torch: L2-normalised float32 vectors ``(N, E)``."""

    task_name: ClassVar[str] = TASK.model

    @property
    def dim(self) -> int:
        return int(self.model.embed_dim)

    def required_columns(self) -> list[str]:
        model = self.model
        image = [self.columns.image] if model.product != "text" else []
        texts = list(model.product_columns or self.columns.texts) if model.product != "image" else []
        return [*image, *texts]

    def rows(self, prediction: dict[str, Any]) -> list[Row]:
        vectors = np.asarray(prediction["embeddings"], dtype=np.float32)
        return [{"id": i, "embedding": v} for i, v in zip(prediction["ids"], vectors, strict=True)]

    def embed_text(self, texts: list[str] | str) -> np.ndarray:
        """Query vectors ``(N, E)`` of text queries."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise UserError("embed_text needs a non-empty list of non-empty strings")
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.model.pre.queries([t.strip() for t in texts[start : start + self.batch_size]])
            out.append(self.model.embed_text(enc).astype(np.float32))
        return np.concatenate(out)

    def embed_images(self, images: list[Any] | Any) -> np.ndarray:
        """Photo-query vectors ``(N, E)`` of image paths or PIL images (an unreadable image is a one-line error)."""
        images = images if isinstance(images, list | tuple) else [images]
        dataset = self.dataset(self.records(list(images)))
        out = []
        for start in range(0, len(dataset), self.batch_size):
            items = dataset.items(range(start, min(len(dataset), start + self.batch_size)))
            bad = [it for it in items if "error" in it]
            if bad:
                raise UserError(f"image {bad[0]['id']}: {bad[0]['error']}")
            out.append(self.model.embed_image(collate(items, self.model.pre)["pixel_values"]).astype(np.float32))
        return np.concatenate(out)

    encode_text = embed_text
    encode_image = embed_images

    def extract_embedding(self, inputs: Any) -> np.ndarray:
        """Product vectors ``(N, E)`` of catalogue rows; NaN rows for inputs that could not be read."""
        rows = self.run(inputs)
        return np.stack([r["embedding"] if "embedding" in r else np.full(self.dim, np.nan, np.float32) for r in rows])


def export_vectors(job: Any) -> dict[str, Any] | None:
    """``multimodal export`` of a retriever export: product vectors in shards and their products table
    (:func:`multimodal.search.job.vectors_job`, as the full install writes them); the job records what the full
    install's ONNX path records, and the ONNX folder its queries are encoded with."""
    from multimodal.search.job import vectors_job

    retriever = Retriever(job.loaded, batch_size=job.options.batch_size)
    model_name = TASK.onnx.runtime.rsplit(".", 1)[-1]  # what the full install's ONNX path records: one job on both
    return vectors_job(job, retriever, model_name, **export_recorded(job.loaded))


def export_recorded(loaded: Any) -> dict[str, Any]:
    """What a vector export made from an ONNX export folder records, on either install: the folder the queries
    are encoded with (``onnx_export``, so the index runs without torch) and the source checkpoint, linked when it
    is here and unchanged (the full install's re-ranker)."""
    return {"checkpoint": source_checkpoint(loaded), "onnx_export": str(loaded.path.resolve())}


def source_checkpoint(loaded: Any) -> Path | None:
    """The checkpoint the export was made from when it is here and unchanged (linked into the vector export, for
    the full install's re-ranker), else None."""
    from multimodal.artefact import file_sha256

    source = Path(loaded.model.info.get("checkpoint") or "")
    ok = source.is_file() and file_sha256(source) == loaded.checkpoint_sha256
    return source if ok else None


MODEL, API, JOB = LiteRetriever, Retriever, export_vectors  # what the task contract's ``lite`` module declares
