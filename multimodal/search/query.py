"""The query side of search: a text or a photo -> query vector -> top-k products, optional re-ranking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimodal.errors import UserError
from multimodal.search.index import SearchIndex, index_checkpoint


class QueryEncoder:
    """The towers of the checkpoint kept with an index (or named by its export), turning text or photos into query
    vectors. Loads the checkpoint alone: no catalogue is read, whatever its size."""

    def __init__(self, index: SearchIndex, device: str = "cpu") -> None:
        from multimodal.loading import file_sha256, load
        from multimodal.search.retriever import ProductRetriever

        export = index.info["export"]
        ckpt = index_checkpoint(index)
        if not ckpt.is_file():
            raise UserError(f"the checkpoint of index {index.folder}, {ckpt}, is missing: rebuild the index")
        expected = export.get("checkpoint_sha256")
        if expected and file_sha256(ckpt) != expected:
            raise UserError(f"{ckpt} changed since the export (sha256 differs): re-run `multimodal export`")
        self.model: ProductRetriever = load(ckpt, task=ProductRetriever).model.to(device)
        self.device = device
        self.image_root = Path(export["image_root"])
        self.product_columns = self.model.product_columns or export.get("columns") or []

    @torch.inference_mode()
    def text(self, query: str) -> np.ndarray:
        if not query or not query.strip():
            raise UserError("empty query text")
        enc = self.model.text.tokenize([query.strip()])
        return (
            self.model.embed_text(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
            .float()
            .cpu()
            .numpy()
        )

    def pixels(self, path: Path) -> torch.Tensor:
        from multimodal.data.images import load_image

        return self.model.image_transform(False)(load_image(path)).unsqueeze(0).to(self.device)  # (1, 3, H, W)

    @torch.inference_mode()
    def image(self, path: Path) -> np.ndarray:
        return self.model.embed_image(self.pixels(path)).float().cpu().numpy()

    @torch.inference_mode()
    def rerank(self, products: list[dict[str, Any]], text: str | None, image: Path | None) -> list[float]:
        """Re-ranker scores of (query, candidate): a text query meets candidate photos, a photo candidate texts."""
        model = self.model
        if text is not None:
            paths = [p.get("image_path") for p in products]
            if any(p is None for p in paths):
                raise UserError("re-ranking a text query needs every candidate's photo; some have none")
            pixels = torch.cat([self.pixels(self.image_root / str(p)) for p in paths])
            enc = model.text.tokenize([text] * len(products))
        else:
            assert image is not None
            pixels = self.pixels(image).expand(len(products), -1, -1, -1)
            joined = [". ".join(str(p[c]) for c in self.product_columns if p.get(c) is not None) for p in products]
            enc = model.text.tokenize(joined)
        vision = model.vision(pixels)
        tokens = model.text(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
        return model.match_scores(vision, tokens).float().cpu().tolist()


def search(
    index: SearchIndex, encoder: QueryEncoder, text: str | None, image: str | None, k: int, rerank: int = 0
) -> list[dict[str, Any]]:
    """Top-k products for one query, optionally re-ranked from the top ``rerank``."""
    if encoder.model.embed_dim != index.dim:
        raise UserError(
            f"the model embeds in {encoder.model.embed_dim} dimensions, the index holds {index.dim}: rebuild the index"
        )
    query = encoder.text(text) if text is not None else encoder.image(Path(str(image)))
    depth = max(k, rerank)
    if depth > index.index.ntotal:
        raise UserError(f"k={depth} is larger than the index ({index.index.ntotal} products)")
    scores, rows = index.search(query, depth)
    found = [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0]
    records = index.products.iloc[[r for r, _ in found]].to_dict("records")
    results = [{"score": s, **rec} for (_, s), rec in zip(found, records, strict=True)]
    if rerank:
        matches = encoder.rerank(results, text, Path(str(image)) if image is not None else None)
        # ITM logit plus the contrastive logit (cosine / temperature): ITM alone was worse on the benchmark
        scale = float(encoder.model.logit_scale.detach().exp())
        for res, m in zip(results, matches, strict=True):
            res["rerank_score"] = m + scale * res["score"]
        results.sort(key=lambda r: -r["rerank_score"])
    return results[:k]


def more_like(index: SearchIndex, item_id: str, k: int) -> list[dict[str, Any]]:
    """The k products nearest to a catalogue product's own vector (the product itself left out)."""
    import faiss

    rows = index.products.index[index.products["id"].astype(str) == item_id].tolist()
    if not rows:
        raise UserError(f"product id '{item_id}' is not in the index")
    if isinstance(index.index, faiss.IndexIVF):
        index.index.make_direct_map()
    vector = index.index.reconstruct(rows[0])[None]
    scores, found = index.search(vector, min(k + 1, index.index.ntotal))
    records = index.products.iloc[found[0]].to_dict("records")
    results = [{"score": float(s), **rec} for s, rec in zip(scores[0], records, strict=True) if rec["id"] != item_id]
    return results[:k]
