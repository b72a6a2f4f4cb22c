"""The query side of search: texts, photos or catalogue products -> query vectors -> top-k products, optional
re-ranking. Queries are answered in batches (one forward pass per kind, one FAISS search for all), so the command
line (one query) and the HTTP service (a dynamic batch of concurrent queries) share this code."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from multimodal.errors import UserError
from multimodal.search.filters import Filter
from multimodal.search.hits import HIDDEN, HYBRID_DEPTH, Hits, candidates, fuse  # noqa: F401 - re-exported
from multimodal.search.index import LABEL, SearchIndex

if TYPE_CHECKING:
    from multimodal.search.query_encoder import QueryEncoder, QueryImage


def __getattr__(name: str) -> Any:
    """``QueryEncoder`` / ``QueryImage`` re-exported when first asked for: they import torch, answering a query
    with a torch-free encoder (:mod:`multimodal.lite`) does not."""
    if name in ("QueryEncoder", "QueryImage"):
        from multimodal.search import query_encoder

        return getattr(query_encoder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Query:
    """One search: exactly one of ``text``, ``image`` (a path or a PIL image) or ``like`` (a product id whose
    stored vector is the query); ``k`` results, re-ranked from the top ``rerank`` when it is positive.

    ``mode``: ``dense`` (vectors), ``lexical`` (BM25 over the index's ``--lexical`` columns) or ``hybrid`` (both
    lists fused by ``fusion``: ``rrf`` or ``weighted`` with ``weight`` the dense share); ``where``: a metadata
    filter (:mod:`multimodal.search.filters`) applied inside FAISS and BM25. ``mode``, ``fusion`` and ``weight``
    left None are the index's defaults (:func:`settled`)."""

    text: str | None = None
    image: QueryImage | None = None
    like: str | None = None
    k: int = 10
    rerank: int = 0
    mode: str | None = None
    where: str | None = None
    fusion: str | None = None
    weight: float | None = None

    @property
    def kind(self) -> str:
        given = [name for name in ("text", "image", "like") if getattr(self, name) is not None]
        if len(given) != 1:
            raise UserError(f"a query needs exactly one of text, image or like, not {given or 'none'}")
        return given[0]


MODES = ("dense", "lexical", "hybrid")
FUSIONS = ("rrf", "weighted")


def settled(index: SearchIndex, query: Query) -> Query:
    """``query`` with the options it leaves unset (None) taken from ``index``: a text query on an index with a BM25
    part is hybrid (or the half that won the build's tuning, :mod:`multimodal.search.hybrid_tuning`), any other
    query dense; ``fusion`` and ``weight`` are the tuned ones (of the text's route where the build tuned routes,
    :func:`route_of`), else RRF and an even share. A query that sets a fusion or a weight but no mode is hybrid."""
    if query.mode is not None and query.fusion is not None and query.weight is not None:
        return query
    tuned = index.info.get("hybrid") or {}
    if query.text is not None and tuned.get("routes"):
        tuned = route_of(tuned, query.text, index.lexical.vocabulary if index.lexical is not None else None)
    mode = query.mode
    if mode is None:
        text = query.text is not None and query.image is None and query.like is None
        fused = query.fusion is not None or query.weight is not None
        mode = "dense"
        if text and index.lexical is not None:
            mode = "hybrid" if fused else str(tuned.get("mode", "hybrid"))
    fusion = query.fusion if query.fusion is not None else str(tuned.get("fusion", "rrf"))
    weight = query.weight if query.weight is not None else float(tuned.get("weight", 0.5))
    return replace(query, mode=mode, fusion=fusion, weight=weight)


def route_of(tuned: dict[str, Any], text: str, vocabulary: AbstractSet[str] | None = None) -> dict[str, Any]:
    """The tuned options of the route of ``text`` (:func:`multimodal.search.shopper_queries.query_route`; the
    ``vocabulary`` of the index's BM25 part), or the single winner where that route was not tuned."""
    from multimodal.search.shopper_queries import query_route

    route = query_route(text, set(tuned.get("attribute_terms") or ()), vocabulary)
    return {**tuned, **tuned["routes"].get(route, {})}


def check_query(index: SearchIndex, query: Query, can_rerank: bool) -> Query:
    """One-line errors for a query that cannot be answered: bad k, re-ranking without a re-ranker, unknown id, a
    lexical mode without a text query or a BM25 index, a bad filter. Returns the query :func:`settled`."""
    kind = query.kind
    query = settled(index, query)
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
    return query


def query_vectors(index: SearchIndex, encoder: QueryEncoder | None, queries: list[Query]) -> np.ndarray:
    """``(Q, E)`` vectors: all text queries in one forward pass, all photo queries in another, stored vectors for
    ``like`` (which needs no encoder). The encoder's vectors are cut to the index's width (its first dimensions,
    renormalised) when the index was built with ``--dim`` (:mod:`multimodal.search.matryoshka`)."""
    from multimodal.search.matryoshka import full_width, narrowed

    out = np.zeros((len(queries), index.dim), np.float32)
    by_kind: dict[str, list[int]] = {"text": [], "image": [], "like": []}
    for i, q in enumerate(queries):
        by_kind[q.kind].append(i)
    if by_kind["text"] or by_kind["image"]:
        if encoder is None:
            raise UserError("text and photo queries need the index's checkpoint")
        full = full_width(index.info, index.dim)
        if encoder.model.embed_dim != full:
            raise UserError(
                f"the model embeds in {encoder.model.embed_dim} dimensions, the index holds {full}: rebuild the index"
            )
    if by_kind["text"]:
        texts = encoder.texts([str(queries[i].text) for i in by_kind["text"]])  # type: ignore[union-attr]
        out[by_kind["text"]] = narrowed(texts, index.dim)
    if by_kind["image"]:
        photos = encoder.images([queries[i].image for i in by_kind["image"]])  # type: ignore[union-attr,misc]
        out[by_kind["image"]] = narrowed(photos, index.dim)
    if by_kind["like"]:
        rows = np.array([index.rows_by_id[str(queries[i].like)] for i in by_kind["like"]])
        out[by_kind["like"]] = index.reconstruct(rows)
    return out


def search_many(index: SearchIndex, encoder: QueryEncoder | None, queries: list[Query]) -> list[list[dict[str, Any]]]:
    """Top-k products of each query (``score`` plus the products table's columns; ``rerank_score`` when re-ranked).

    ``score`` is the cosine for dense search, BM25 for lexical, the fused score (RRF or weighted) for hybrid. A
    ``like`` query leaves the product itself out. Every query is checked first (:func:`check_query`), its unset
    options taken from the index (:func:`settled`).
    """
    can_rerank = encoder is not None and encoder.can_rerank
    queries = [check_query(index, q, can_rerank) for q in queries]
    need = [i for i, q in enumerate(queries) if q.mode != "lexical" or q.rerank]
    vectors = dict(zip(need, query_vectors(index, encoder, [queries[i] for i in need]), strict=True)) if need else {}
    dense, lexical = candidates(index, queries, vectors)
    out = []
    for i, q in enumerate(queries):
        found = fuse(q, dense.get(i), lexical.get(i))
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
    mode: str | None = None,
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
