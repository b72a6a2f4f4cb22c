"""The query side of search: texts, photos or catalogue products -> query vectors -> top-k products, optional
re-ranking. Queries are answered in batches (one forward pass per kind, one FAISS search for all), so the command
line (one query) and the HTTP service (a dynamic batch of concurrent queries) share this code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from multimodal.errors import UserError
from multimodal.search.filters import Filter
from multimodal.search.index import LABEL, SearchIndex, index_checkpoint

if TYPE_CHECKING:
    from multimodal.search.retriever import ProductRetriever

QueryImage = Path | Image.Image
HIDDEN = frozenset({LABEL})


@dataclass
class Query:
    """One search: exactly one of ``text``, ``image`` (a path or a PIL image) or ``like`` (a product id whose
    stored vector is the query); ``k`` results, re-ranked from the top ``rerank`` when it is positive.

    ``mode``: ``dense`` (vectors), ``lexical`` (BM25 over the index's ``--lexical`` columns) or ``hybrid`` (both
    lists fused by ``fusion``: ``rrf`` or ``weighted`` with ``weight`` the dense share); ``where``: a metadata
    filter (:mod:`multimodal.search.filters`) applied inside FAISS and BM25."""

    text: str | None = None
    image: QueryImage | None = None
    like: str | None = None
    k: int = 10
    rerank: int = 0
    mode: str = "dense"
    where: str | None = None
    fusion: str = "rrf"
    weight: float = 0.5

    @property
    def kind(self) -> str:
        given = [name for name in ("text", "image", "like") if getattr(self, name) is not None]
        if len(given) != 1:
            raise UserError(f"a query needs exactly one of text, image or like, not {given or 'none'}")
        return given[0]


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


MODES = ("dense", "lexical", "hybrid")
FUSIONS = ("rrf", "weighted")
HYBRID_DEPTH = 100  # candidates taken from each list before fusing them


def check_query(index: SearchIndex, query: Query, can_rerank: bool) -> None:
    """One-line errors for a query that cannot be answered: bad k, re-ranking without a re-ranker, unknown id, a
    lexical mode without a text query or a BM25 index, a bad filter."""
    kind = query.kind
    total = index.count
    if kind == "text" and not str(query.text).strip():
        raise UserError("empty query text")
    if not 1 <= query.k <= total:
        raise UserError(f"k={query.k} is outside 1..{total} (the index holds {total} products)")
    if query.mode not in MODES:
        raise UserError(f"unknown search mode '{query.mode}' (choose {', '.join(MODES)})")
    if query.fusion not in FUSIONS:
        raise UserError(f"unknown fusion '{query.fusion}' (choose {', '.join(FUSIONS)})")
    if not 0.0 <= query.weight <= 1.0:
        raise UserError(f"weight={query.weight} is outside 0..1 (the dense share of a weighted fusion)")
    if query.mode != "dense":
        if kind != "text":
            raise UserError(f"mode '{query.mode}' needs a text query; photo and 'like' queries are dense only")
        if index.lexical is None:
            raise UserError(
                f"mode '{query.mode}' needs a BM25 index: rebuild with `multimodal index ... --lexical COLUMNS`"
            )
    if query.rerank:
        if kind == "like":
            raise UserError("rerank applies to text and photo queries, not to 'like'")
        if not 0 < query.rerank <= total:
            raise UserError(f"rerank={query.rerank} is outside 0..{total} (the index holds {total} products)")
        if not can_rerank:
            raise UserError("this index's checkpoint was trained without a re-ranker (model.reranker): no rerank")
    if kind == "like" and str(query.like) not in index.rows_by_id:
        raise UserError(f"product id '{query.like}' is not in the index")
    if query.where is not None:
        Filter(query.where, index.products, HIDDEN, index.filter_cache)  # parses, checks; evaluated per batch


def query_vectors(index: SearchIndex, encoder: QueryEncoder | None, queries: list[Query]) -> np.ndarray:
    """``(Q, E)`` vectors: all text queries in one forward pass, all photo queries in another, stored vectors for
    ``like`` (which needs no encoder)."""
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
        rows = np.array([index.rows_by_id[str(queries[i].like)] for i in by_kind["like"]])
        out[by_kind["like"]] = index.reconstruct(rows)
    return out


Hits = list[tuple[int, float]]  # (products-table row, score), best first


def _candidates(
    index: SearchIndex, queries: list[Query], vectors: dict[int, np.ndarray]
) -> tuple[dict[int, Hits], dict[int, Hits]]:
    """Dense and lexical candidate lists of each query: one FAISS search and one BM25 search per filter."""
    dense: dict[int, Hits] = {}
    lexical: dict[int, Hits] = {}
    groups: dict[str | None, list[int]] = {}
    for i, q in enumerate(queries):
        groups.setdefault(q.where, []).append(i)
    for where, members in groups.items():
        allowed = Filter(where, index.products, HIDDEN, index.filter_cache).mask() if where is not None else None

        def depth(q: Query) -> int:
            wide = HYBRID_DEPTH if q.mode == "hybrid" else 0
            return min(index.count, max(q.k, q.rerank, wide) + (q.like is not None))

        want = [i for i in members if queries[i].mode != "lexical"]
        if want:
            scores, rows = index.search(
                np.stack([vectors[i] for i in want]), max(depth(queries[i]) for i in want), allowed
            )
            for i, s, r in zip(want, scores, rows, strict=True):
                dense[i] = [(int(row), float(sc)) for row, sc in zip(r, s, strict=True) if row >= 0]
        want = [i for i in members if queries[i].mode != "dense"]
        if want:
            lex = index.lexical
            scores, rows = lex.search(
                [str(queries[i].text) for i in want], max(depth(queries[i]) for i in want), allowed
            )
            for i, s, r in zip(want, scores, rows, strict=True):
                lexical[i] = [(int(row), float(sc)) for row, sc in zip(r, s, strict=True) if row >= 0]
    return dense, lexical


def _fuse(q: Query, dense: Hits | None, lexical: Hits | None) -> Hits:
    from multimodal.search.lexical import reciprocal_rank_fusion, weighted_fusion

    if q.mode == "dense":
        return dense or []
    if q.mode == "lexical":
        return lexical or []

    def arrays(hits: Hits) -> tuple[np.ndarray, np.ndarray]:
        return np.array([s for _, s in hits], np.float32), np.array([r for r, _ in hits], np.int64)

    d, lx = arrays(dense or []), arrays(lexical or [])
    if q.fusion == "weighted":
        return weighted_fusion(d, lx, q.weight)
    return reciprocal_rank_fusion([d[1], lx[1]])


def search_many(index: SearchIndex, encoder: QueryEncoder | None, queries: list[Query]) -> list[list[dict[str, Any]]]:
    """Top-k products of each query (``score`` plus the products table's columns; ``rerank_score`` when re-ranked).

    ``score`` is the cosine for dense search, BM25 for lexical, the fused score (RRF or weighted) for hybrid. A
    ``like`` query leaves the product itself out. Every query is checked first (:func:`check_query`).
    """
    can_rerank = encoder is not None and encoder.can_rerank
    for q in queries:
        check_query(index, q, can_rerank)
    need = [i for i, q in enumerate(queries) if q.mode != "lexical" or q.rerank]
    vectors = dict(zip(need, query_vectors(index, encoder, [queries[i] for i in need]), strict=True)) if need else {}
    dense, lexical = _candidates(index, queries, vectors)
    out = []
    for i, q in enumerate(queries):
        found = _fuse(q, dense.get(i), lexical.get(i))
        if q.like is not None:
            found = [(r, s) for r, s in found if str(index.products["id"].iat[r]) != q.like]
        found = found[: max(q.k, q.rerank)]
        records = index.products.iloc[[r for r, _ in found]].drop(columns=[LABEL]).to_dict("records")
        results = [{"score": s, **rec} for (_, s), rec in zip(found, records, strict=True)]
        if q.rerank and results:
            assert encoder is not None
            matches = encoder.rerank(results, q.text, q.image)
            # ITM logit plus the contrastive logit (cosine / temperature): ITM alone was worse on the benchmark
            cosines = index.reconstruct(np.array([r for r, _ in found])) @ vectors[i]
            scale = float(encoder.model.logit_scale.detach().exp())
            for res, m, c in zip(results, matches, cosines.tolist(), strict=True):
                res["rerank_score"] = m + scale * c
            results.sort(key=lambda r: -r["rerank_score"])
        out.append(results[: q.k])
    return out


def search(
    index: SearchIndex,
    encoder: QueryEncoder,
    text: str | None,
    image: str | None,
    k: int,
    rerank: int = 0,
    mode: str = "dense",
    where: str | None = None,
) -> list[dict[str, Any]]:
    """Top-k products for one text or photo query, optionally filtered, hybrid, re-ranked from the top ``rerank``."""
    query = Query(
        text=text, image=Path(image) if image is not None else None, k=k, rerank=rerank, mode=mode, where=where
    )
    return search_many(index, encoder, [query])[0]


def more_like(index: SearchIndex, item_id: str, k: int, where: str | None = None) -> list[dict[str, Any]]:
    """The k products nearest to a catalogue product's own vector (the product itself left out)."""
    return search_many(index, None, [Query(like=item_id, k=k, where=where)])[0]
