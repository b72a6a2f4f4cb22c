"""Hybrid search tuned when an index is built: dense, lexical, reciprocal-rank fusion and weighted fusion at a grid
of dense shares are scored (nDCG@10) on shopper-like queries made from the catalogue itself
(:mod:`multimodal.search.shopper_queries`), and the winner becomes the index's default (``hybrid`` in
``index.json``, read by :func:`multimodal.search.query.settled`).

Weighted fusion at shares 0 and 1 is (but for ties at the tails) the lexical and the dense ranking, and a half that
still scores strictly higher than every fusion is stored as the winner itself: the default never loses to its
halves on the tuning queries. Ties go to RRF, then to the share nearest to an even mix, then dense, then lexical.
A fusion is kept only when it beats the better half by more than the tuning queries' noise: its mean per-query
gain over that half must exceed :data:`MARGIN_SE` standard errors (a paired test); otherwise the better half is
stored. A mix that wins on 100 queries by chance would lose to that half on the next ones; the half does not.

Queries are of two kinds that want different mixes: a few words of a product's own text (known-item lookup, where
BM25 is strong) and attribute values ("women blue jeans", where every matching product is an answer and the dense
half is strong). The tuning also picks a winner per **route** (:func:`multimodal.search.shopper_queries.
query_route`: ``attributes`` when every word of the query is a word of the catalogue's attribute values or one of
its words is in no product's BM25 text, else ``words``) and stores both with those words; a text query then takes
its route's winner. Each route's winner scores at least its better half on the queries sent there.

The queries are encoded by the export's checkpoint, or its ONNX export on the torch-free install
(:func:`multimodal.lite.search.encoder_for`); without either the build says so and keeps the plain default (RRF).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

import numpy as np

from multimodal.errors import UserError
from multimodal.search.index import SearchIndex
from multimodal.search.shopper_queries import (
    ShopperQuery,
    attribute_columns,
    attribute_terms,
    query_route,
    shopper_queries,
)

SHARES = tuple(round(0.1 * i, 1) for i in range(11))  # dense shares of weighted fusion
METRIC_K = 10
MARGIN_SE = 2.0  # a fusion's mean gain over the better half, in standard errors of the per-query gains, to be kept
HALVES = ("dense", "lexical")


def ndcg(found: list[int], relevant: np.ndarray, known: np.ndarray | None = None, k: int = METRIC_K) -> float:
    """nDCG@k of ranked rows ``found`` against the (sorted) ``relevant`` rows: gain 1, and 2 for ``known`` rows
    (the known item of a word query, among ``relevant``)."""
    known = np.zeros(0, np.int64) if known is None else known
    top = np.asarray(found[:k], dtype=np.int64)
    gains = np.isin(top, relevant).astype(np.float64) + np.isin(top, known)
    dcg = float(np.sum(gains / np.log2(np.arange(2, len(top) + 2)))) if len(top) else 0.0
    best = np.sort(np.isin(relevant, known).astype(np.float64) + 1)[::-1][:k]
    ideal = float(np.sum(best / np.log2(np.arange(2, len(best) + 2))))
    return dcg / ideal if ideal > 0 else 0.0


def configurations() -> list[tuple[str, dict[str, Any]]]:
    """The configurations scored, in the order ties are settled: name -> the query options it sets."""
    fused = [("rrf", {"mode": "hybrid", "fusion": "rrf"})]
    shares = sorted(SHARES, key=lambda w: (abs(w - 0.5), w))
    fused += [(f"weighted@{w}", {"mode": "hybrid", "fusion": "weighted", "weight": w}) for w in shares]
    return [*fused, ("dense", {"mode": "dense"}), ("lexical", {"mode": "lexical"})]


def query_scores(index: SearchIndex, encoder: Any, queries: list[ShopperQuery]) -> dict[str, np.ndarray]:
    """nDCG@10 of each configuration on each of ``queries`` (one encoding, one FAISS and one BM25 search for all)."""
    from multimodal.search.hits import candidates, fuse
    from multimodal.search.query import Query, query_vectors

    asked = [Query(text=q.text, k=min(METRIC_K, index.count), mode="hybrid", fusion="rrf", weight=0.5)
             for q in queries]  # fmt: skip
    vectors = query_vectors(index, encoder, asked)
    dense, lexical = candidates(index, asked, dict(enumerate(vectors)))
    out = {}
    for name, options in configurations():
        out[name] = np.array([
            ndcg([row for row, _ in fuse(replace(q, **options), dense.get(i), lexical.get(i))], shopper.relevant,
                 shopper.known)
            for i, (q, shopper) in enumerate(zip(asked, queries, strict=True))
        ])  # fmt: skip
    return out


def means(per_query: dict[str, np.ndarray], rows: np.ndarray | None = None) -> dict[str, float]:
    """Each configuration's mean nDCG@10 over the queries ``rows`` (a boolean mask; None: all), to 4 decimals."""
    return {name: round(float((s if rows is None else s[rows]).mean()), 4) for name, s in per_query.items()}


