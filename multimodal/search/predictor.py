"""``Retriever``: the Python API of a trained :class:`ProductRetriever` (open_clip's ``encode_text`` /
``encode_image``, AutoGluon's ``extract_embedding``). Every vector is L2-normalised, so a dot product is a cosine."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from multimodal.errors import UserError
from multimodal.inference import Predictor, Row
from multimodal.search.task import TASK


class Retriever(Predictor):
    """Query and product vectors of a trained retriever, as float32 NumPy arrays ``(N, E)``.

    Example::

        retriever = multimodal.load("retrieval.ckpt")
        q = retriever.embed_text(["black leather watch"])
        v = retriever.embed_images(["a.jpg", pil_image])
        scores = q @ v.T
    """

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
        vectors = prediction["embeddings"].float().cpu()
        return [{"id": i, "embedding": v} for i, v in zip(prediction["ids"], vectors, strict=True)]

    @torch.inference_mode()
    def embed_text(self, texts: list[str] | str) -> np.ndarray:
        """Query vectors ``(N, E)`` of text queries."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise UserError("embed_text needs a non-empty list of non-empty strings")
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.model.text.tokenize([t.strip() for t in texts[start : start + self.batch_size]])
            ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
            out.append(self.model.embed_text(ids, mask).float().cpu())
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def embed_images(self, images: list[Any] | Any) -> np.ndarray:
        """Photo-query vectors ``(N, E)`` of image paths or PIL images (an unreadable image is a one-line error)."""
        images = images if isinstance(images, list | tuple) else [images]
        records = self.records(list(images))
        dataset = self.dataset(records)
        out = []
        for start in range(0, len(dataset), self.batch_size):
            items = [dataset[i] for i in range(start, min(len(dataset), start + self.batch_size))]
            bad = [it for it in items if "error" in it]
            if bad:
                raise UserError(f"image {bad[0]['id']}: {bad[0]['error']}")
            pixels = torch.stack([it["pixel_values"] for it in items]).to(self.device)
            out.append(self.model.embed_image(pixels).float().cpu())
        return torch.cat(out).numpy()

    encode_text = embed_text
    encode_image = embed_images

    def extract_embedding(self, inputs: Any) -> np.ndarray:
        """Product vectors ``(N, E)`` of catalogue rows (what ``multimodal export`` stores); NaN rows for inputs
        that could not be read."""
        rows = self.run(inputs)
        return np.stack(
            [r["embedding"].numpy() if "embedding" in r else np.full(self.dim, np.nan, np.float32) for r in rows]
        )
