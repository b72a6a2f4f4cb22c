"""The hits of a batch of queries: dense and lexical candidate lists (one FAISS search and one BM25 search per
filter), and their fusion into one ranked list (reciprocal rank or weighted) for hybrid search."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from multimodal.search.filters import Filter
from multimodal.search.index import LABEL, SearchIndex

if TYPE_CHECKING:
    from multimodal.search.query import Query

HIDDEN = frozenset({LABEL})  # products-table columns hidden from filters and results
HYBRID_DEPTH = 100  # candidates taken from each list before fusing them
Hits = list[tuple[int, float]]  # (products-table row, score), best first


def candidates(
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


def fuse(q: Query, dense: Hits | None, lexical: Hits | None) -> Hits:
    """The ranked hits of one query: its dense or lexical list as it is, or (hybrid) both lists fused."""
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