def routed(per_query: dict[str, np.ndarray], routes: list[str]) -> dict[str, dict[str, Any]]:
    """The winner of each route among the queries sent there (``routes[i]``: query ``i``'s route), with its mean
    nDCG@10, every configuration's and the query count: ``{route: {"mode", "fusion", "weight", "score", "scores",
    "queries"}}``."""
    out = {}
    for route in sorted(set(routes)):
        rows = np.array([r == route for r in routes])
        chosen, scores = winner(per_query, rows), means(per_query, rows)
        out[route] = {**{k: v for k, v in chosen.items() if k != "name"}, "score": scores[chosen["name"]],
                      "scores": scores, "queries": int(rows.sum())}  # fmt: skip
    return out


def winner(per_query: dict[str, np.ndarray], rows: np.ndarray | None = None) -> dict[str, Any]:
    """The configuration stored for the queries ``rows`` (a boolean mask; None: all): the best by mean nDCG@10 (the
    first of :func:`configurations` among equals), unless it is a fusion whose gain over the better half is within
    :data:`MARGIN_SE` standard errors, when that half is. Its query options, with its ``name``."""
    scores = means(per_query, rows)
    best_name, best = None, -1.0
    for name, _ in configurations():
        if scores[name] > best:
            best_name, best = name, scores[name]
    half = max(HALVES, key=lambda h: scores[h])  # dense first among equals
    if best_name not in HALVES:
        gain = per_query[best_name] - per_query[half]
        gain = gain if rows is None else gain[rows]
        noise = MARGIN_SE * gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else np.inf
        if not gain.mean() > noise:
            best_name = half
    return {"name": best_name, **dict(configurations())[best_name]}  # type: ignore[index]


def tune_hybrid(
    index: SearchIndex, count: int, attributes: list[str] | None = None, seed: int = 0
) -> dict[str, Any] | None:
    """Tune the hybrid default of a freshly built ``index`` (with a BM25 part) on ``count`` shopper queries; the
    record stored as ``hybrid`` in its info, or None (said on stderr) when no queries can be encoded or made."""
    lexical = index.lexical.columns
    columns = attribute_columns(index.products, lexical, attributes)
    queries = shopper_queries(index.products, lexical, columns, count, seed)
    if not queries:
        print("hybrid search not tuned: no shopper-like queries could be made from the catalogue", file=sys.stderr)
        return None
    try:
        encoder = query_encoder(index)
    except UserError as err:
        print(f"hybrid search not tuned (the default stays RRF): {err}", file=sys.stderr)
        return None
    per_query = query_scores(index, encoder, queries)
    scores = means(per_query)
    chosen = winner(per_query)
    name = chosen.pop("name")
    terms = attribute_terms(index.products, columns)
    return {
        **chosen,
        "metric": f"ndcg@{METRIC_K}",
        "score": scores[name],
        "scores": scores,
        "queries": len(queries),
        "word_queries": sum(q.kind == "words" for q in queries),
        "attribute_queries": sum(q.kind == "attributes" for q in queries),
        "attributes": columns,
        "seed": seed,
        "routes": routed(per_query, [query_route(q.text, terms, index.lexical.vocabulary) for q in queries]),
        "attribute_terms": sorted(terms),
    }


def query_encoder(index: SearchIndex) -> Any:
    """The encoder ``multimodal search`` would use for text queries on ``index`` (torch-free from an ONNX export
    where that is the one, else the checkpoint's); a UserError when neither is there."""
    from multimodal.lite.search import encoder_for
    from multimodal.search.index import index_checkpoint

    encoder = encoder_for(index)
    if encoder is not None:
        return encoder
    if not index_checkpoint(index).is_file():
        raise UserError(f"the export's checkpoint {index_checkpoint(index)} is missing")
    from multimodal.search.query_encoder import QueryEncoder

    return QueryEncoder(index)
