"""Query encoding: the towers of the checkpoint kept with an index turn query texts and photos into vectors, and
its re-ranker scores (query, candidate) pairs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from multimodal.errors import UserError
from multimodal.search.index import SearchIndex, index_checkpoint

if TYPE_CHECKING:
    from multimodal.search.retriever import ProductRetriever

QueryImage = Path | Image.Image


class QueryEncoder:
    """The towers of the checkpoint kept with an index (or named by its export), turning text or photos into query
    vectors. Loads the checkpoint alone: no catalogue is read, whatever its size."""

    def __init__(self, index: SearchIndex, device: str = "cpu", runtime: str = "torch") -> None:
        from multimodal.loading import file_sha256, load
        from multimodal.search.retriever import ProductRetriever

        export = index.info["export"]
        ckpt = index_checkpoint(index)
        if not ckpt.is_file():
            raise UserError(f"the checkpoint of index {index.folder}, {ckpt}, is missing: rebuild the index")
        expected = export.get("checkpoint_sha256")
        if expected and file_sha256(ckpt) != expected:
            raise UserError(f"{ckpt} changed since the export (sha256 differs): re-run `multimodal export`")
        # the query towers on the chosen runtime; the re-ranker (when asked for) always runs eager
        self.model: ProductRetriever = load(ckpt, task=ProductRetriever, runtime=runtime).model.eval().to(device)
        self.device, self.checkpoint, self.runtime = device, ckpt, runtime
        self._eager: ProductRetriever | None = self.model if runtime == "torch" else None
        self.image_root = Path(export["image_root"])
        self.product_columns = self.model.product_columns or export.get("columns") or []
        self.transform = self.model.image_transform(False)

    def for_index(self, index: SearchIndex) -> QueryEncoder:
        """This encoder for another build of the same checkpoint (the SHA-256 its export records): the loaded model
        is shared (inference only reads it); the paths that belong to a build are the new build's, as the old one
        may be deleted once unused."""
        export = index.info["export"]
        moved = copy.copy(self)
        moved.checkpoint = index_checkpoint(index)  # where a lazily loaded re-ranker is read from
        moved.image_root = Path(export["image_root"])
        moved.product_columns = self.model.product_columns or export.get("columns") or []
        return moved

    @property
    def can_rerank(self) -> bool:
        if self._eager is None:
            return bool(self.model.settings.get("reranker"))
        return self._eager.reranker is not None

    @property
    def eager(self) -> ProductRetriever:
        """The checkpoint's model in PyTorch (the re-ranker's runtime), loaded when first needed."""
        if self._eager is None:
            from multimodal.loading import load
            from multimodal.search.retriever import ProductRetriever

            self._eager = load(self.checkpoint, task=ProductRetriever).model.eval().to(self.device)
        return self._eager

    @torch.inference_mode()
    def texts(self, queries: list[str]) -> np.ndarray:
        """Query vectors ``(Q, E)`` of text queries."""
        if any(not q or not q.strip() for q in queries):
            raise UserError("empty query text")
        enc = self.model.text.tokenize([q.strip() for q in queries])
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        return self.model.embed_text(ids, mask).float().cpu().numpy()

    def pixels(self, images: list[QueryImage]) -> torch.Tensor:
        """``(N, 3, H, W)`` eval-transformed pixels of paths or PIL images."""
        from multimodal.data.images import load_image, to_rgb

        loaded = [to_rgb(im) if isinstance(im, Image.Image) else load_image(Path(im)) for im in images]
        return torch.stack([self.transform(im) for im in loaded]).to(self.device)

    @torch.inference_mode()
    def images(self, images: list[QueryImage]) -> np.ndarray:
        """Query vectors ``(Q, E)`` of photo queries."""
        return self.model.embed_image(self.pixels(images)).float().cpu().numpy()

    @torch.inference_mode()
    def rerank(self, products: list[dict[str, Any]], text: str | None, image: QueryImage | None) -> list[float]:
        """Re-ranker scores of (query, candidate): a text query meets candidate photos, a photo candidate texts."""
        model = self.eager
        if text is not None:
            paths = [p.get("image_path") for p in products]
            if any(p is None for p in paths):
                raise UserError("re-ranking a text query needs every candidate's photo; some have none")
            pixels = self.pixels([self.image_root / str(p) for p in paths])
            enc = model.text.tokenize([text] * len(products))
        else:
            assert image is not None
            pixels = self.pixels([image]).expand(len(products), -1, -1, -1)
            joined = [". ".join(str(p[c]) for c in self.product_columns if p.get(c) is not None) for p in products]
            enc = model.text.tokenize(joined)
        vision = model.vision(pixels)
        tokens = model.text(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
        return model.match_scores(vision, tokens).float().cpu().tolist()
