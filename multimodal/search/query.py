"""The query side of search: texts, photos or catalogue products -> query vectors -> top-k products, optional
re-ranking. Queries are answered in batches (one forward pass per kind, one FAISS search for all), so the command
line (one query) and the HTTP service (a dynamic batch of concurrent queries) share this code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from multimodal.errors import UserError
from multimodal.search.index import SearchIndex, index_checkpoint

QueryImage = Path | Image.Image


@dataclass
class Query:
    """One search: exactly one of ``text``, ``image`` (a path or a PIL image) or ``like`` (a product id whose
    stored vector is the query); ``k`` results, re-ranked from the top ``rerank`` when it is positive."""

    text: str | None = None
    image: QueryImage | None = None
    like: str | None = None
    k: int = 10
    rerank: int = 0

    @property
    def kind(self) -> str:
        given = [name for name in ("text", "image", "like") if getattr(self, name) is not None]
        if len(given) != 1:
            raise UserError(f"a query needs exactly one of text, image or like, not {given or 'none'}")
        return given[0]


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
        self.model: ProductRetriever = load(ckpt, task=ProductRetriever).model.eval().to(device)
        self.device = device
        self.image_root = Path(export["image_root"])
        self.product_columns = self.model.product_columns or export.get("columns") or []
        self.transform = self.model.image_transform(False)

    @property
    def can_rerank(self) -> bool:
        return self.model.reranker is not None

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
        model = self.model
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


def check_query(index: SearchIndex, query: Query, can_rerank: bool) -> None:
    """One-line errors for a query that cannot be answered: bad k, re-ranking without a re-ranker, unknown id."""
    kind = query.kind
    total = index.index.ntotal
    if kind == "text" and not str(query.text).strip():
        raise UserError("empty query text")
    if not 1 <= query.k <= total:
        raise UserError(f"k={query.k} is outside 1..{total} (the index holds {total} products)")
    if query.rerank:
        if kind == "like":
            raise UserError("rerank applies to text and photo queries, not to 'like'")
        if not 0 < query.rerank <= total:
            raise UserError(f"rerank={query.rerank} is outside 0..{total} (the index holds {total} products)")
        if not can_rerank:
            raise UserError("this index's checkpoint was trained without a re-ranker (model.reranker): no rerank")
    if kind == "like" and str(query.like) not in index.rows_by_id:
        raise UserError(f"product id '{query.like}' is not in the index")


def query_vectors(index: SearchIndex, encoder: QueryEncoder | None, queries: list[Query]) -> np.ndarray:
    """``(Q, E)`` vectors: all text queries in one forward pass, all photo queries in another, stored vectors for
    ``like`` (which needs no encoder)."""
    import faiss

    out = np.zeros((len(queries), index.dim), np.float32)
    by_kind: dict[str, list[int]] = {"text": [], "image": [], "like": []}
    for i, q in enumerate(queries):
        by_kind[q.kind].append(i)
    if by_kind["text"] or by_kind["image"]:
        if encoder is None:
            raise UserError("text and photo queries need the index's checkpoint")
        if encoder.model.embed_dim != index.dim:
            raise UserError(
                f"the model embeds in {encoder.model.embed_dim} dimensions, the index holds {index.dim}: "
                "rebuild the index"
            )
    if by_kind["text"]:
        out[by_kind["text"]] = encoder.texts([str(queries[i].text) for i in by_kind["text"]])  # type: ignore[union-attr]
    if by_kind["image"]:
        out[by_kind["image"]] = encoder.images([queries[i].image for i in by_kind["image"]])  # type: ignore[union-attr,misc]
    if by_kind["like"]:
        if isinstance(index.index, faiss.IndexIVF):
            index.index.make_direct_map()
        for i in by_kind["like"]:
            out[i] = index.index.reconstruct(index.rows_by_id[str(queries[i].like)])
    return out


def search_many(index: SearchIndex, encoder: QueryEncoder | None, queries: list[Query]) -> list[list[dict[str, Any]]]:
    """Top-k products of each query (``score`` plus the products table's columns; ``rerank_score`` when re-ranked).

    A ``like`` query leaves the product itself out. Every query is checked first (:func:`check_query`).
    """
    can_rerank = encoder is not None and encoder.can_rerank
    for q in queries:
        check_query(index, q, can_rerank)
    vectors = query_vectors(index, encoder, queries)
    depth = min(index.index.ntotal, max(max(q.k, q.rerank) + (q.like is not None) for q in queries))
    scores, rows = index.search(vectors, depth)
    out = []
    for q, q_scores, q_rows in zip(queries, scores, rows, strict=True):
        found = [(int(r), float(s)) for r, s in zip(q_rows, q_scores, strict=True) if r >= 0]
        if q.like is not None:
            found = [(r, s) for r, s in found if str(index.products["id"].iat[r]) != q.like]
        found = found[: max(q.k, q.rerank)]
        records = index.products.iloc[[r for r, _ in found]].to_dict("records")
        results = [{"score": s, **rec} for (_, s), rec in zip(found, records, strict=True)]
        if q.rerank:
            assert encoder is not None
            matches = encoder.rerank(results, q.text, q.image)
            # ITM logit plus the contrastive logit (cosine / temperature): ITM alone was worse on the benchmark
            scale = float(encoder.model.logit_scale.detach().exp())
            for res, m in zip(results, matches, strict=True):
                res["rerank_score"] = m + scale * res["score"]
            results.sort(key=lambda r: -r["rerank_score"])
        out.append(results[: q.k])
    return out


def search(
    index: SearchIndex, encoder: QueryEncoder, text: str | None, image: str | None, k: int, rerank: int = 0
) -> list[dict[str, Any]]:
    """Top-k products for one text or photo query, optionally re-ranked from the top ``rerank``."""
    query = Query(text=text, image=Path(image) if image is not None else None, k=k, rerank=rerank)
    return search_many(index, encoder, [query])[0]


def more_like(index: SearchIndex, item_id: str, k: int) -> list[dict[str, Any]]:
    """The k products nearest to a catalogue product's own vector (the product itself left out)."""
    return search_many(index, None, [Query(like=item_id, k=k)])[0]
